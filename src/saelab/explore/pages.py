"""HTML pages of the explorer, rendered on the server (no JavaScript needed).

Every piece of text that comes from a user, a corpus, a tokenizer or the store goes through
:func:`esc` (``html.escape`` with quotes), so a context or a typed text can never inject markup.
The histogram is inline SVG, so pages are self-contained and can be saved as static files.
``Links`` decides how pages link to each other: live server paths or static file names.
"""

from __future__ import annotations

import functools
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:.6em 1.2em}
header a{color:#fff;text-decoration:none;font-weight:600}
main{max-width:1150px;margin:1em auto;padding:0 1em}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:.8em 0}
h1{font-size:1.4em;margin:.3em 0}h2{font-size:1.1em;margin:.3em 0}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.ctx{font-family:ui-monospace,monospace;font-size:13px;line-height:1.9;margin:2px 0;
 white-space:pre-wrap;word-break:break-word}
.tok{border-radius:3px;padding:1px 0}
.tok[data-act]{cursor:help}
.centre{outline:1px solid #d84315}
.val{display:inline-block;width:5.5em;color:#666;font-size:12px}
.muted{color:#777;font-size:90%}
.pill{display:inline-block;background:#e3f2fd;border-radius:10px;padding:1px 8px;margin:2px}
.label-board{background:#e8f5e9}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.firetok{display:inline-block;vertical-align:top;border:1px solid #eee;margin:2px;padding:3px;
 min-width:4em;font-size:12px}
.firetok b{font-family:ui-monospace,monospace;font-size:13px}
input[type=text],textarea{font-size:14px;padding:4px;width:100%;box-sizing:border-box}
form.inline{display:inline}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


@functools.lru_cache(maxsize=65536)
def esc_token(token: str) -> str:
    """A token as shown in a context (cached: pages repeat the same tokens thousands of times)."""
    return html.escape(token.replace("\n", "⏎"), quote=True)


@dataclass
class Links:
    """Where pages link: the live server (``static=False``) or files of a static export."""

    static: bool = False

    def feature(self, latent: int) -> str:
        return f"feature/{latent}.html" if self.static else f"/feature/{latent}"

    def feature_from_feature(self, latent: int) -> str:
        return f"{latent}.html" if self.static else f"/feature/{latent}"

    def index(self, from_feature: bool = False) -> str:
        if self.static:
            return "../index.html" if from_feature else "index.html"
        return "/"


def page(title: str, body: str, links: Links, from_feature: bool = False,
         status_note: str = "") -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><header><a href='{links.index(from_feature)}'>"
            f"saelab explorer</a> <span class='muted' style='color:#cfd8dc'>{esc(status_note)}"
            f"</span></header><main>{body}</main></body></html>")


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


def colour(act: float | None, scale: float) -> str:
    if act is None or act <= 0 or scale <= 0:
        return ""
    alpha = min(1.0, act / scale)
    return f"background:rgba(255,120,0,{0.08 + 0.82 * alpha:.2f})"


def tokens_html(tokens: Sequence[str], acts: Sequence[float | None], scale: float,
                centre: int = -1) -> str:
    """Tokens as spans, shaded by activation, with the value on hover (``title``)."""
    spans = []
    for i, (tok, act) in enumerate(zip(tokens, acts, strict=True)):
        if act == 0.0 and i != centre:
            spans.append(f"<span class='tok'>{esc_token(tok)}</span>")
            continue
        attrs = f" class='tok{' centre' if i == centre else ''}'"
        if act is not None and act > 0:
            attrs += f" data-act='{act:.4g}' title='{act:.4g}' style='{colour(act, scale)}'"
        elif act is None:
            attrs += " title='not counted (special token)'"
        spans.append(f"<span{attrs}>{esc_token(tok)}</span>")
    return "".join(spans)


def histogram_svg(edges: Sequence[float], counts: Sequence[int], marks: Sequence[float] = (),
                  width: int = 520, height: int = 150) -> str:
    """Bars of the activation histogram on a log axis; quantile edges as ticks below."""
    if not counts:
        return "<p class='muted'>This latent never fired on the store's tokens.</p>"
    left, bottom = 40, 24
    w, h = width - left - 8, height - bottom - 8
    lo, hi = math.log10(edges[0]), math.log10(edges[-1])
    span = max(hi - lo, 1e-9)
    top = max(counts)

    def x(v: float) -> float:
        return left + w * (math.log10(v) - lo) / span

    bars = []
    for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True):
        bh = h * c / top
        bars.append(f"<rect x='{x(a):.1f}' y='{8 + h - bh:.1f}' width='{max(1.0, x(b) - x(a) - 1):.1f}'"
                    f" height='{bh:.1f}' fill='#ef6c00'><title>{fmt(a)}–{fmt(b)}: {c:,}</title>"
                    "</rect>")
    ticks = "".join(f"<line x1='{x(v):.1f}' x2='{x(v):.1f}' y1='{8 + h}' y2='{12 + h}' "
                    "stroke='#1565c0'/>" for v in marks if edges[0] <= v <= edges[-1])
    labels = "".join(
        f"<text x='{x(v):.1f}' y='{height - 4}' font-size='10' text-anchor='{anchor}'>"
        f"{fmt(v, 2)}</text>"
        for v, anchor in ((edges[0], "start"), (math.sqrt(edges[0] * edges[-1]), "middle"),
                          (edges[-1], "end")))
    return (f"<svg id='histogram' role='img' aria-label='activation histogram' width='{width}' "
            f"height='{height}' viewBox='0 0 {width} {height}'>"
            f"<line x1='{left}' x2='{left + w}' y1='{8 + h}' y2='{8 + h}' stroke='#999'/>"
            f"<text x='2' y='14' font-size='10'>{top:,}</text>{''.join(bars)}{ticks}{labels}"
            "</svg>")


def _latent_rows(rows: list[dict[str, Any]], links: Links) -> str:
    if not rows:
        return "<p class='muted'>No latents match.</p>"
    body = "".join(
        f"<tr><td><a class='latent-link' href='{links.feature(r['id'])}'>{r['id']}</a></td>"
        f"<td>{fmt(r['density'])}</td><td>{fmt(r['max_act'])}</td><td>{fmt(r['mean_act'])}</td>"
        f"<td>{esc(r.get('title', ''))}</td></tr>" for r in rows)
    return ("<table id='latents'><tr><th>latent</th><th>density</th><th>max</th><th>mean</th>"
            f"<th>label / explanation</th></tr>{body}</table>")


def index_page(meta: dict[str, Any], rows: list[dict[str, Any]], links: Links, *,
               query: str = "", sort: str = "density", descending: bool = True,
               offset: int = 0, limit: int = 50, live: bool = True, heading: str = "") -> str:
    sae = meta.get("sae", {})
    model = meta.get("model", {})
    info = (f"{esc(sae.get('architecture', '?'))} SAE, {sae.get('d_sae', '?'):,} latents on "
            f"{esc(model.get('name') or model.get('game') or '?')} "
            f"{esc(model.get('hook', ''))}; {meta.get('n_rows', 0):,} tokens")
    parts = [f"<h1>Features</h1><p class='muted'>{info}</p>"]
    if not links.static:
        parts.append(
            "<section><form action='/' method='get'><label>Search latents by id or by text in "
            f"their labels and explanations<input type='text' name='q' id='search' value='{esc(query)}'>"
            "</label></form></section>")
        if live:
            parts.append(
                "<section><form action='/fire' method='get'><label>Which latents fire on this "
                "text?<textarea name='text' id='fire-text' rows='2'></textarea></label>"
                "<button type='submit' id='fire-button'>Run</button></form></section>")
        order = "desc" if descending else "asc"
        sorts = " · ".join(
            f"<a href='/?sort={k}&amp;order={o}' id='sort-{k}-{o}'>{lab}</a>"
            for k, o, lab in (("density", "desc", "densest"), ("density", "asc", "sparsest"),
                              ("max_act", "desc", "largest max"), ("id", "asc", "by id")))
        nav = (f"<a id='next-page' href='/?sort={esc(sort)}&amp;order={order}&amp;"
               f"offset={offset + limit}'>next {limit} →</a>") if len(rows) == limit else ""
        prev = (f"<a href='/?sort={esc(sort)}&amp;order={order}&amp;offset="
                f"{max(0, offset - limit)}'>← previous</a> ") if offset else ""
        parts.append(f"<section><h2>{esc(heading or 'Latents')}</h2><p>sort: {sorts}</p>"
                     f"{_latent_rows(rows, links)}<p>{prev}{nav}</p></section>")
    else:
        parts.append(f"<section><h2>Latents</h2>{_latent_rows(rows, links)}</section>")
    return page("saelab explorer", "".join(parts), links)


def _examples_html(examples: list[dict[str, Any]], scale: float, cls: str) -> str:
    if not examples:
        return "<p class='muted'>none</p>"
    return "".join(
        f"<div class='ctx {cls}'><span class='val'>{fmt(e['value'])}</span>"
        f"{tokens_html(e['tokens'], e['acts'], scale, e['centre'])}</div>" for e in examples)


def _quantiles_html(examples: list[dict[str, Any]], edges: list[float], max_act: float,
                    scale: float) -> str:
    if not examples:
        return "<p class='muted'>none</p>"
    bounds = [0.0, *edges, max_act]
    n_bins = len(bounds) - 1
    out = []
    for b in sorted({e["bin"] for e in examples}, reverse=True):
        group = [e for e in examples if e["bin"] == b]
        lo, hi = bounds[b], bounds[min(b + 1, n_bins)]
        out.append(f"<h3 class='muted'>bin {b + 1}/{n_bins}: activation {fmt(lo)}–{fmt(hi)} "
                   f"(each bin holds 1/{n_bins} of the firings)</h3>"
                   + _examples_html(group, scale, "quantile"))
    return "".join(out)


def feature_page(data: dict[str, Any], meta: dict[str, Any], links: Links,
                 extra_sections: Sequence[str] = ()) -> str:
    """The page of one latent: statistics, histogram, labels, examples, logits, neighbours."""
    latent = int(data["id"])
    scale = float(data["max_act"]) or 1.0
    n = int(meta.get("sae", {}).get("d_sae", latent + 1))
    nav = " ".join(
        f"<a id='{name}' href='{links.feature_from_feature(i)}'>{label}</a>"
        for name, i, label in (("prev", latent - 1, "← previous"), ("next", latent + 1, "next →"))
        if 0 <= i < n)
    labels = "".join(
        f"<span class='pill{' label-board' if lab['source'] == 'boardgame' else ''}'>"
        f"{esc(lab['text'])}"
        + (f" · {esc(lab.get('score_name') or 'score')} {fmt(lab['score'])}"
           if lab.get("score") is not None else "")
        + f" <span class='muted'>({esc(lab['source'])})</span></span>"
        for lab in data["labels"])
    explanations = "".join(
        f"<li>{esc(e['text'])} <span class='muted'>({esc(e['method'])}"
        + (f", {esc(e['explainer_model'])}" if e.get("explainer_model") else "") + ")</span>"
        + "".join(f" <span class='pill'>{esc(s['scorer'])} {esc(s['metric'])} "
                  f"{fmt(s['value'])}</span>" for s in e["scores"]) + "</li>"
        for e in data["explanations"])
    density = data["density"]
    stats = (f"<table id='stats'><tr><th>density</th><td>{fmt(density)} "
             f"(log10 {fmt(math.log10(density), 3) if density > 0 else '−∞'})</td></tr>"
             f"<tr><th>tokens fired</th><td>{data['n_fired']:,} of {meta.get('n_rows', 0):,}"
             f"</td></tr><tr><th>mean when firing</th><td>{fmt(data['mean_act'])}</td></tr>"
             f"<tr><th>max</th><td>{fmt(data['max_act'])}</td></tr></table>")
    hist = histogram_svg(data["histogram"]["edges"], data["histogram"]["counts"],
                         data["quantile_edges"])
    logits = data["logit_effects"]
    logit_html = ""
    if logits["promoted"] or logits["suppressed"]:
        cols = "".join(
            f"<div><h3>{title}</h3><table>" + "".join(
                f"<tr><td class='ctx'>{esc(x['token'])}</td><td>{x['value']:+.3f}</td></tr>"
                for x in logits[key]) + "</table></div>"
            for key, title in (("promoted", "promoted"), ("suppressed", "suppressed")))
        note = meta.get("notes", {}).get("logit_effects", {}).get("approximation", "")
        logit_html = (f"<section id='logits'><h2>Logit effect of the decoder direction</h2>"
                      f"<p class='muted'>{esc(note)}</p><div class='grid'>{cols}</div></section>")
    neighbours = "".join(
        f"<a class='pill neighbour' href='{links.feature_from_feature(x['latent'])}'>"
        f"{x['latent']} <span class='muted'>{x['cosine']:.2f}</span></a>"
        for x in data["neighbours"])
    ex = data["examples"]
    body = (
        f"<p>{nav}</p><h1>Latent {latent}</h1>"
        + (f"<p id='labels'>{labels}</p>" if labels else "")
        + (f"<ul id='explanations'>{explanations}</ul>" if explanations else "")
        + transcripts_html(data.get("transcripts", []))
        + f"<section class='grid'><div>{stats}</div><div><h2>Activation histogram</h2>{hist}"
        "<p class='muted'>log-spaced bins over the tokens where it fires; blue ticks: "
        "quantile-bin edges</p></div></section>"
        + "".join(extra_sections)
        + f"<section id='top'><h2>Top activating contexts</h2>"
        f"{_examples_html(ex['top'], scale, 'top')}</section>"
        f"<section id='quantiles'><h2>Samples across the activation range</h2>"
        f"{_quantiles_html(ex['quantile'], data['quantile_edges'], data['max_act'], scale)}"
        "</section>" + logit_html
        + f"<section id='neighbours'><h2>Nearest latents by decoder cosine</h2>{neighbours}"
        "</section>"
        f"<section id='random'><h2>Random contexts where it does not fire</h2>"
        f"{_examples_html(ex['random'], scale, 'random')}</section>")
    return page(f"latent {latent}", body, links, from_feature=True)


def _step_html(step: dict[str, Any]) -> str:
    """One transcript step: its state, round and hypothesis, then what it holds."""
    head = f"<b>{esc(step.get('state'))}</b> <span class='muted'>round {step.get('round', 0)}"
    if "hypothesis" in step:
        head += f", hypothesis {esc(step['hypothesis'])}"
    head += "</span>"
    if step.get("state") == "RUN_TEST":
        rows = "".join(
            f"<tr><td>{esc(r.get('expected'))}</td><td>{fmt(r.get('level'))}</td>"
            f"<td class='ctx'>{esc(r.get('text'))}</td></tr>" for r in step.get("results", []))
        return (f"<li>{head}<table><tr><th>expected</th><th>measured (0-10)</th><th>probe"
                f"</th></tr>{rows}</table></li>")
    shown = {k: v for k, v in step.items()
             if k not in ("state", "round", "hypothesis", "step", "time", "prompt", "answer")}
    prompt = (f"<details><summary>prompt and answer</summary><pre>{esc(step['prompt'])}</pre>"
              f"<pre>{esc(step.get('answer', ''))}</pre></details>" if "prompt" in step else "")
    return f"<li>{head} <code>{esc(json.dumps(shown)[:600])}</code>{prompt}</li>"


def transcripts_html(transcripts: Sequence[dict[str, Any]]) -> str:
    """Agent transcripts (SAGE) as collapsible step lists."""
    if not transcripts:
        return ""
    parts = []
    for t in transcripts:
        c = t["content"]
        conclusion = c.get("explanation") or "no conclusion"
        summary = (f"{esc(t['kind']).upper()} transcript: {esc(conclusion)} "
                   f"<span class='muted'>({c.get('rounds', 0)} rounds, "
                   f"{c.get('tests_run', 0)} tests, stop: {esc(c.get('stop_reason', ''))}, "
                   f"{esc(c.get('model', ''))})</span>")
        steps = "".join(_step_html(s) for s in c.get("steps", []))
        parts.append(f"<details class='transcript'><summary>{summary}</summary><ol>{steps}</ol>"
                     "</details>")
    return f"<section id='transcripts'><h2>Agent transcripts</h2>{''.join(parts)}</section>"


def label_form(latent: int) -> str:
    return (f"<section><form method='post' action='/feature/{latent}/label'><label>Add a label "
            "<input type='text' name='text' id='label-text' maxlength='500'></label> "
            "<button type='submit' id='label-button'>Save</button></form></section>")


STEER_EDITS = (("add", "add α·d_j"), ("clamp", "clamp to"), ("scale", "scale by"),
               ("zero", "zero"))


def steer_section(latent: int, fields: dict[str, str], result: dict[str, Any] | None = None,
                  error: str = "", note: str = "") -> str:
    """The feature page's steering box (a plain GET form) and, after a run, steered vs
    unsteered continuations side by side with the next-token KL. ``note`` replaces the form
    when this explorer cannot steer."""
    head = "<h2>Steer the model with this latent</h2>"
    if note:
        return f"<section id='steer'>{head}<p id='steer-note' class='muted'>{esc(note)}</p></section>"
    op = fields.get("edit", "add")
    options = "".join(f"<option value='{v}'{' selected' if v == op else ''}>{t}</option>"
                      for v, t in STEER_EDITS)
    form = (f"<form method='get' action='/feature/{latent}/steer#steer'>"
            f"<label>Prompt<textarea name='prompt' id='steer-prompt' rows='2' maxlength='1000'>"
            f"{esc(fields.get('prompt', ''))}</textarea></label> "
            f"<label>edit <select name='edit' id='steer-edit'>{options}</select></label> "
            f"<label>value <input name='value' id='steer-value' size='6' "
            f"value='{esc(fields.get('value', '4'))}'></label> "
            f"<label>new tokens <input name='max_new_tokens' id='steer-tokens' size='3' "
            f"value='{esc(fields.get('max_new_tokens', '16'))}'></label> "
            "<button type='submit' id='steer-button'>Steer</button></form>"
            "<p class='muted'>Greedy continuations with and without the edit at the store's "
            "hook, on every position; the SAE's error term is kept, so only this latent changes "
            "the activation. KL: KL(p_unsteered ‖ p_steered) of the next token after the "
            "prompt, in nats.</p>")
    out = ""
    if error:
        out = f"<p id='steer-error'>{esc(error)}</p>"
    elif result is not None:
        out = (f"<div class='grid'><div><h3>unsteered</h3><p class='ctx' id='steer-unsteered'>"
               f"{esc(result['unsteered'])}</p></div><div><h3>steered "
               f"<span class='muted'>({esc(result['edit'])})</span></h3>"
               f"<p class='ctx' id='steer-steered'>{esc(result['steered'])}</p></div></div>"
               f"<p>next-token KL <b id='steer-kl'>{result['kl_next_token']:.4g}</b> nats "
               f"<span class='muted'>(mean over the prompt {result['kl_mean_prompt']:.4g})"
               "</span></p>"
               "<table id='steer-top'><tr><th>next token unsteered</th><th>p</th>"
               "<th>next token steered</th><th>p</th></tr>"
               + "".join(f"<tr><td class='ctx'>{esc(t0)}</td><td>{fmt(p0)}</td>"
                         f"<td class='ctx'>{esc(t1)}</td><td>{fmt(p1)}</td></tr>"
                         for (t0, p0), (t1, p1) in zip(result["top_unsteered"],
                                                       result["top_steered"], strict=True))
               + "</table>")
    return f"<section id='steer'>{head}{form}{out}</section>"


def fire_page(text: str, result: dict[str, Any] | None, links: Links, error: str = "") -> str:
    form = ("<section><form action='/fire' method='get'><label>Which latents fire on this text?"
            f"<textarea name='text' id='fire-text' rows='2'>{esc(text)}</textarea></label>"
            "<button type='submit' id='fire-button'>Run</button></form></section>")
    if error:
        return page("fire", form + f"<section id='error'><p>{esc(error)}</p></section>", links)
    if result is None:
        return page("fire", form, links)
    scale = max((x["max"] for x in result["latents"]), default=1.0) or 1.0
    chips = []
    for tok, firing in zip(result["tokens"], result["per_token"], strict=True):
        top = "".join(f"<br><a class='latent-link' href='{links.feature(f['latent'])}'>"
                      f"#{f['latent']}</a> {fmt(f['value'], 2)}" for f in firing[:5])
        best = firing[0]["value"] if firing else 0.0
        chips.append(f"<span class='firetok' style='{colour(best, scale)}'>"
                     f"<b>{esc(tok)}</b>{top}</span>")
    rows = "".join(
        f"<tr><td><a class='latent-link' href='{links.feature(x['latent'])}'>{x['latent']}</a>"
        f"</td><td>{fmt(x['max'])}</td><td>{x['count']}</td><td>{esc(x.get('title', ''))}</td>"
        "</tr>" for x in result["latents"][:50])
    body = (form + f"<section id='fire-tokens'><h2>Per token: the latents that fire most</h2>"
            f"{''.join(chips)}</section><section><h2>Latents firing on this text</h2>"
            "<table id='fire-latents'><tr><th>latent</th><th>max</th><th>tokens</th>"
            f"<th>label / explanation</th></tr>{rows}</table></section>")
    return page("fire", body, links)


def not_found_page(message: str, links: Links) -> str:
    return page("not found", f"<h1>Not found</h1><p id='not-found'>{esc(message)}</p>", links)
