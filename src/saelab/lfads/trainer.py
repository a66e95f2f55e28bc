"""Training LFADS with the trainer's habits: typed config, a locked run folder, checkpoints
with checksums written atomically, exact resume (weights, Adam state, RNG, step), metrics in
``metrics.jsonl`` and a progress line with trials/s and ETA.

One step: pick a batch of training trials; hide the sample-validation entries (fixed mask);
apply coordinated dropout; run the model; loss = Poisson NLL (gradient only through the
entries CD dropped, never through SV entries) + ramped KL + ramped L2 on recurrent weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from saelab.config import ConfigError, from_dict, to_dict
from saelab.integrity import (
    CheckpointError,
    read_bounded,
    save_tensors,
    verify_checksums,
    write_checksums,
)
from saelab.io import atomic_write_dir, atomic_write_json
from saelab.lfads.config import LFADSModelConfig, LFADSTrainConfig
from saelab.lfads.data import SpikeData
from saelab.lfads.losses import (
    apply_sample_validation,
    coordinated_dropout,
    poisson_nll,
    sample_validation_mask,
    stop_gradient_where,
)
from saelab.lfads.metrics import rate_r2
from saelab.lfads.model import LFADS
from saelab.lock import folder_lock
from saelab.training.checkpoint import (
    STATE_FILE,
    list_checkpoints,
    optimizer_from_flat,
    optimizer_to_flat,
    set_aside,
)
from saelab.training.logging import MetricsLog, Progress
from saelab.training.run_folder import (
    RUN_FILE,
    check_output_folder,
    remove_stale_temporaries,
    trim_metrics,
)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "lfads.json"
#: training options that do not change the result (may differ on resume)
NOT_RESULT_AFFECTING = ("steps", "eval_every", "checkpoint_every", "keep_checkpoints", "threads",
                        "progress")


def data_fingerprint(data: SpikeData) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(data.spikes).tobytes())
    return f"{data.spikes.shape}:{digest.hexdigest()[:16]}"


class LFADSTrainer:
    def __init__(self, data: SpikeData, model_cfg: LFADSModelConfig, train_cfg: LFADSTrainConfig,
                 out: str | Path, *, config_may_change: bool = False) -> None:
        """``config_may_change``: resume even if the training options changed (PBT trials,
        whose options are mutated at each exploit)."""
        train_cfg.validate()
        if model_cfg.n_neurons == 0:
            model_cfg.n_neurons = data.n_in
            model_cfg.n_heldout = data.n_heldout
        if (model_cfg.n_neurons, model_cfg.n_heldout) != (data.n_in, data.n_heldout):
            raise ConfigError(f"the model expects {model_cfg.n_neurons} input and "
                              f"{model_cfg.n_heldout} held-out neurons, the data has "
                              f"{data.n_in} and {data.n_heldout}; set model.n_neurons = 0")
        if len(data.spikes) < 2:
            raise ConfigError("LFADS needs at least 2 training trials (one for validation)")
        self.data, self.model_cfg, self.cfg = data, model_cfg, train_cfg
        self.out = Path(out)
        self.config_may_change = config_may_change
        if train_cfg.threads:
            torch.set_num_threads(train_cfg.threads)
        torch.manual_seed(train_cfg.seed)
        self.model = LFADS(model_cfg)
        n = len(data.spikes)
        perm = np.random.default_rng(train_cfg.seed).permutation(n)
        n_valid = min(n - 1, max(1, round(train_cfg.valid_share * n)))
        self.valid_idx = torch.from_numpy(np.sort(perm[:n_valid]))
        self.train_idx = torch.from_numpy(np.sort(perm[n_valid:]))
        self.spikes = torch.from_numpy(data.spikes.astype(np.float32))
        self.n_in = data.n_in
        self.sv_mask = sample_validation_mask((n, data.spikes.shape[1], data.n_in),
                                              train_cfg.sv_rate, train_cfg.seed + 1)
        self.model.init_readout_bias(self.spikes[self.train_idx].mean((0, 1)))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=train_cfg.lr)
        self.step = 0
        self.last_metrics: dict[str, float] = {}

    # ---- one optimiser step -------------------------------------------------------------
    def loss(self, idx: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        x = self.spikes[idx]
        sv = self.sv_mask[idx]
        inp = apply_sample_validation(x[..., : self.n_in], sv, cfg.sv_rate)
        inp, grad_mask = coordinated_dropout(inp, cfg.cd_rate)
        out = self.model(inp, sample=True)
        nll = poisson_nll(out.log_rates, x)
        held_in = stop_gradient_where(nll[..., : self.n_in], grad_mask) * (1.0 - sv)
        recon = (held_in.sum() + nll[..., self.n_in:].sum()) / x.numel()
        kl = (out.ic_kl + out.co_kl).mean() / (x.shape[1] * x.shape[2])
        l2 = self.model.l2_penalty()
        total = recon + cfg.kl_scale(step) * kl + cfg.l2_scale(step) * l2
        return total, {"loss": total.item(), "recon": recon.item(), "kl": kl.item(),
                       "l2": l2.item()}

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        self.model.set_dropout(cfg.dropout)
        for group in self.opt.param_groups:  # PBT may have changed lr since the last step
            group["lr"] = cfg.lr
        order = torch.randperm(len(self.train_idx))[: cfg.batch_size]
        total, record = self.loss(self.train_idx[order], self.step)
        self.opt.zero_grad(set_to_none=True)
        if math.isfinite(record["loss"]):
            total.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
        else:  # skip the update: one bad batch must not poison the weights
            record["skipped_nonfinite"] = 1.0
        self.step += 1
        return record

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """On the validation trials (SV entries hidden, no CD, posterior means):
        ``valid_recon`` = NLL per entry of the entries the model saw (ordinary validation
        loss); ``valid_sv`` = NLL per entry of the sample-validation entries (the AutoLFADS
        selection metric); ``valid_heldout`` = NLL per entry of held-out neurons; and, when
        the data has true rates, ``valid_rate_r2`` (diagnostic only, never used to select)."""
        self.model.eval()
        x = self.spikes[self.valid_idx]
        sv = self.sv_mask[self.valid_idx]
        out = self.model(apply_sample_validation(x[..., : self.n_in], sv, self.cfg.sv_rate),
                         sample=False)
        nll = poisson_nll(out.log_rates, x)
        held_in = nll[..., : self.n_in]
        record = {"valid_recon": float((held_in * (1 - sv)).sum() / (1 - sv).sum())}
        record["valid_sv"] = (float((held_in * sv).sum() / sv.sum()) if float(sv.sum()) > 0
                              else float("nan"))
        if self.data.n_heldout:
            record["valid_heldout"] = float(nll[..., self.n_in:].mean())
        if self.data.rates is not None:
            true = self.data.rates[self.valid_idx.numpy()]
            record["valid_rate_r2"] = rate_r2(torch.exp(out.log_rates).numpy(), true)
        return record

    # ---- the run folder -------------------------------------------------------------------
    def run_doc(self) -> dict[str, Any]:
        return {"model": to_dict(self.model_cfg), "train": to_dict(self.cfg),
                "data": data_fingerprint(self.data), "data_meta": self.data.meta}

    def _check_run_doc(self) -> None:
        path = self.out / RUN_FILE
        if not path.exists() or self.config_may_change:
            return
        saved = json.loads(read_bounded(path))
        now = json.loads(json.dumps(self.run_doc()))
        for doc in (saved, now):
            doc.pop("data_meta", None)
            for key in NOT_RESULT_AFFECTING:
                doc.get("train", {}).pop(key, None)
        if saved != now:
            diff = sorted(
                f"{section}.{key}" if isinstance(saved.get(section), dict) else section
                for section in set(saved) | set(now) if saved.get(section) != now.get(section)
                for key in (set(saved.get(section) or {}) | set(now.get(section) or {})
                            if isinstance(saved.get(section), dict) else [""])
                if not isinstance(saved.get(section), dict)
                or saved[section].get(key) != (now.get(section) or {}).get(key))
            raise ConfigError(f"{self.out} holds an LFADS run with different {diff}; rerun with "
                              "the same data and options to resume it, or choose a new --out")

    def fit(self, until_step: int | None = None) -> dict[str, float]:
        """Train (resuming from the newest good checkpoint) to ``until_step`` or the end."""
        check_output_folder(self.out)
        with folder_lock(self.out, "LFADS training run"):
            check_output_folder(self.out)
            remove_stale_temporaries(self.out)
            self._check_run_doc()
            self._resume()
            trim_metrics(self.out, self.step)
            atomic_write_json(self.out / RUN_FILE, self.run_doc())
            return self._fit_locked(min(until_step or self.cfg.steps, self.cfg.steps))

    def _fit_locked(self, target: int) -> dict[str, float]:
        cfg = self.cfg
        log = MetricsLog(self.out)
        progress = Progress(cfg.steps, cfg.batch_size, start_step=self.step,
                            enabled=cfg.progress and target > self.step, unit="trials")
        try:
            while self.step < target:
                record = self.train_step()
                if self.step % cfg.eval_every == 0 or self.step == target:
                    record.update(self.validate())
                    self.last_metrics = {"step": float(self.step), **record}
                    log.write({"step": self.step, **record})
                    progress.update(self.step, f"| valid_sv {record['valid_sv']:.4f}")
                else:
                    progress.update(self.step, f"| loss {record['loss']:.4f}")
                if ((cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                        or self.step == target):
                    self.checkpoint()
            if self.step >= cfg.steps:
                save_model(self.model, self.out / "final")
        finally:
            progress.close()
            log.close()
        return self.last_metrics

    def checkpoint(self) -> Path:
        root = self.out / "checkpoints"
        path = root / f"step_{self.step:09d}"

        def fill(tmp: Path) -> None:
            save_tensors({k: v.detach().contiguous() for k, v in self.model.state_dict().items()},
                         tmp / MODEL_FILE)
            flat, groups = optimizer_to_flat(self.opt)
            save_tensors(flat, tmp / "optim.safetensors")
            save_tensors({"torch_rng": torch.get_rng_state()}, tmp / "rng.safetensors")
            doc = {"step": self.step, "optimizer_param_groups": groups,
                   "last_metrics": self.last_metrics, **self.run_doc()}
            (tmp / STATE_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True))
            write_checksums(tmp)

        atomic_write_dir(path, fill)
        keep = max(1, self.cfg.keep_checkpoints)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _resume(self) -> None:
        for path in reversed(list_checkpoints(self.out / "checkpoints")):
            try:
                self.load_checkpoint(path)
                return
            except CheckpointError as err:
                moved = set_aside(path)
                print(f"skipping a bad checkpoint ({err}); kept it as {moved}", file=sys.stderr)

    def load_checkpoint(self, path: Path) -> None:
        try:
            verify_checksums(path, "checkpoint")
            meta = json.loads(read_bounded(path / STATE_FILE))
            state = load_file(str(path / MODEL_FILE))
            bad = [k for k, t in state.items() if t.is_floating_point()
                   and not bool(torch.isfinite(t).all())]
            if bad:
                raise CheckpointError(f"checkpoint {path} holds non-finite weights {bad}")
            self.model.load_state_dict(state)
            optimizer_from_flat(self.opt, load_file(str(path / "optim.safetensors")),
                                meta["optimizer_param_groups"])
            torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
        except CheckpointError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint {path} is unreadable ({err})") from err
        self.step = int(meta["step"])
        self.last_metrics = meta.get("last_metrics", {})


def save_model(model: LFADS, folder: Path) -> None:
    """``folder/model.safetensors`` + ``lfads.json`` (the model config) + checksums."""
    def fill(tmp: Path) -> None:
        save_tensors({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                     tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(to_dict(model.cfg), indent=2))
        write_checksums(tmp)

    atomic_write_dir(folder, fill)


def load_model(folder: str | Path) -> LFADS:
    """A trained model from a ``final/`` folder (or a checkpoint folder of a run)."""
    folder = Path(folder)
    if (folder / "final" / MODEL_FILE).exists():
        folder = folder / "final"
    if not (folder / MODEL_FILE).exists():
        raise ConfigError(f"{folder} holds no LFADS model ({MODEL_FILE}); give a run folder "
                          "whose training finished, or its final/ folder")
    verify_checksums(folder, "LFADS model")
    if (folder / CONFIG_FILE).exists():
        cfg_dict = json.loads(read_bounded(folder / CONFIG_FILE))
    else:  # a checkpoint folder
        cfg_dict = json.loads(read_bounded(folder / STATE_FILE))["model"]
    model = LFADS(from_dict(LFADSModelConfig, cfg_dict, where="model"))
    model.load_state_dict(load_file(str(folder / MODEL_FILE)))
    model.eval()
    return model
