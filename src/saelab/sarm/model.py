"""The SARM reward model: backbone truncated at a hook → last-token activation h → SAE latents z
→ r = wᵀz (no bias).

``features`` chooses z: ``pre_acts`` (SARM's default, z = (h − b_dec)·W_enc + b_enc, no
sparsity before the head), ``codes`` (the SAE's inference codes, e.g. TopK) or ``raw`` (no SAE:
a linear head on the standardised activation itself — the baseline SARM is compared against).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from saelab.architectures.base import SAE
from saelab.config import ConfigError, from_dict, option, to_dict
from saelab.io import atomic_write_dir, load, write_sae_files
from saelab.models.hooks import HookPoint, model_lock, resolve_module, select_tensor
from saelab.steer.edits import LatentEdit, apply_edits, check_latents

Features = Literal["pre_acts", "codes", "raw"]
CONFIG_NAME = "sarm.json"
HEAD_NAME = "head.safetensors"


@dataclass
class SARMConfig:
    """What a SARM reads: the hook, the feature kind, and where its parts came from."""

    hook: str = option("", "module whose output the head reads at the last token, e.g. "
                       "transformer.h.3 (the backbone is truncated there)")
    features: Features = option("pre_acts", "pre_acts (SARM default), codes (the SAE's "
                                "sparse codes, e.g. TopK) or raw (no SAE: the linear baseline)")
    model_name: str = option("", "backbone: Hugging Face hub id or folder (recorded)")
    sae_path: str = option("", "SAE folder the head reads (recorded)")

    def validate(self) -> None:
        if not self.hook:
            raise ConfigError("SARM needs a hook: the module path whose activation the head reads")
        if self.features not in ("pre_acts", "codes", "raw"):
            raise ConfigError(f"features must be pre_acts, codes or raw, not {self.features!r}")


class _Stop(Exception):
    """Ends the backbone's forward pass once the hooked module has run."""


class SARM(nn.Module):
    """Backbone + SAE + linear reward head. ``sae`` is None only for ``features="raw"``."""

    act_mean: Tensor
    act_std: Tensor

    def __init__(self, backbone: nn.Module, cfg: SARMConfig, sae: SAE | None = None,
                 d_in: int | None = None) -> None:
        super().__init__()
        cfg.validate()
        if cfg.features != "raw" and sae is None:
            raise ConfigError(f"features={cfg.features} needs an SAE; pass one, or use "
                              "features='raw' for the linear baseline on activations")
        self.cfg = cfg
        self.backbone = backbone
        self.sae = sae
        self.point = HookPoint.parse(cfg.hook)
        resolve_module(backbone, self.point.path)  # a wrong path fails here, with suggestions
        d = sae.cfg.d_in if sae is not None else d_in
        if not d:
            raise ConfigError("features='raw' needs d_in (the activation width)")
        self.d_in = int(d)
        width = self.d_in if cfg.features == "raw" else sae.cfg.d_sae  # type: ignore[union-attr]
        self.head = nn.Linear(width, 1, bias=False)
        nn.init.zeros_(self.head.weight)
        # the raw baseline standardises each dimension with statistics of its training data
        self.register_buffer("act_mean", torch.zeros(self.d_in))
        self.register_buffer("act_std", torch.ones(self.d_in))
        params = inspect.signature(backbone.forward).parameters
        self._takes_mask = "attention_mask" in params
        self._takes_ids = "input_ids" in params

    # ------------------------------------------------------------------ activations

    def hook_acts(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Activations ``(B, S, d_in)`` at the hook; the backbone stops right after it.

        Gradients flow (train the backbone with mode ``all``); wrap in ``torch.no_grad()``
        otherwise.
        """
        module = resolve_module(self.backbone, self.point.path)
        box: dict[str, Tensor] = {}

        def on_output(_m: nn.Module, _a: Any, out: Any) -> None:
            box["acts"] = select_tensor(out, self.point)
            raise _Stop

        def on_input(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            box["acts"] = select_tensor(args[0], self.point) if args else kwargs["hidden_states"]
            raise _Stop

        with model_lock(self.backbone):
            handle = (module.register_forward_hook(on_output) if self.point.where == "output"
                      else module.register_forward_pre_hook(on_input, with_kwargs=True))
            try:
                kwargs: dict[str, Tensor] = {}
                if self._takes_mask:
                    kwargs["attention_mask"] = attention_mask
                if self._takes_ids:
                    self.backbone(input_ids=input_ids, **kwargs)
                else:
                    self.backbone(input_ids, **kwargs)
            except _Stop:
                pass
            finally:
                handle.remove()
        if "acts" not in box:
            raise ConfigError(f"hook {self.point} never ran in the backbone's forward pass")
        acts = box["acts"]
        if acts.shape[-1] != self.d_in:
            raise ConfigError(f"hook {self.point} gives width {acts.shape[-1]} but the SARM "
                              f"expects {self.d_in}; use the hook its SAE was trained on")
        return acts

    @staticmethod
    def last_token(acts_BSD: Tensor, attention_mask: Tensor) -> Tensor:
        """The activation at each row's last real token (right padding)."""
        last = attention_mask.long().sum(1) - 1
        if (last < 0).any():
            raise ConfigError("a sequence has no tokens; every text must tokenise to something")
        return acts_BSD[torch.arange(acts_BSD.shape[0], device=acts_BSD.device), last]

    def last_acts(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.last_token(self.hook_acts(input_ids, attention_mask), attention_mask)

    # ------------------------------------------------------------------ reward

    def latents(self, h_BD: Tensor) -> Tensor:
        """z: what the head reads (pre-activations, codes, or the standardised activation)."""
        if self.cfg.features == "raw":
            return (h_BD - self.act_mean) / self.act_std
        assert self.sae is not None
        return self.sae.pre_acts(h_BD) if self.cfg.features == "pre_acts" else self.sae.encode(h_BD)

    def reward_from_acts(self, h_BD: Tensor, edits: Sequence[LatentEdit] = ()) -> Tensor:
        """r = wᵀz' with z' = z after ``edits`` (reward steering); shape (B,)."""
        z = self.latents(h_BD)
        if edits:
            check_latents(edits, z.shape[-1], "the reward head")
            z = apply_edits(z, edits)
        return self.head(z).squeeze(-1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                edits: Sequence[LatentEdit] = ()) -> Tensor:
        return self.reward_from_acts(self.last_acts(input_ids, attention_mask), edits)

    def attribution_from_acts(self, h_BD: Tensor) -> Tensor:
        """Per-latent contributions w_j·z_j (B × M); they sum to the reward."""
        return self.latents(h_BD) * self.head.weight[0]

    @torch.no_grad()
    def fit_standardiser(self, h_ND: Tensor) -> None:
        """Set the raw baseline's per-dimension mean and std from training activations."""
        self.act_mean.copy_(h_ND.mean(0))
        self.act_std.copy_(h_ND.std(0).clamp_min(1e-6))


# ---------------------------------------------------------------------------- save / load


def save_sarm(sarm: SARM, folder: str | Path, meta: dict[str, Any] | None = None, *,
              save_sae: bool = False, save_backbone: bool = False) -> Path:
    """Write ``sarm.json`` (config + ``meta``), ``head.safetensors``, and the SAE (``sae/``) or
    backbone (``backbone/``, ``save_pretrained``) when they were trained. Atomic as a folder."""
    def fill(tmp: Path) -> None:
        tensors = {"head.weight": sarm.head.weight.detach().cpu().contiguous(),
                   "act_mean": sarm.act_mean.cpu(), "act_std": sarm.act_std.cpu()}
        (tmp / HEAD_NAME).write_bytes(save_tensors(tensors))
        (tmp / CONFIG_NAME).write_text(json.dumps(
            {"config": to_dict(sarm.cfg), "d_in": sarm.d_in, "has_sae": save_sae,
             "has_backbone": save_backbone, **(meta or {})}, indent=2, sort_keys=True) + "\n")
        if save_sae and sarm.sae is not None:
            (tmp / "sae").mkdir()
            write_sae_files(sarm.sae, tmp / "sae")
        if save_backbone:
            sarm.backbone.save_pretrained(tmp / "backbone")  # type: ignore[operator]
    out = Path(folder)
    atomic_write_dir(out, fill)
    return out


def read_sarm_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; is it a folder written by "
                                "`saelab sarm train`?")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_sarm(folder: str | Path, backbone: nn.Module | None = None,
              device: str = "cpu") -> SARM:
    """Rebuild a saved SARM. The backbone is the saved one (mode ``all``), else ``backbone``,
    else loaded from the recorded ``model_name``."""
    folder = Path(folder)
    meta = read_sarm_meta(folder)
    cfg = from_dict(SARMConfig, meta["config"], where=str(folder / CONFIG_NAME))
    sae = None
    if cfg.features != "raw":
        sae = load(folder / "sae" if meta.get("has_sae") else cfg.sae_path, device=device)
    if meta.get("has_backbone"):
        from transformers import AutoModelForCausalLM

        path = str(folder / "backbone")
        backbone = AutoModelForCausalLM.from_pretrained(path).to(device)  # type: ignore[arg-type]
    elif backbone is None:
        if not cfg.model_name:
            raise ConfigError(f"{folder} records no model_name; pass the backbone")
        from saelab.models.hf import load_hf_model

        backbone = load_hf_model(cfg.model_name, device=device).model
    sarm = SARM(backbone, cfg, sae, d_in=int(meta["d_in"]))
    tensors = load_tensors((folder / HEAD_NAME).read_bytes())
    with torch.no_grad():
        sarm.head.weight.copy_(tensors["head.weight"])
        sarm.act_mean.copy_(tensors["act_mean"])
        sarm.act_std.copy_(tensors["act_std"])
    return sarm.to(device).eval()
