"""dictionary_learning folders (``ae.pt`` state dict + ``config.json``), read and written.

dictionary_learning keeps most weights as ``nn.Linear`` layers, so ``encoder.weight`` is W_encᵀ
and ``decoder.weight`` is W_decᵀ. Architecture map, saelab → dictionary_learning
(``config.json`` → ``trainer.dict_class``):

=================  ======================  ============================================
saelab             dictionary_learning     note
=================  ======================  ============================================
relu, panneal      AutoEncoder             load with ``normalize_decoder=False``
gated(_panneal)    GatedAutoEncoder        b_enc ↔ gate_bias, b_mag ↔ mag_bias
jumprelu           JumpReluAutoEncoder     b_dec·W_enc folded into b_enc (see below)
topk, ordered      AutoEncoderTopK
batchtopk          BatchTopKSAE            global θ in ``threshold``
matryoshka         MatryoshkaBatchTopKSAE  ``group_sizes`` from saelab's prefix ends
transcoder         —                       no TopK transcoder class in dictionary_learning
crosscoder         —                       no crosscoder class in dictionary_learning 0.1.0
=================  ======================  ============================================

``JumpReluAutoEncoder`` decides whether to subtract b_dec from the input with the attribute
``apply_b_dec_to_input``, which its state dict does not store and its ``from_pretrained`` leaves
False. So a saelab JumpReLU (which subtracts b_dec) is written with b_enc − b_dec·W_enc, and a
dictionary_learning one is read as not subtracting it unless config.json says otherwise.
``AutoEncoder.from_pretrained`` (and ``utils.load_dictionary``) by default rescales decoder
columns to unit norm and the codes with them; saelab SAEs carry their folded input scale in the
decoder, so load them with ``normalize_decoder=False`` to get saelab's codes (reconstructions
agree either way).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
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

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "ae.pt"
DICT_CLASS = {"relu": "AutoEncoder", "panneal": "AutoEncoder", "gated": "GatedAutoEncoder",
              "gated_panneal": "GatedAutoEncoder", "jumprelu": "JumpReluAutoEncoder",
              "topk": "AutoEncoderTopK", "ordered": "AutoEncoderTopK",
              "batchtopk": "BatchTopKSAE", "matryoshka": "MatryoshkaBatchTopKSAE"}
NO_COUNTERPART = {
    "transcoder": "dictionary_learning trains transcoders as ordinary AutoEncoders with no "
                  "TopK transcoder class",
    "crosscoder": "dictionary_learning 0.1.0 has no crosscoder class",
}


def to_dictionary_learning(sae: SAE) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The ``ae.pt`` state dict and ``config.json`` of ``sae``."""
    cls = target_name(sae, DICT_CLASS, NO_COUNTERPART, "dictionary_learning")
    t = float_state(sae)
    W_enc, b_enc, W_dec, b_dec = t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"]
    trainer: dict[str, Any] = {"dict_class": cls, "trainer_class": "saelab",
                               "activation_dim": sae.cfg.d_in, "dict_size": sae.cfg.d_sae,
                               "lm_name": sae.cfg.model_name, "submodule_name": sae.cfg.hook_name,
                               "layer": None}
    state: dict[str, Tensor]
    if cls == "AutoEncoder":
        state = {"bias": b_dec, "encoder.weight": W_enc.T, "encoder.bias": b_enc,
                 "decoder.weight": W_dec.T}
    elif cls == "GatedAutoEncoder":
        state = {"decoder_bias": b_dec, "encoder.weight": W_enc.T, "r_mag": t["r_mag"],
                 "gate_bias": b_enc, "mag_bias": t["b_mag"], "decoder.weight": W_dec.T}
    elif cls == "JumpReluAutoEncoder":
        state = {"W_enc": W_enc, "b_enc": fold_input_bias(W_enc, b_enc, -b_dec), "W_dec": W_dec,
                 "b_dec": b_dec, "threshold": sae.theta().detach().float()}  # type: ignore[operator]
        trainer["apply_b_dec_to_input"] = False
    else:
        k = torch.tensor(sae.cfg.k, dtype=torch.int32)  # type: ignore[attr-defined]
        trainer["k"] = sae.cfg.k  # type: ignore[attr-defined]
        threshold = torch.tensor(-1.0)
        if cls in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
            threshold = require_positive_threshold(sae, t["threshold"].reshape(()),
                                                   "dictionary_learning")
        if cls == "MatryoshkaBatchTopKSAE":
            ends = sae.cfg.prefix_ends()  # type: ignore[attr-defined]
            sizes = torch.tensor([b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)])
            state = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "k": k,
                     "threshold": threshold, "group_sizes": sizes}
            trainer["group_fractions"] = sae.cfg.group_fractions  # type: ignore[attr-defined]
        else:
            state = {"encoder.weight": W_enc.T, "encoder.bias": b_enc,
                     "decoder.weight": W_dec.T, "b_dec": b_dec, "k": k, "threshold": threshold}
    config = {"trainer": trainer, "buffer": {}, "saelab": sae_config_dict(sae)}
    return {k: v.contiguous().clone() for k, v in state.items()}, config


def write_dictionary_learning(sae: SAE, folder: Path) -> None:
    """Write ``ae.pt`` and ``config.json`` into an existing folder."""
    state, config = to_dictionary_learning(sae)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # the format dictionary_learning reads: a state dict of tensors
    (folder / WEIGHTS_NAME).write_bytes(buffer.getvalue())
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def read_dictionary_learning(folder: Path) -> SAE:
    """A dictionary_learning folder as the saelab SAE with the same codes and reconstruction."""
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        trainer = dict(config["trainer"])
        cls = str(trainer["dict_class"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise InteropError(f"{folder / CONFIG_NAME} is missing or has no trainer.dict_class "
                           f"({err}); is this a dictionary_learning SAE folder?") from err
    try:
        state = torch.load(folder / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad pickle
        raise InteropError(f"{folder / WEIGHTS_NAME} could not be read as a state dict of "
                           f"tensors ({err})") from err
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    where = str(folder / WEIGHTS_NAME)
    meta = {"model_name": str(trainer.get("lm_name") or ""),
            "hook_name": str(trainer.get("submodule_name") or "")}
    own = config.get("saelab")
    if isinstance(own, dict):
        sae = _from_saelab_section(own, state, cls, where)
        if sae is not None:
            return sae
    return _from_dictionary_learning(cls, trainer, state, meta, where)


def _need(state: dict[str, Tensor], name: str, where: str) -> Tensor:
    if name not in state:
        raise InteropError(f"{where} has no tensor {name!r} (it holds {sorted(state)})")
    return state[name]


def _saelab_state(cls: str, state: dict[str, Tensor], where: str,
                  apply_b_dec: bool = True) -> dict[str, Tensor]:
    """saelab tensor names for a dictionary_learning state dict (biases folded as needed)."""
    g = lambda name: _need(state, name, where)  # noqa: E731
    if cls == "AutoEncoder":
        return {"W_enc": g("encoder.weight").T, "b_enc": g("encoder.bias"),
                "W_dec": g("decoder.weight").T, "b_dec": g("bias")}
    if cls == "AutoEncoderNew":  # no input bias subtracted: fold the decoder bias in
        W_enc = g("encoder.weight").T
        return {"W_enc": W_enc, "b_enc": fold_input_bias(W_enc, g("encoder.bias"), g("decoder.bias")),
                "W_dec": g("decoder.weight").T, "b_dec": g("decoder.bias")}
    if cls == "GatedAutoEncoder":
        return {"W_enc": g("encoder.weight").T, "b_enc": g("gate_bias"), "r_mag": g("r_mag"),
                "b_mag": g("mag_bias"), "W_dec": g("decoder.weight").T, "b_dec": g("decoder_bias")}
    if cls == "JumpReluAutoEncoder":
        b_enc = g("b_enc") if apply_b_dec else fold_input_bias(g("W_enc"), g("b_enc"), g("b_dec"))
        return {"W_enc": g("W_enc"), "b_enc": b_enc, "W_dec": g("W_dec"), "b_dec": g("b_dec"),
                "threshold": g("threshold")}
    if cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        out = {"W_enc": g("encoder.weight").T, "b_enc": g("encoder.bias"),
               "W_dec": g("decoder.weight").T, "b_dec": g("b_dec")}
        if cls == "BatchTopKSAE":
            out["threshold"] = g("threshold").reshape(())
        return out
    if cls == "MatryoshkaBatchTopKSAE":
        return {"W_enc": g("W_enc"), "b_enc": g("b_enc"), "W_dec": g("W_dec"), "b_dec": g("b_dec"),
                "threshold": g("threshold").reshape(())}
    readable = sorted({*DICT_CLASS.values(), "AutoEncoderNew"})
    raise InteropError(f"{where}: dictionary_learning class {cls!r} has no saelab counterpart "
                       f"yet; readable classes are {readable}")


def _from_saelab_section(own: dict[str, Any], state: dict[str, Tensor], cls: str,
                         where: str) -> SAE | None:
    data = {k: v for k, v in own.items() if k != "format_version"}
    try:
        sae = build(config_from_dict(data, where=where).resolved())
    except ConfigError:
        return None
    if DICT_CLASS.get(sae.name) != cls:
        return None
    mapped = _saelab_state(cls, state, where, apply_b_dec=False)
    full = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    full.update(mapped)
    load_state_checked(sae, full, where)
    return sae.eval()


def _from_dictionary_learning(cls: str, trainer: dict[str, Any], state: dict[str, Tensor],
                              meta: dict[str, str], where: str) -> SAE:
    apply_b_dec = bool(trainer.get("apply_b_dec_to_input", False))
    mapped = _saelab_state(cls, state, where, apply_b_dec=apply_b_dec)
    d_in, d_sae = mapped["W_enc"].shape
    opts: dict[str, Any] = {"d_in": int(d_in), "d_sae": int(d_sae), **meta}
    arch = {"AutoEncoder": "relu", "AutoEncoderNew": "relu", "GatedAutoEncoder": "gated",
            "JumpReluAutoEncoder": "jumprelu", "AutoEncoderTopK": "topk",
            "BatchTopKSAE": "batchtopk", "MatryoshkaBatchTopKSAE": "matryoshka"}[cls]
    if arch in ("topk", "batchtopk", "matryoshka"):
        opts["k"] = int(state["k"]) if "k" in state else int(trainer["k"])
    if arch == "matryoshka":
        sizes = _need(state, "group_sizes", where).tolist()
        opts["group_fractions"] = [s / sum(sizes) for s in sizes]
    if arch in ("batchtopk", "matryoshka") and float(mapped["threshold"]) < 0:
        raise InteropError(f"{where}: {cls} has no inference threshold (threshold < 0), so its "
                           "codes depend on the batch; saelab cannot reproduce them")
    sae = build(config_from_dict({"architecture": arch, **opts}).resolved())
    full = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    full.update(mapped)
    load_state_checked(sae, full, where)
    if arch == "matryoshka" and sae.cfg.prefix_ends() != list(  # type: ignore[attr-defined]
            _need(state, "group_sizes", where).cumsum(0).tolist()):
        raise InteropError(f"{where}: group_sizes {state['group_sizes'].tolist()} cannot be "
                           "expressed as saelab group_fractions exactly")
    return sae.eval()
