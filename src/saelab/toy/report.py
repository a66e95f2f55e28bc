"""A small HTML + Markdown report of a toy-recovery run, with plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from saelab.architectures.base import SAE
from saelab.io import atomic_write_bytes
from saelab.metrics.matching import match_directions
from saelab.toy.generator import ToyModel
from saelab.toy.recovery import ToyScore, format_table


def _plots(scores: list[ToyScore], saes: dict[str, SAE], toy: ToyModel, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in scores]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8),
                                   gridspec_kw={"width_ratios": [1, 1.4]})
    x = np.arange(len(names))
    width = 0.27
    for i, (key, label) in enumerate([("stability", "Stab vs truth"),
                                      ("recovered_share", "share recovered (cos > 0.9)"),
                                      ("explained_variance", "explained variance")]):
        ax1.bar(x + (i - 1) * width, [getattr(s, key) for s in scores], width, label=label)
    ax1.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax1.set_xticks(x, names, rotation=30, ha="right")
    ax1.set_ylim(0, 1.05)
    ax1.legend(fontsize=8, loc="lower left")
    ax1.set_title(f"recovery of {toy.cfg.n_features} true features (true L0 ≈ {toy.true_l0:.1f})")
    grid = np.zeros((len(names), toy.cfg.n_features))
    for row, name in enumerate(names):
        match = match_directions(saes[name].W_dec.detach(), toy.features_GD)
        grid[row, match.reference_index_L.numpy()] = match.similarity_L.numpy()
    im = ax2.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis")
    ax2.set_yticks(range(len(names)), names)
    ax2.set_xlabel("true feature (sorted by firing probability, most frequent first)")
    ax2.set_title("matched |cos| per true feature")
    fig.colorbar(im, ax=ax2, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: Path, title: str, scores: list[ToyScore], saes: dict[str, SAE],
                 toy: ToyModel, notes: str = "") -> Path:
    """Write results.json, report.md and a self-contained report.html; return the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = _plots(scores, saes, toy, out_dir / "recovery.png")
    table = format_table(scores)
    atomic_write_bytes(out_dir / "results.json",
                       json.dumps([s.row() for s in scores], indent=2).encode())
    md = f"# {title}\n\n{notes}\n\n{table}\n\n![recovery](recovery.png)\n"
    atomic_write_bytes(out_dir / "report.md", md.encode())
    b64 = base64.b64encode(png.read_bytes()).decode()
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
        + "</tr>" for line in table.splitlines()[2:])
    head = "".join(f"<th>{html.escape(c.strip())}</th>"
                   for c in table.splitlines()[0].strip("|").split("|"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
th{{background:#f3f3f3}}</style></head><body><h1>{html.escape(title)}</h1>
<p>{html.escape(notes)}</p><table><tr>{head}</tr>{rows}</table>
<p><img src="data:image/png;base64,{b64}" style="max-width:100%"></p></body></html>"""
    atomic_write_bytes(out_dir / "report.html", page.encode())
    return out_dir / "report.html"


