"""One trainer for every architecture; several SAEs share each batch of the stream."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from saelab.architectures.base import SAE, BatchGroup, LossOutput, SAEConfig, StepContext
from saelab.config import ConfigError, to_dict
from saelab.data.base import ActivationSource, check_finite
from saelab.data.fingerprint import describe_difference
from saelab.data.metadata import with_source_metadata
from saelab.integrity import CheckpointError, read_bounded
from saelab.io import atomic_write_json, save
from saelab.lock import folder_lock
from saelab.metrics.core import explained_variance
from saelab.metrics.proxies import training_proxies
from saelab.ops import native_low_precision_matmul
from saelab.registry import build
from saelab.training.checkpoint import (
    SlotState,
    list_checkpoints,
    read_checkpoint,
    set_aside,
    write_checkpoint,
)
from saelab.training.config import TrainConfig, warn_about_schedule
from saelab.training.device import resolve_device, to_device_ahead
from saelab.training.init import geometric_median, input_scale
from saelab.training.logging import MetricsLog, Progress
from saelab.training.run_folder import (
    RUN_FILE,
    check_output_folder,
    comparable_config,
    remove_stale_temporaries,
    trim_metrics,
)
from saelab.training.throughput import measure_matmul_peak

if TYPE_CHECKING:
    from saelab.distributed import DataParallel


class TrainingError(RuntimeError):
    """Training stopped: non-finite input or loss. The message names the step and the cause."""


class _DenseLayoutAdam(torch.optim.Adam):
    """Adam that hands its kernel each column-major matrix as its contiguous transpose.

    A latents-major W_enc (``saelab.architectures.base.encoder_weight``) is a (d_in, d_sae)
    tensor whose memory is a contiguous (d_sae, d_in) matrix; its gradient and moments share
    that layout (``match_state_layout``). The fused CPU kernel copies such a non-contiguous
    tensor into row-major order first, a strided 200 MB copy at 65,536 × 768 that made W_enc's
    update ~4× slower than W_dec's. Adam is elementwise, so updating the transposed views (the
    same memory, contiguous) is the same arithmetic on the same elements: bit-identical.
    """

    def _init_group(self, group: dict[str, Any], *lists: list[Tensor]) -> Any:
        has_complex = super()._init_group(group, *lists)
        params, grads, exp_avgs, exp_avg_sqs = lists[:4]
        n = len(params)
        if not (len(grads) == len(exp_avgs) == len(exp_avg_sqs) == n):
            return has_complex  # another torch's bookkeeping: leave it alone
        for i in range(n):
            mats = [params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]]
            if all(_transposed_contiguous(t, params[i].stride()) for t in mats):
                params[i], grads[i], exp_avgs[i], exp_avg_sqs[i] = (t.t() for t in mats)
        return has_complex


def _transposed_contiguous(t: Tensor, stride: tuple[int, ...]) -> bool:
    """A column-major matrix (its transpose is contiguous) with exactly the given strides."""
    return (t.dim() == 2 and t.stride() == stride and not t.is_contiguous()
            and t.t().is_contiguous())


def make_adam(params: Any, lr: float, betas: tuple[float, float], eps: float
              ) -> torch.optim.Adam:
    """Adam that updates each parameter in one fused pass where the device has the kernel
    (CPU, CUDA), else with multi-tensor (foreach) kernels: at 65k latents the unfused update
    alone makes ~a dozen passes over each 200 MB weight matrix. Column-major matrices are
    updated through their contiguous transposes (:class:`_DenseLayoutAdam`)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    opt = _DenseLayoutAdam(params, lr=lr, betas=betas, eps=eps, fused=fused or None,
                           foreach=None if fused else True)
    opt.register_load_state_dict_post_hook(match_state_layout)
    return opt


@torch.no_grad()
def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every loaded state tensor its parameter's memory layout.

    ``load_state_dict`` keeps the layout the state was saved in (checkpoints hold contiguous
    tensors), but the fused Adam kernel walks parameter, gradient and moments as flat memory:
    a latents-major W_enc with row-major moments would be updated with the wrong moments,
    silently."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if (isinstance(value, torch.Tensor) and value.shape == p.shape
                        and value.stride() != p.stride()):
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


@torch.no_grad()
def remove_parallel_gradient(W_dec_MD: torch.nn.Parameter) -> None:
    """Drop the gradient component along each decoder row, g ← g − (g·w / w·w)·w, so the step
    stays tangent to the unit sphere and the renormalisation after it changes little.

    One row-wise dot product (einsum → batched GEMV, ~2.5× faster on CPU than ``(g*w).sum``),
    one norm and one fused multiply-add: no (M, D) temporaries.
    """
    grad = W_dec_MD.grad
    if grad is None:
        return
    norm_sq_M = torch.linalg.vector_norm(W_dec_MD, dim=1).square_().clamp_min_(1e-24)
    coef_M = torch.einsum("md,md->m", grad, W_dec_MD).div_(norm_sq_M)
    grad.addcmul_(W_dec_MD, coef_M.unsqueeze(1), value=-1.0)


@torch.no_grad()
def normalise_decoder(W_dec_MD: torch.nn.Parameter) -> None:
    W_dec_MD.div_(torch.linalg.vector_norm(W_dec_MD, dim=1, keepdim=True).clamp_min(1e-12))


class Trainer:
    """Train named SAEs on one activation stream, resumably.

    ``out_dir`` receives ``run.json``, ``metrics.jsonl``, ``checkpoints/`` and, at the end,
    ``final/<name>/`` (cfg.json + sae.safetensors, input normalisation folded in).

    With ``dist`` (see :mod:`saelab.distributed`) this process is one rank of a data-parallel
    run: it trains on its shard of each batch and only rank 0 writes files. With
    ``train.shard_latents`` as well, each rank instead reads the whole batch and holds a slice
    of every SAE's latents (:mod:`saelab.distributed.latent_sharded`); checkpoints and the final
    SAEs are gathered into the ordinary single-process format.
    """

    def __init__(self, sae_configs: dict[str, SAEConfig], train: TrainConfig,
                 source: ActivationSource, out_dir: str | Path,
                 run_config: dict[str, Any] | None = None,
                 dist: DataParallel | None = None) -> None:
        if not sae_configs:
            raise ConfigError("nothing to train: give at least one SAE config")
        train.validate()
        self.train_cfg = train
        self.source = source
        self.dist = dist
        self.shard_latents = train.shard_latents and dist is not None
        if train.shard_latents and dist is None:
            warnings.warn("shard_latents has no effect outside torchrun (one process holds "
                          "every latent)", stacklevel=2)
        # latent sharding: every rank holds the whole batch, so batch statistics are local
        self.batch_group: BatchGroup = (dist if dist is not None and not self.shard_latents
                                        else BatchGroup())
        self.device = resolve_device(train.device, dist.local_rank if dist is not None else 0)
        if train.autocast == "bf16" and not native_low_precision_matmul(self.device):
            warnings.warn(f"autocast=bf16 on {self.device}: this device has no native bf16 "
                          "matrix multiply, so training runs slower than float32, not faster "
                          "(bf16 pays on GPUs and CPUs with AVX512-BF16/AMX)", stacklevel=2)
        self.local_batch_size = train.batch_size
        if dist is not None and not self.shard_latents:
            from saelab.distributed import RankShard

            self.local_batch_size = RankShard(source, dist.rank, dist.world_size).local_batch_size(
                train.batch_size)
        self.out_dir = Path(out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.saes: dict[str, SAE] = {}
        self.slots: dict[str, SlotState] = {}
        for name, cfg in sae_configs.items():
            if not name or "/" in name or name.startswith("."):
                raise ConfigError(f"bad SAE name {name!r}: use a plain folder name")
            sae = build(with_source_metadata(cfg, source).resolved(source.d_in))
            if self.shard_latents:
                sae = self._shard(name, sae)
            self.saes[name] = sae = sae.to(self.device)
            width = sae.cfg.d_sae // (dist.world_size if dist is not None and self.shard_latents
                                      else 1)  # this rank's latents
            self.slots[name] = SlotState(self._make_optimizer(sae, cfg),
                                         torch.zeros(width, dtype=torch.int64, device=self.device))
        self.run_config = run_config or {
            "train": to_dict(train),
            "saes": {n: {"architecture": s.name, **to_dict(s.cfg)} for n, s in self.saes.items()},
        }
        self.step = 0
        self.scale = 1.0
        self.data_fingerprint: dict[str, Any] | None = None
        self.last_metrics: dict[str, dict[str, Any]] = {}  # newest logged record per SAE

    def _shard(self, name: str, sae: SAE) -> SAE:
        """This rank's slice of ``sae`` (latent sharding)."""
        from saelab.distributed.latent_sharded import ShardedTopK, check_shardable

        assert self.dist is not None
        if self.train_cfg.grad_clip > 0:
            raise ConfigError("--shard-latents does not support grad_clip (the norm would be "
                              "per shard); set grad_clip = 0")
        check_shardable(name, sae.cfg, self.dist.world_size)
        # duck-typed: the trainer uses only what SAE and ShardedTopK share
        return cast(SAE, ShardedTopK.from_full(sae, self.dist.rank, self.dist.world_size))

    def _make_optimizer(self, sae: torch.nn.Module, cfg: SAEConfig) -> torch.optim.Adam:
        train = self.train_cfg
        return make_adam(
            sae.parameters(),
            lr=train.lr if cfg.lr is None else cfg.lr,
            betas=(train.adam_beta1 if cfg.adam_beta1 is None else cfg.adam_beta1,
                   train.adam_beta2),
            eps=train.adam_eps,
        )

    def _whole(self, with_state: bool = True) -> tuple[dict[str, SAE], dict[str, SlotState]]:
        """The SAEs and (``with_state``) their training state as one process holds them:
        gathered from the slices under latent sharding (a collective, every rank calls it)."""
        if not self.shard_latents:
            return self.saes, self.slots
        from saelab.distributed.latent_sharded import ShardedTopK, gather_slot

        saes: dict[str, SAE] = {}
        slots: dict[str, SlotState] = {}
        for name, sae in self.saes.items():
            assert isinstance(sae, ShardedTopK)
            saes[name] = full = sae.gather_full()
            if with_state:
                slots[name] = gather_slot(sae, self.slots[name], full,
                                          self._make_optimizer(full, full.cfg))
        return saes, slots

    def _blank_whole(self) -> tuple[dict[str, SAE], dict[str, SlotState]]:
        """Unsharded SAEs and training state on the CPU, to initialise or resume into."""
        saes = {name: build(sae.cfg) for name, sae in self.saes.items()}
        slots = {name: SlotState(self._make_optimizer(sae, sae.cfg),
                                 torch.zeros(sae.cfg.d_sae, dtype=torch.int64))
                 for name, sae in saes.items()}
        return saes, slots

    def _load_slices(self, saes: dict[str, SAE], slots: dict[str, SlotState] | None) -> None:
        from saelab.distributed.latent_sharded import ShardedTopK, load_slot_slice

        for name, sae in self.saes.items():
            assert isinstance(sae, ShardedTopK)
            if slots is None:
                sae.load_slice(saes[name])
            else:
                load_slot_slice(sae, self.slots[name], saes[name], slots[name])

    # ------------------------------------------------------------------ set-up and resume

    def initialise(self) -> None:
        """Data-dependent set-up: input scale, seeded weights, geometric-median b_dec."""
        cfg = self.train_cfg
        sample = self.source.sample(cfg.init_samples)
        check_finite(sample, "initialisation sample")
        self.scale = input_scale(sample) if cfg.normalize_inputs else 1.0
        sample = sample * self.scale
        median = geometric_median(sample) if cfg.geometric_median_init else None
        # latent sharding initialises the whole SAEs, then each rank keeps its slice, so the
        # weights equal an unsharded run's
        saes = self._blank_whole()[0] if self.shard_latents else self.saes
        for i, sae in enumerate(saes.values()):
            sae.reset_parameters(torch.Generator().manual_seed(cfg.seed * 1000 + i))
            if median is not None:
                sae.init_decoder_bias(median.to(sae.b_dec.device))
        if self.dist is not None:  # one initialisation for all ranks: rank 0's
            for sae in saes.values():
                self.dist.broadcast_module(sae)
            self.scale = self.dist.broadcast_float(self.scale)
        if self.shard_latents:
            self._load_slices(saes, None)

    def _check_run_config(self) -> None:
        path = self.out_dir / RUN_FILE
        if not path.exists():
            return
        try:
            saved = comparable_config(json.loads(read_bounded(path)))
        except (ValueError, OSError) as err:
            raise ConfigError(f"{path} is unreadable ({err}); restore it, or use a new output "
                              "folder") from err
        current = comparable_config(self.run_config)
        if saved != current:
            diffs = _diff_keys(saved, current)
            raise ConfigError(
                f"{self.out_dir} holds a run with a different config (differs at {diffs[:8]}); "
                "resume with the same config, or use a new output folder"
            )

    def _resume(self, allow_data_change: bool) -> None:
        """Restore the newest checkpoint that verifies; set aside corrupt ones with a warning."""
        saes, slots = self._blank_whole() if self.shard_latents else (self.saes, self.slots)
        for path in reversed(list_checkpoints(self.ckpt_root)):
            try:
                meta = read_checkpoint(path, saes, slots)
            except CheckpointError as err:
                if self.is_main:  # one rank renames; the others just skip it too
                    moved = set_aside(path)
                    warnings.warn(f"{err}; set it aside as {moved.name} and trying the "
                                  "previous checkpoint", stacklevel=3)
                continue
            self._check_data(meta.get("data_fingerprint"), path, allow_data_change)
            if self.shard_latents:
                self._load_slices(saes, slots)
            self.step = int(meta["step"])
            self.scale = float(meta["input_scale"])
            return
        raise CheckpointError(f"no checkpoint in {self.ckpt_root} passed its integrity check "
                              "(all were set aside as corrupt_step_*); rerun to train from the "
                              "start in this folder, or use a new output folder")

    def _check_data(self, saved: dict[str, Any] | None, path: Path,
                    allow_data_change: bool) -> None:
        current = self.data_fingerprint
        if saved is None or current is None or saved == current or allow_data_change:
            return
        raise ConfigError(
            f"the training data changed since checkpoint {path} was written "
            f"({describe_difference(saved, current)}); resume on the same data, or pass "
            "--allow-data-change (allow_data_change=True) to continue on the new data")

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = True, allow_data_change: bool = False,
            until_step: int | None = None) -> dict[str, SAE]:
        """Train to ``total_tokens`` (resuming from the newest good checkpoint if there is one)
        and return the SAEs, normalisation folded in and saved under ``final/``.

        Holds the output folder's lock throughout (rank 0 of a distributed run): a second run on
        the same folder fails. ``until_step`` pauses earlier, after a checkpoint at that step
        (for schedulers that train in slices, such as population-based training); the live
        SAEs are returned."""
        if not self.is_main:  # rank 0 holds the lock and tidies the folder for all ranks
            return self._fit_locked(resume, allow_data_change, until_step)
        check_output_folder(self.out_dir)
        with folder_lock(self.out_dir, "training run"):
            check_output_folder(self.out_dir)  # again: it may have changed before we held the lock
            remove_stale_temporaries(self.out_dir)
            return self._fit_locked(resume, allow_data_change, until_step)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (always, unless a non-zero rank)."""
        return self.dist is None or self.dist.is_main

    def _fit_locked(self, resume: bool, allow_data_change: bool,
                    until_step: int | None) -> dict[str, SAE]:
        cfg = self.train_cfg
        self._check_source_fits()
        warn_about_schedule(cfg, getattr(self.source, "n_rows", None))
        fingerprint = getattr(self.source, "fingerprint", None)
        self.data_fingerprint = fingerprint() if callable(fingerprint) else None
        if list_checkpoints(self.ckpt_root):
            if not resume:
                raise ConfigError(f"{self.ckpt_root} already has checkpoints; resume, or use a "
                                  "new output folder")
            self._check_run_config()
            self._resume(allow_data_change)
        else:
            self.initialise()
        main = self.is_main
        if main:
            trim_metrics(self.out_dir, self.step)
            atomic_write_json(self.out_dir / RUN_FILE, self.run_config)
        log = MetricsLog(self.out_dir, cfg.tensorboard, cfg.wandb_project, self.run_config,
                         enabled=main)
        total = cfg.total_steps
        self.peak_flops = measure_matmul_peak(device=str(self.device)) if cfg.measure_peak else 0.0
        progress = Progress(total, cfg.batch_size, self.step, cfg.progress and main,
                            flops_per_token=sum(s.matmul_flops_per_token() for s in self.saes.values()),
                            peak_flops=self.peak_flops)
        for sae in self.saes.values():
            sae.train()
        try:
            batches = to_device_ahead(self._batches(cfg.batch_size, start_batch=self.step),
                                      self.device)
            end = total if until_step is None else min(total, until_step)
            while self.step < end:
                batch = next(batches)
                acts, outputs = self.train_step(batch)
                if self.step % cfg.log_every == 0 or self.step == end:
                    self._log(log, acts, outputs, progress)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.checkpoint()
                progress.update(self.step)
            progress.update(self.step, force=True)
        except Exception as err:
            lost = self._lost_rank(err)
            if lost is None:
                raise
            raise lost from err
        finally:
            progress.close()
            log.close()
        if not cfg.checkpoint_every or self.step % cfg.checkpoint_every != 0:
            self.checkpoint()
        return self.finalise() if self.step >= total else self.saes

    def _batches(self, batch_size: int, start_batch: int) -> Iterator[Tensor]:
        """This process's batches: the whole batch, or this rank's slice of it (read from
        ``self.source`` at the time of the call)."""
        if self.dist is None or self.shard_latents:
            return self.source.batches(batch_size, start_batch=start_batch)
        from saelab.distributed import RankShard

        shard = RankShard(self.source, self.dist.rank, self.dist.world_size)
        return shard.batches(batch_size, start_batch=start_batch)

    def train_step(self, batch_BD: Tensor) -> tuple[Tensor, dict[str, LossOutput]]:
        """One optimiser step of every SAE on one raw batch; returns the scaled batch and the
        losses. Checks the batch's shape and values first."""
        if batch_BD.shape != (self.local_batch_size, self.source.d_in):
            raise TrainingError(f"step {self.step}: batch has shape {tuple(batch_BD.shape)}, "
                                f"expected ({self.local_batch_size}, {self.source.d_in})")
        try:
            check_finite(batch_BD, f"step {self.step}: input batch")
        except ValueError as err:
            raise TrainingError(f"{err}. {self._last_good()}") from err
        acts = batch_BD * self.scale if self.scale != 1.0 else batch_BD
        outputs = {name: self._sae_step(name, acts) for name in self.saes}
        self.step += 1
        return acts, outputs

    def _sae_step(self, name: str, acts_BD: Tensor) -> LossOutput:
        sae, slot, cfg = self.saes[name], self.slots[name], self.train_cfg
        dead = slot.tokens_since_fired_M >= cfg.dead_after_tokens
        ctx = StepContext(self.step, cfg.total_steps, cfg.sparsity_scale(self.step), dead,
                          self.batch_group)
        slot.optimizer.zero_grad(set_to_none=True)
        # bf16 autocast covers the forward only; parameters, gradients and Adam stay fp32
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=cfg.autocast == "bf16"):
            out = sae.training_loss(acts_BD, ctx)
        if not torch.isfinite(out.total):
            parts = {k: float(v.detach()) for k, v in out.parts.items()}
            raise TrainingError(
                f"step {self.step}: loss of SAE {name!r} is {float(out.total.detach())} (parts {parts}); "
                f"lower the learning rate or check the data. {self._last_good()}"
            )
        out.total.backward()
        if self.dist is not None and not self.shard_latents:
            self.dist.average_gradients(sae.parameters())
        if sae.unit_norm_decoder:
            remove_parallel_gradient(sae.W_dec)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        base_lr = cfg.lr if sae.cfg.lr is None else sae.cfg.lr
        for group in slot.optimizer.param_groups:
            group["lr"] = base_lr * cfg.lr_scale(self.step)
        slot.optimizer.step()
        if sae.unit_norm_decoder:
            normalise_decoder(sae.W_dec)
        # (latent sharding: the mask covers this rank's latents, complete for the whole batch)
        fired = (out.fired_M if self.dist is None or self.shard_latents
                 else self.dist.any(out.fired_M))
        slot.tokens_since_fired_M += cfg.batch_size  # rows of the whole (global) batch
        slot.tokens_since_fired_M[fired] = 0
        return out

    def _lost_rank(self, err: Exception) -> TrainingError | None:
        """A clear, resumable error when a collective failed because another rank is gone."""
        from saelab.distributed import is_comm_error

        if self.dist is None or isinstance(err, TrainingError) or not is_comm_error(err):
            return None
        return TrainingError(
            f"rank {self.dist.rank} of {self.dist.world_size}: another rank died or stopped "
            f"answering during step {self.step + 1} ({str(err).splitlines()[0][:200]}). "
            f"{self._last_good()} Rerun the same command (on any number of ranks) to resume.")

    def _last_good(self) -> str:
        ckpts = list_checkpoints(self.ckpt_root)
        if ckpts:
            return f"The last good checkpoint is kept at {ckpts[-1]}."
        return "No checkpoint had been written yet."

    def _log(self, log: MetricsLog, acts: Tensor, outputs: dict[str, LossOutput],
             progress: Progress) -> None:
        tps = progress.tokens_per_second(self.step)
        flops = sum(sae.matmul_flops_per_token() for sae in self.saes.values()) * tps
        for name, out in outputs.items():
            slot = self.slots[name]
            record: dict[str, Any] = {
                "step": self.step,
                "tokens": self.step * self.train_cfg.batch_size,
                "sae": name,
                "loss": float(out.total.detach()),
                "l0": float(out.l0),
                "dead_share": float((slot.tokens_since_fired_M >= self.train_cfg.dead_after_tokens)
                                    .float().mean()),
                "lr": slot.optimizer.param_groups[0]["lr"],
                "tokens_per_s": tps,
                "matmul_flops_per_s": flops,
                "matmul_peak_share": flops / self.peak_flops if self.peak_flops else float("nan"),
                "time": time.time(),
            }
            record.update({k: float(v.detach()) for k, v in out.parts.items()})
            record.update(out.extras)
            if out.recon_BD is not None:
                record["explained_variance"] = explained_variance(acts, out.recon_BD)
                # the evaluators' MSE: per element, in the data's own (unscaled) units; the loss
                # part "mse" is summed over the width on inputs scaled to E‖x‖² = d_in
                err = (acts - out.recon_BD).pow(2).mean() / (self.scale ** 2)
                record["mse_per_element"] = float(err)
            if self.train_cfg.log_proxies and not self.shard_latents:
                sae = self.saes[name]  # proxies read the decoder against its target (a transcoder's output)
                record.update(training_proxies(sae, sae.split_data(acts)[1]))
            log.write(record)
            self.last_metrics[name] = record

    # ------------------------------------------------------------------ outputs

    def _check_source_fits(self) -> None:
        n_rows = getattr(self.source, "n_rows", None)
        if n_rows is not None and self.train_cfg.batch_size > n_rows:
            raise ConfigError(f"the data has {n_rows} rows, fewer than one batch "
                              f"({self.train_cfg.batch_size}); lower the batch size or use more "
                              "data")

    def checkpoint(self) -> Path:
        """Write a resumable checkpoint (rank 0 only; the other ranks wait for it)."""
        saes, slots = self._whole()
        bad = [name for name, sae in saes.items()
               if not all(bool(torch.isfinite(p).all()) for p in sae.parameters())]
        if bad:
            raise TrainingError(f"step {self.step}: SAE(s) {bad} have non-finite weights; not "
                                f"writing a checkpoint. {self._last_good()}")
        meta = {"input_scale": self.scale, "tokens": self.step * self.train_cfg.batch_size,
                "data_fingerprint": self.data_fingerprint}
        path = self.ckpt_root / f"step_{self.step:09d}"
        if self.is_main:
            path = write_checkpoint(self.ckpt_root, self.step, meta, saes, slots,
                                    self.train_cfg.keep_checkpoints)
        if self.dist is not None:
            self.dist.barrier()
        return path

    def finalise(self) -> dict[str, SAE]:
        """Fold the input scale into copies of the SAEs and save them under final/."""
        final: dict[str, SAE] = {}
        for name, sae in self._whole(with_state=False)[0].items():
            out = build(dataclasses.replace(sae.cfg))
            out.load_state_dict(sae.state_dict())
            if self.scale != 1.0:
                out.fold_input_scale(self.scale)
            out.eval()
            if self.dist is None or self.dist.is_main:
                save(out, self.out_dir / "final" / name)
            final[name] = out
        return final


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "(root)"]
