"""Reports of board-game evaluations that say what they mean.

Given the :class:`~saelab.evals.boardgame.BoardEvalResult` of one or more model kinds (the
trained game LM and its random-init control), this module lists every SAE (size, what sets its
L0, tokens trained, dead latents), the scores with every column defined, one-sentence
conclusion, and warnings about what makes the comparison unfair:

- **L0 not matched**: coverage and reconstruction move with L0, so SAEs whose held-out L0
  differ by more than a factor :data:`L0_MATCH_RATIO` are not compared like for like.
- **broken SAE**: explained variance below 0 (worse than predicting the mean), or more than
  :data:`MOSTLY_DEAD` of the latents never fire on the training games.
- **trained below control**: an SAE on the trained model scores below the same SAE recipe on
  the random-init control, i.e. the trained model's board is no easier to read than the tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelab.evals.boardgame import BoardEvalResult, SAEBoardResult

L0_MATCH_RATIO = 1.25  # max / min held-out L0 above this: "not matched"
MOSTLY_DEAD = 0.5  # share of dead latents above this: "mostly dead"
TRAINED, CONTROL = "trained", "random-init"

#: the property each game's conclusion and control check lead with (the paper's headline)
HEADLINE = {"othello": "board", "chess": "piece_no_initial"}

SAE_COLUMNS = {
    "model": "trained = the game LM; random-init = the same network with random weights (what "
             "an SAE finds there comes from the input tokens, not a learned board)",
    "SAE": "the SAE's name",
    "arch": "architecture",
    "latents": "dictionary size (d_sae)",
    "sets L0": "the hyperparameter that sets its sparsity: k, or the sparsity coefficient",
    "tokens": "activation rows it was trained on (? = unknown)",
    "dead": "latents that never fire on the training games (never used as classifiers)",
    "L0": "mean active latents per position on the held-out games",
    "EV": "explained variance on the held-out positions, 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²",
}


def score_columns(props: list[str]) -> dict[str, str]:
    """Definitions of the score columns (one per metric, for every property listed)."""
    which = ", ".join(props)
    return {
        "cov <property>": "coverage, held out: mean over the property's cells of the F1 of the "
                          "best single latent (threshold and latent chosen on the training "
                          "games, F1 on the test games; cells never true are left out)",
        "cov* <property>": "coverage the paper's way: in-sample, summed best F1 / the reference "
                           "code's cell count (never-true cells count as 0)",
        "rec <property>": "board reconstruction, held out: micro-F1 of the cells predicted by "
                          "the ≥95%-precise labels of the firing latents",
        "properties": which,
    }


@dataclass
class SAEInfo:
    """One line of the SAE list."""

    model: str
    name: str
    architecture: str
    latents: int
    sparsity: str
    tokens: int | None
    dead: int
    l0: float
    explained_variance: float

    def cells(self) -> list[str]:
        return [self.model, self.name, self.architecture, str(self.latents),
                self.sparsity or "-", f"{self.tokens:,}" if self.tokens else "?",
                f"{self.dead} ({self.dead / max(1, self.latents):.0%})", f"{self.l0:.1f}",
                f"{self.explained_variance:.3f}"]


def trained_tokens(sae_dir: str | Path) -> int | None:
    """Tokens an SAE saved by saelab's Trainer was trained on: the last ``tokens`` logged for
    it in ``<run>/metrics.jsonl`` (the SAE lives in ``<run>/final/<name>``); None if unknown."""
    folder = Path(sae_dir)
    log = folder.parent.parent / "metrics.jsonl"
    if folder.parent.name != "final" or not log.exists():
        return None
    tokens = None
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("sae") == folder.name and "tokens" in record:
            tokens = int(record["tokens"])
    return tokens


def sae_infos(results: dict[str, BoardEvalResult], tokens: dict[str, int | None] | None = None
              ) -> list[SAEInfo]:
    tokens = tokens or {}
    return [SAEInfo(kind, s.name, s.architecture, s.d_sae, s.sparsity, tokens.get(s.name),
                    s.dead_latents, s.l0_test, s.explained_variance_test)
            for kind, r in results.items() for s in r.saes]


# ---------------------------------------------------------------------------- warnings


def l0_warnings(result: BoardEvalResult, kind: str = "") -> list[str]:
    """Warn when the held-out L0s of the SAEs compared in one result are not matched."""
    l0s = {s.name: s.l0_test for s in result.saes}
    if len(l0s) < 2:
        return []
    low, high = min(l0s.values()), max(l0s.values())
    if low > 0 and high / low <= L0_MATCH_RATIO:
        return []
    where = f" on the {kind} model" if kind else ""
    listed = ", ".join(f"{n} {v:.1f}" for n, v in l0s.items())
    return [f"L0 is not matched{where} ({listed}; max/min {high / max(low, 1e-9):.2f} > "
            f"{L0_MATCH_RATIO}): coverage and reconstruction move with L0, so compare these "
            "SAEs at matched L0 (retrain with k or the coefficient adjusted)"]


def broken_warnings(sae: SAEBoardResult, kind: str = "") -> list[str]:
    """Warn when an SAE is broken: EV < 0 or mostly dead latents."""
    where = f" ({kind} model)" if kind else ""
    out = []
    if not math.isfinite(sae.explained_variance_test) or sae.explained_variance_test < 0:
        out.append(f"SAE {sae.name}{where} is broken: explained variance "
                   f"{sae.explained_variance_test:.3f} < 0 (worse than predicting the mean); its "
                   "scores mean nothing — check its training (learning rate, input scaling)")
    share = sae.dead_latents / max(1, sae.d_sae)
    if share > MOSTLY_DEAD:
        out.append(f"SAE {sae.name}{where} is mostly dead: {sae.dead_latents} of {sae.d_sae} "
                   f"latents ({share:.0%}) never fire on the training games; it competes with "
                   "fewer latents than its size says (train longer, lower the sparsity penalty "
                   "or use a TopK SAE)")
    return out


def control_warnings(trained: BoardEvalResult, control: BoardEvalResult) -> list[str]:
    """Warn for every SAE that scores worse on the trained model than the same-named SAE on
    the random-init control (held-out coverage or reconstruction, per property)."""
    out = []
    controls = {s.name: s for s in control.saes}
    for sae in trained.saes:
        ref = controls.get(sae.name)
        if ref is None:
            continue
        worse = []
        for prop, score in sae.scores.items():
            if prop not in ref.scores:
                continue
            for label, key in (("coverage", "coverage_test"),
                               ("reconstruction", "reconstruction_f1_test")):
                mine, theirs = getattr(score, key), getattr(ref.scores[prop], key)
                if mine < theirs:
                    worse.append(f"{label} {prop} {mine:.3f} < {theirs:.3f}")
        if worse:
            out.append(f"SAE {sae.name} does worse on the trained model than on its random-init "
                       f"control: {'; '.join(worse)} — what it finds there is not a learned "
                       "board (the game model may not represent it linearly)")
    return out


def comparison_warnings(results: dict[str, BoardEvalResult]) -> list[str]:
    """Every warning for a set of results keyed by model kind (``trained``, ``random-init``)."""
    out = []
    for kind, result in results.items():
        out += l0_warnings(result, kind if len(results) > 1 else "")
        for sae in result.saes:
            out += broken_warnings(sae, kind if len(results) > 1 else "")
    if TRAINED in results and CONTROL in results:
        out += control_warnings(results[TRAINED], results[CONTROL])
    return out


# ---------------------------------------------------------------------------- conclusion


def headline_property(result: BoardEvalResult) -> str:
    props = list(result.saes[0].scores) if result.saes else []
    wanted = HEADLINE.get(result.game, "")
    return wanted if wanted in props else (props[0] if props else "")


def conclusion(results: dict[str, BoardEvalResult]) -> str:
    """One sentence: the best SAE on the headline property (held out), against the probe and
    the random-init control."""
    main = results.get(TRAINED) or next(iter(results.values()))
    prop = headline_property(main)
    if not main.saes or not prop:
        return "No SAE was evaluated."
    best = max(main.saes, key=lambda s: s.scores[prop].coverage_test)
    score = best.scores[prop]
    text = (f"On {prop}, {best.name} has the highest held-out coverage ("
            f"{score.coverage_test:.3f}, reconstruction {score.reconstruction_f1_test:.3f}, at L0 "
            f"{best.l0_test:.1f})")
    if main.probe and prop in main.probe:
        text += f", against {main.probe[prop].mean_cell_f1:.3f} for a linear probe"
    control = results.get(CONTROL)
    if control is not None and control is not main and control.saes:
        ref = max(s.scores[prop].coverage_test for s in control.saes if prop in s.scores)
        verdict = "above" if score.coverage_test > ref else "NOT above"
        text += f", {verdict} the best SAE on the random-init control ({ref:.3f})"
    return text + "."


# ---------------------------------------------------------------------------- text


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def score_rows(results: dict[str, BoardEvalResult], props: list[str]) -> list[list[str]]:
    rows = []
    for kind, result in results.items():
        for s in result.saes:
            cells = []
            for p in props:
                sc = s.scores[p]
                cells += [f"{sc.coverage_test:.3f}", f"{sc.coverage_train_paper:.3f}",
                          f"{sc.reconstruction_f1_test:.3f}"]
            rows.append([kind, s.name, *cells])
        if result.probe:
            cells = []
            for p in props:
                probe = result.probe.get(p)
                cells += ([f"{probe.mean_cell_f1:.3f}", "", f"{probe.micro_f1:.3f}"] if probe
                          else ["", "", ""])
            rows.append([kind, "linear probe", *cells])
    return rows


def report_props(results: dict[str, BoardEvalResult], limit: int = 4) -> list[str]:
    """The properties shown in the score table: the headline first, then the others."""
    first = next(iter(results.values()))
    props = list(first.saes[0].scores) if first.saes else []
    head = headline_property(first)
    ordered = [head] + [p for p in props if p != head] if head else props
    return ordered[:limit]


def format_report(results: dict[str, BoardEvalResult],
                  tokens: dict[str, int | None] | None = None) -> str:
    """The full plain-text report: SAEs, scores, column definitions, warnings, conclusion."""
    props = report_props(results)
    infos = sae_infos(results, tokens)
    score_header = ["model", "SAE"] + [f"{m} {p}" for p in props for m in ("cov", "cov*", "rec")]
    parts = ["SAEs:", _table(list(SAE_COLUMNS), [i.cells() for i in infos]), "",
             "Scores (held out unless marked *):",
             _table(score_header, score_rows(results, props)), "", "Columns:"]
    parts += [f"  {k}: {v}" for k, v in {**SAE_COLUMNS, **score_columns(props)}.items()]
    groups = _group_lines(results)
    if groups:
        parts += ["", *groups]
    warnings = comparison_warnings(results)
    parts += ["", *(f"WARNING: {w}" for w in warnings)] if warnings else ["", "No warnings."]
    parts += ["", "Conclusion: " + conclusion(results)]
    return "\n".join(parts)


def _group_lines(results: dict[str, BoardEvalResult]) -> list[str]:
    lines = []
    for kind, result in results.items():
        for s in result.saes:
            for g in s.groups.values():
                lines.append(f"{g.group} average over {len(g.properties)} properties ({kind}, "
                             f"{s.name}): coverage held out {g.coverage_test:.3f}, paper-style "
                             f"{g.coverage_train_paper:.3f}")
    return lines


def report_dict(results: dict[str, BoardEvalResult],
                tokens: dict[str, int | None] | None = None) -> dict[str, Any]:
    """The report's content as JSON: SAE list, column definitions, warnings, conclusion."""
    props = report_props(results)
    return {"saes": [vars(i) for i in sae_infos(results, tokens)],
            "columns": {**SAE_COLUMNS, **score_columns(props)},
            "warnings": comparison_warnings(results), "conclusion": conclusion(results)}
