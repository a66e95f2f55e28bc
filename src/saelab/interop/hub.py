"""Export a saelab SAE in a peer format inside a Hugging Face Hub-style folder.

Layout (what ``huggingface-cli upload OUT`` or SAELens's own loaders expect)::

    OUT/
      README.md            model card: YAML front matter + what the SAE is and how to load it
      SAE_ID/              one folder per SAE (default id: the hook name, else the SAE's name)
        cfg.json + sae_weights.safetensors     (--to saelens)
        config.json + ae.pt                    (--to dictionary_learning)
        cfg.json + sae.safetensors             (--to saelab)

Exporting more SAEs into the same OUT adds folders and rewrites the card to list them all; an
existing SAE_ID folder is only replaced with ``overwrite``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from saelab.architectures.base import SAE
from saelab.interop.common import InteropError
from saelab.io import atomic_write_bytes, atomic_write_dir, write_sae_files

Target = Literal["saelens", "dictionary_learning", "saelab"]
CARD_NAME = "README.md"
INDEX_NAME = "saelab_export.json"


@dataclass
class ExportResult:
    folder: Path  # OUT/SAE_ID
    card: Path  # OUT/README.md
    fmt: Target


def default_sae_id(sae: SAE, fallback: str) -> str:
    hook = sae.cfg.hook_name
    return _safe_id(hook) if hook else _safe_id(fallback)


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "sae"


def _writer(fmt: Target):  # type: ignore[no-untyped-def]
    if fmt == "saelens":
        from saelab.interop.saelens import write_saelens

        return write_saelens
    if fmt == "dictionary_learning":
        from saelab.interop.dictionary_learning import write_dictionary_learning

        return write_dictionary_learning
    if fmt == "saelab":
        return write_sae_files
    raise InteropError(f"unknown export format {fmt!r}; use saelens, dictionary_learning or saelab")


def export(sae: SAE, out: str | Path, fmt: Target, *, sae_id: str = "", overwrite: bool = False,
           source: str = "") -> ExportResult:
    """Write ``sae`` as OUT/SAE_ID in format ``fmt`` and (re)write OUT/README.md.

    Raises InteropError when the architecture has no counterpart in ``fmt`` (nothing is
    written then) or when OUT/SAE_ID exists and ``overwrite`` is off.
    """
    out = Path(out)
    write = _writer(fmt)
    sae_id = _safe_id(sae_id) if sae_id else default_sae_id(sae, sae.name)
    folder = out / sae_id
    if folder.exists() and not overwrite:
        raise InteropError(f"{folder} already exists; pass --overwrite to replace it or choose "
                           "another --sae-id")
    atomic_write_dir(folder, lambda tmp: write(sae.cpu().eval(), tmp))
    index = _read_index(out)
    index[sae_id] = {"format": fmt, "architecture": sae.name, "d_in": sae.cfg.d_in,
                     "d_sae": sae.cfg.d_sae, "model_name": sae.cfg.model_name,
                     "hook_name": sae.cfg.hook_name, "source": source}
    atomic_write_bytes(out / INDEX_NAME, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
    card = out / CARD_NAME
    atomic_write_bytes(card, model_card(index).encode())
    return ExportResult(folder, card, fmt)


def _read_index(out: Path) -> dict[str, dict[str, object]]:
    path = out / INDEX_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InteropError(f"{path} is corrupt ({err}); remove it to start a fresh export "
                           "folder (the SAE folders are left as they are)") from err
    return data if isinstance(data, dict) else {}


_LOAD_HINT = {
    "saelens": "from sae_lens import SAE\nsae = SAE.load_from_disk(\"{id}\")",
    "dictionary_learning": "from dictionary_learning.utils import load_dictionary\n"
                           "ae, config = load_dictionary(\"{id}\", device=\"cpu\")",
    "saelab": "import saelab\nsae = saelab.load(\"{id}\")",
}
_LIBRARY = {"saelens": "saelens", "dictionary_learning": "dictionary_learning", "saelab": "saelab"}


def model_card(index: dict[str, dict[str, object]]) -> str:
    """A Hub model card (YAML front matter + Markdown) listing every exported SAE."""
    models = sorted({str(v["model_name"]) for v in index.values() if v.get("model_name")})
    libraries = sorted({_LIBRARY[str(v["format"])] for v in index.values()})
    lines = ["---", f"library_name: {libraries[0] if len(libraries) == 1 else 'saelab'}",
             "tags:", "- sparse-autoencoder", "- interpretability", "- saelab",
             *[f"- {lib}" for lib in libraries if lib != "saelab"]]
    if models:
        lines += ["base_model:", *[f"- {m}" for m in models if "/" in m and not m.startswith("/")]]
        if lines[-1] == "base_model:":
            lines.pop()
    lines += ["---", "", "# Sparse autoencoders", "",
              "Trained with saelab and exported to the format named per "
              "SAE below. Each folder is one SAE.", "",
              "| folder | format | architecture | model | hook | d_in | d_sae |",
              "|---|---|---|---|---|---|---|"]
    for sae_id, v in sorted(index.items()):
        lines.append(f"| `{sae_id}` | {v['format']} | {v['architecture']} | "
                     f"{v.get('model_name') or '—'} | {v.get('hook_name') or '—'} | {v['d_in']} | "
                     f"{v['d_sae']} |")
    lines += ["", "## Loading", ""]
    for fmt in sorted({str(v["format"]) for v in index.values()}):
        first = sorted(k for k, v in index.items() if v["format"] == fmt)[0]
        lines += [f"{fmt}:", "", "```python", _LOAD_HINT[fmt].format(id=first), "```", ""]
    lines += ["saelab reads all three formats: `saelab.load(folder)`.", "",
              "Inputs are raw activations at the hook (any training-time normalisation is "
              "folded into the weights); decoder rows are therefore not unit-norm, so do not "
              "renormalise them when loading.", ""]
    return "\n".join(lines)
