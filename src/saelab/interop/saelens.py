"""SAELens folders (``cfg.json`` + ``sae_weights.safetensors``), read and written.

Same tensor names and shapes as saelab for W_enc (d_in × d_sae), b_enc, W_dec (d_sae × d_in),
b_dec and threshold; the gated gate bias is ``b_gate``. Architecture map, saelab → SAELens:

=================  =============  ==============================================
saelab             SAELens        note
=================  =============  ==============================================
relu, panneal      standard       inference is ReLU for both
gated(_panneal)    gated          b_enc ↔ b_gate
jumprelu           jumprelu
batchtopk          jumprelu       the learned global θ as a per-latent threshold
matryoshka         jumprelu       (SAELens saves its own BatchTopK SAEs this way)
topk, ordered      topk           ``rescale_acts_by_decoder_norm = false``
transcoder         —              SAELens transcoders are ReLU/JumpReLU, not TopK
crosscoder         —              SAELens has no crosscoder format
=================  =============  ==============================================

saelab always subtracts b_dec from the input, so an ``apply_b_dec_to_input = false`` SAE is
read with b_dec·W_enc folded into the encoder bias (exact). saelab's folded input scale means
decoder rows need not be unit-norm: nothing here rescales decoder norms. The full saelab config
rides along under ``"saelab"`` in cfg.json (SAELens ignores unknown keys), so a saelab →
SAELens → saelab round trip restores the exact architecture (e.g. Ordered, Matryoshka).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from saelab.architectures.base import SAE
from saelab.config import ConfigError
from saelab.interop.common import (
    InteropError,
    float_state,
    fold_input_bias,
    require_positive_threshold,
    target_name,
)
from saelab.io import load_state_checked, sae_config_dict
from saelab.registry import build, config_from_dict

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
SAELENS_ARCH = {"relu": "standard", "panneal": "standard", "gated": "gated",
                "gated_panneal": "gated", "jumprelu": "jumprelu", "batchtopk": "jumprelu",
                "matryoshka": "jumprelu", "topk": "topk", "ordered": "topk"}
_TENSORS = {"standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
            "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
            "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
            "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")}
NO_COUNTERPART = {
    "transcoder": "SAELens transcoders use ReLU or JumpReLU codes, saelab's use TopK",
    "crosscoder": "SAELens has no crosscoder format (its crosscoder PR is unmerged)",
}


def _threshold(sae: SAE) -> Tensor:
    if sae.name == "jumprelu":
        return sae.theta().detach()  # type: ignore[operator,no-any-return]
    theta = sae.threshold.detach()  # type: ignore[operator]  # batchtopk / matryoshka: one global θ (a buffer)
    require_positive_threshold(sae, theta, "SAELens")
    return theta.expand(sae.cfg.d_sae).clone()


def to_saelens(sae: SAE) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """SAELens tensors and cfg.json of ``sae`` (raises InteropError if it has no counterpart)."""
    arch = target_name(sae, SAELENS_ARCH, NO_COUNTERPART, "SAELens")
    t = float_state(sae)
    tensors = {"W_enc": t["W_enc"], "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": sae.cfg.model_name, "hook_name": sae.cfg.hook_name,
                     "hook_head_index": None, "prepend_bos": True, "model_class_name": None,
                     "exported_by": "saelab"},
        "saelab": sae_config_dict(sae),
    }
    if arch == "gated":
        tensors = {"W_enc": t["W_enc"], "b_gate": t["b_enc"], "r_mag": t["r_mag"],
                   "b_mag": t["b_mag"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    elif arch == "jumprelu":
        tensors["threshold"] = _threshold(sae).float().contiguous().cpu()
    elif arch == "topk":
        cfg["k"] = sae.cfg.k  # type: ignore[attr-defined]
        cfg["rescale_acts_by_decoder_norm"] = False
    return tensors, cfg


def write_saelens(sae: SAE, folder: Path) -> None:
    """Write the SAELens files into an existing folder (see :func:`saelab.interop.export`)."""
    tensors, cfg = to_saelens(sae)
    save_file(tensors, str(folder / WEIGHTS_NAME))
    (folder / CFG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")


def read_saelens(folder: Path) -> SAE:
    """A SAELens folder as the saelab SAE with the same codes and reconstruction."""
    try:
        cfg = json.loads((folder / CFG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InteropError(f"{folder / CFG_NAME} cannot be read as JSON ({err}); is this a "
                           "SAELens SAE folder?") from err
    try:
        tensors = {k: v.float() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()}
    except (SafetensorError, OSError) as err:
        raise InteropError(f"{folder / WEIGHTS_NAME} could not be read ({err})") from err
    where = str(folder / WEIGHTS_NAME)
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise InteropError(f"{folder}: normalize_activations = {cfg['normalize_activations']!r} "
                           "makes the SAE depend on run-time input statistics saelab does not "
                           "store; only 'none' can be read (SAELens folds the scale at save "
                           "time when you train with it)")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise InteropError(f"{folder}: rescale_acts_by_decoder_norm = true is not supported; "
                           "fold the decoder norms in SAELens (sae.fold_W_dec_norm()) and save again")
    if cfg.get("hook_head_index") or (cfg.get("metadata") or {}).get("hook_head_index"):
        raise InteropError(f"{folder}: SAEs on one attention head (hook_head_index) are not "
                           "supported")
    own = cfg.get("saelab")
    if isinstance(own, dict):
        sae = _from_saelab_section(own, tensors, cfg, where)
        if sae is not None:
            return sae
    return _from_saelens(cfg, tensors, folder, where)


def _meta(cfg: dict[str, Any]) -> dict[str, str]:
    meta = cfg.get("metadata") or {}
    return {"model_name": str(meta.get("model_name") or cfg.get("model_name") or ""),
            "hook_name": str(meta.get("hook_name") or cfg.get("hook_name") or "")}


def _from_saelab_section(own: dict[str, Any], tensors: dict[str, Tensor], cfg: dict[str, Any],
                         where: str) -> SAE | None:
    """Rebuild the exact saelab architecture an exported folder came from, when its weights
    still match (None if the folder was re-saved by SAELens in some other shape)."""
    data = {k: v for k, v in own.items() if k != "format_version"}
    try:
        sae = build(config_from_dict(data, where=where).resolved())
    except ConfigError:
        return None
    if sae.name not in SAELENS_ARCH or set(_TENSORS[SAELENS_ARCH[sae.name]]) != set(tensors) \
            or not cfg.get("apply_b_dec_to_input", True):
        return None
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    state.update({"W_enc": tensors["W_enc"], "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"],
                  "b_enc": tensors["b_gate" if "b_gate" in tensors else "b_enc"]})
    for name in ("r_mag", "b_mag"):
        if name in tensors:
            state[name] = tensors[name]
    if "threshold" in tensors:
        th = tensors["threshold"]
        state["threshold"] = th if state["threshold"].ndim else th[0]
        if state["threshold"].ndim == 0 and not bool((th == th[0]).all()):
            return None  # a per-latent threshold no longer fits the global-θ architecture
    load_state_checked(sae, state, where)
    return sae.eval()


def _from_saelens(cfg: dict[str, Any], tensors: dict[str, Tensor], folder: Path,
                  where: str) -> SAE:
    arch = str(cfg.get("architecture", "standard"))
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    common: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, **_meta(cfg)}
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", True))
    state: dict[str, Tensor]
    if arch == "standard":
        sae = build(config_from_dict({"architecture": "relu", **common}))
        state = _encoder_state(tensors, "b_enc", apply_b_dec, where)
    elif arch == "gated":
        sae = build(config_from_dict({"architecture": "gated", **common}))
        state = _encoder_state(tensors, "b_gate", apply_b_dec, where)
        state["r_mag"], state["b_mag"] = _need(tensors, "r_mag", where), _need(tensors, "b_mag", where)
        if not apply_b_dec:  # the magnitude path sees the same input: fold there too
            scaled = tensors["W_enc"] * torch.exp(state["r_mag"])
            state["b_mag"] = fold_input_bias(scaled, state["b_mag"], tensors["b_dec"])
    elif arch == "jumprelu":
        sae = build(config_from_dict({"architecture": "jumprelu", **common}))
        state = _encoder_state(tensors, "b_enc", apply_b_dec, where)
        state["threshold"] = _need(tensors, "threshold", where)
    elif arch == "topk":
        sae = build(config_from_dict({"architecture": "topk", "k": int(cfg["k"]), **common}))
        state = _encoder_state(tensors, "b_enc", apply_b_dec, where)
    else:
        supported = sorted(set(SAELENS_ARCH.values()))
        raise InteropError(f"{folder}: SAELens architecture {arch!r} has no saelab counterpart "
                           f"yet; readable architectures are {supported}")
    load_state_checked(sae, state, where)
    return sae.eval()


def _need(tensors: dict[str, Tensor], name: str, where: str) -> Tensor:
    if name not in tensors:
        raise InteropError(f"{where} has no tensor {name!r} (it holds {sorted(tensors)})")
    return tensors[name]


def _encoder_state(tensors: dict[str, Tensor], bias_name: str, apply_b_dec: bool,
                   where: str) -> dict[str, Tensor]:
    W_enc, b_enc = _need(tensors, "W_enc", where), _need(tensors, bias_name, where)
    b_dec = _need(tensors, "b_dec", where)
    if not apply_b_dec:
        b_enc = fold_input_bias(W_enc, b_enc, b_dec)
    return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": _need(tensors, "W_dec", where), "b_dec": b_dec}
