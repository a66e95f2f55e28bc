"""AlignSAE on the biography model, in stages: collect activations at the answer position,
train stage 1 (reconstruction) and stage 2 (the AlignSAE loss, started from stage 1), and a
plain SAE baseline on the same activations — each with saelab's trainer (typed config,
checksummed checkpoints, exact resume).

Run folder::

    <out>/run.json                       the pipeline config (a rerun must match it)
    <out>/layer<L>/data/                 acts_{train,eval}.npy, rows_{train,eval}.npy
    <out>/layer<L>/stage1/final/alignsae
    <out>/layer<L>/stage2/final/alignsae
    <out>/layer<L>/baseline/final/<architecture>

Training rows are the questions with the training phrasings; evaluation uses the held-out
phrasings.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from saelab.architectures.alignsae import AlignSAE, AlignSAEConfig
from saelab.architectures.base import SAE
from saelab.biography.lm import (
    BioLMConfig,
    answer_position_activations,
    load_bio_lm,
    n_layers,
    people_of,
)
from saelab.biography.task import VOCAB, Question, questions
from saelab.config import ConfigError, from_dict, option, to_dict
from saelab.data.arrays import ArrayFileSource
from saelab.io import atomic_write_bytes, atomic_write_json, load
from saelab.registry import config_from_dict
from saelab.training.config import TrainConfig
from saelab.training.trainer import Trainer

RUN_NAME = "run.json"
SPLITS = ("train", "eval")


@dataclass
class AlignSAERunConfig:
    """Settings of one AlignSAE pipeline run (saved as run.json)."""

    model: str = option("", "biography model folder (empty = the shipped model)")
    layers: list[int] = option([0, 1, 2, 3], "blocks whose output (residual stream) is read")
    seed: int = option(0, "seed of the SAEs' initialisation and data order")
    d_sae: int = option(512, "latents per SAE (AlignSAE: free latents + 6 relation slots)")
    batch_size: int = option(64, "rows per optimiser step (paper: 64)")
    lr: float = option(1e-3, "Adam learning rate, constant (paper: 1e-3)")
    stage1_epochs: int = option(20, "passes over the training rows in stage 1 (paper: 20)")
    stage2_epochs: int = option(100, "passes in stage 2 (paper: 400)")
    baseline: str = option("relu", "architecture of the plain SAE baseline")
    baseline_l1: float = option(3.0, "the ReLU baseline's L1 coefficient (inputs scaled so "
                                "E‖x‖² = d)")
    progress: bool = option(True, "progress lines on stderr")

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("give at least one layer")
        for name in ("d_sae", "batch_size", "stage1_epochs", "stage2_epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


def read_run_config(out: str | Path) -> AlignSAERunConfig:
    path = Path(out) / RUN_NAME
    if not path.exists():
        raise FileNotFoundError(f"{out} holds no AlignSAE run ({RUN_NAME} missing); train one "
                                "with `saelab alignsae train --out DIR`")
    return from_dict(AlignSAERunConfig, json.loads(path.read_text()), where=str(path))


def _claim_folder(out: Path, cfg: AlignSAERunConfig) -> None:
    """Write run.json, or check that the one there matches (a rerun resumes, never mixes)."""
    path = out / RUN_NAME
    current = to_dict(cfg)
    current.pop("progress")
    if path.exists():
        saved = json.loads(path.read_text())
        saved.pop("progress", None)
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ConfigError(f"{out} holds an AlignSAE run with other settings (differs in "
                              f"{diff}); rerun with the same settings to resume, or use a new "
                              "--out folder")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {**current, "progress": cfg.progress})


# ---------------------------------------------------------------------------- data


def split_questions(lm_cfg: BioLMConfig) -> dict[str, list[Question]]:
    people = people_of(lm_cfg)
    return {"train": questions(people, held_out=False), "eval": questions(people, held_out=True)}


def labelled_rows(acts_ND: torch.Tensor, qs: list[Question]) -> np.ndarray:
    """``[activation | relation | answer first token]`` rows, float32."""
    labels = np.array([[q.relation, q.answer_first_token] for q in qs], dtype=np.float32)
    return np.concatenate([acts_ND.numpy().astype(np.float32), labels], axis=1)


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def collect(model: nn.Module, lm_cfg: BioLMConfig, layer: int, folder: Path) -> None:
    """Activations at the answer position of every train/eval question (skipped if present)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, qs in split_questions(lm_cfg).items():
        if (folder / f"rows_{split}.npy").exists():
            continue
        acts = answer_position_activations(model, qs, layer)
        _save_npy(folder / f"acts_{split}.npy", acts.numpy().astype(np.float32))
        _save_npy(folder / f"rows_{split}.npy", labelled_rows(acts, qs))


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(activations, relation, answer first token) of one split."""
    rows = torch.from_numpy(np.load(folder / f"rows_{split}.npy"))
    d = rows.shape[1] - 2
    return rows[:, :d], rows[:, d].long(), rows[:, d + 1].long()


# ---------------------------------------------------------------------------- training


def _train_config(cfg: AlignSAERunConfig, n_rows: int, epochs: int, normalize: bool
                  ) -> TrainConfig:
    steps = max(1, epochs * n_rows // cfg.batch_size)
    return TrainConfig(total_tokens=steps * cfg.batch_size, batch_size=cfg.batch_size, lr=cfg.lr,
                       lr_warmup_steps=0, lr_decay_start=1.0, seed=cfg.seed,
                       normalize_inputs=normalize, geometric_median_init=normalize,
                       init_samples=min(n_rows, 16384), dead_after_tokens=min(10 * n_rows, steps * cfg.batch_size),
                       checkpoint_every=max(200, steps // 4), log_every=max(1, steps // 20),
                       log_proxies=False, measure_peak=False, progress=cfg.progress)


def _fit(name: str, sae_cfg: Any, train: TrainConfig, data: Path, out: Path) -> SAE:
    final = out / "final" / name
    if (final / "cfg.json").exists():
        return load(final)
    source = ArrayFileSource(data, seed=train.seed)
    with warnings.catch_warnings():
        # the paper's schedule: many epochs over a fixed question set (scored on held-out
        # phrasings), which the trainer would otherwise warn about at every stage
        warnings.filterwarnings("ignore", message=".*times over.*")
        return Trainer({name: sae_cfg}, train, source, out).fit()[name]


def train_layer(model_dir: Path, model: nn.Module, lm_cfg: BioLMConfig, cfg: AlignSAERunConfig,
                layer: int) -> dict[str, SAE]:
    """Collect, then train stage 1, stage 2 and the baseline for one layer (each resumable)."""
    folder = model_dir / f"layer{layer}"
    data = folder / "data"
    collect(model, lm_cfg, layer, data)
    n_rows = int(np.load(data / "rows_train.npy", mmap_mode="r").shape[0])
    stage1_cfg = AlignSAEConfig(d_sae=cfg.d_sae, stage=1, value_vocab=len(VOCAB),
                                hook_name=f"transformer.h.{layer}", model_name="biography")
    _say(cfg, f"layer {layer}: AlignSAE stage 1 ({cfg.stage1_epochs} epochs)")
    stage1 = _fit("alignsae", stage1_cfg,
                  _train_config(cfg, n_rows, cfg.stage1_epochs, normalize=False),
                  data / "rows_train.npy", folder / "stage1")
    stage2_cfg = dataclasses.replace(stage1_cfg, stage=2,
                                     init_from=str((folder / "stage1" / "final" / "alignsae")
                                                   .resolve()))
    _say(cfg, f"layer {layer}: AlignSAE stage 2 ({cfg.stage2_epochs} epochs)")
    stage2 = _fit("alignsae", stage2_cfg,
                  _train_config(cfg, n_rows, cfg.stage2_epochs, normalize=False),
                  data / "rows_train.npy", folder / "stage2")
    base_cfg = config_from_dict({"architecture": cfg.baseline, "d_sae": cfg.d_sae,
                                 "hook_name": f"transformer.h.{layer}",
                                 **({"l1_coefficient": cfg.baseline_l1}
                                    if cfg.baseline == "relu" else {})})
    epochs = cfg.stage1_epochs + cfg.stage2_epochs
    _say(cfg, f"layer {layer}: plain {cfg.baseline} SAE baseline ({epochs} epochs)")
    baseline = _fit(cfg.baseline, base_cfg, _train_config(cfg, n_rows, epochs, normalize=True),
                    data / "acts_train.npy", folder / "baseline")
    return {"stage1": stage1, "stage2": stage2, "baseline": baseline}


def run_training(cfg: AlignSAERunConfig, out: str | Path) -> Path:
    """Train every layer of ``cfg`` into ``out`` (a rerun resumes where it stopped)."""
    cfg.validate()
    out = Path(out)
    model, lm_cfg = load_bio_lm(cfg.model or None)
    n_layer = n_layers(model)
    bad = [layer for layer in cfg.layers if not 0 <= layer < n_layer]
    if bad:
        raise ConfigError(f"layers {bad} do not exist: the model has blocks 0..{n_layer - 1}")
    _claim_folder(out, cfg)
    for layer in cfg.layers:
        train_layer(out, model, lm_cfg, cfg, layer)
    return out


def load_layer(out: str | Path, cfg: AlignSAERunConfig, layer: int
               ) -> tuple[AlignSAE, AlignSAE, SAE]:
    """(stage-1 AlignSAE, stage-2 AlignSAE, baseline) of one trained layer."""
    folder = Path(out) / f"layer{layer}"
    paths = [folder / "stage1" / "final" / "alignsae", folder / "stage2" / "final" / "alignsae",
             folder / "baseline" / "final" / cfg.baseline]
    missing = [str(p) for p in paths if not (p / "cfg.json").exists()]
    if missing:
        raise FileNotFoundError(f"layer {layer} is not fully trained ({missing[0]} missing); "
                                "rerun `saelab alignsae train` with the same --out to finish")
    stage1, stage2, baseline = (load(p) for p in paths)
    assert isinstance(stage1, AlignSAE) and isinstance(stage2, AlignSAE)
    return stage1, stage2, baseline


def _say(cfg: AlignSAERunConfig, text: str) -> None:
    if cfg.progress:
        print(f"alignsae: {text}", file=sys.stderr, flush=True)
