"""Process entry points for the torch.distributed tests (spawned, so they live in a module)."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from saelab.data.arrays import ArrayFileSource
from saelab.registry import config_from_dict
from saelab.training import TrainConfig, Trainer

ARCHS = ("topk", "batchtopk", "jumprelu", "gated")
D_IN, D_SAE = 12, 48


def sae_options(name: str) -> dict[str, Any]:
    opts: dict[str, Any] = {"architecture": name, "d_sae": D_SAE}
    if name in ("topk", "batchtopk"):
        opts.update(k=3, aux_coefficient=0.5)
    if name == "batchtopk":
        opts["threshold_start_step"] = 0
    return opts


def make_data(path: Path, rows: int = 512, seed: int = 0) -> Path:
    gen = np.random.default_rng(seed)
    feats = gen.normal(size=(40, D_IN))
    codes = gen.random((rows, 40)) * (gen.random((rows, 40)) > 0.9)
    np.save(path, (codes @ feats + 0.05 * gen.normal(size=(rows, D_IN))).astype(np.float32))
    return path


def train_config(**over: Any) -> TrainConfig:
    base: dict[str, Any] = dict(total_tokens=64 * 12, batch_size=64, lr=3e-3, lr_warmup_steps=0,
                                lr_decay_start=1.0, dead_after_tokens=64, init_samples=256,
                                checkpoint_every=4, keep_checkpoints=5, log_every=1,
                                progress=False, measure_peak=False)
    base.update(over)
    return TrainConfig(**base)


def trainer(out: Path, data: Path, dist_group: Any = None, archs: tuple[str, ...] = ARCHS,
            **over: Any) -> Trainer:
    saes = {name: config_from_dict(sae_options(name)) for name in archs}
    return Trainer(saes, train_config(**over), ArrayFileSource(data, seed=0), out, dist=dist_group)


def final_weights(out: Path, archs: tuple[str, ...] = ARCHS) -> dict[str, dict[str, Tensor]]:
    from safetensors.torch import load_file

    return {name: load_file(str(out / "final" / name / "sae.safetensors")) for name in archs}


class DyingSource(ArrayFileSource):
    """This rank's process exits abruptly when batch ``die_at`` is requested (a crashed rank)."""

    die_at = -1

    def batches(self, batch_size: int, start_batch: int = 0) -> Iterator[Tensor]:
        for i, batch in enumerate(super().batches(batch_size, start_batch), start_batch):
            if i == self.die_at:
                os._exit(3)
            yield batch


def data_parallel_worker(rank: int, world: int, rdzv: str, out: str, data: str,
                         result: str, die_rank: int = -1, die_at: int = -1,
                         archs: tuple[str, ...] = ARCHS, **over: Any) -> None:
    """One rank of a gloo run (data parallel, or latent sharded with ``shard_latents=True`` in
    ``over``); writes {"ok": ...} or {"error": ...} to result."""
    from saelab.distributed import DataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        t = trainer(Path(out), Path(data), DataParallel(rank, world), archs, **over)
        if rank == die_rank:
            dying = DyingSource(Path(data), seed=0)
            dying.die_at = die_at
            t.source = dying
            from saelab.distributed import RankShard

            t.data = RankShard(dying, rank, world)
        t.fit()
        Path(result).write_text(json.dumps({"ok": True, "step": t.step}))
    except Exception as err:
        Path(result).write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    finally:
        dist.destroy_process_group()


#: sharded selection cases: (rows, d_in, latents per rank, k, k_aux, BatchTopK's k);
#: small-integer weights make exact ties across shards common. Per-rank widths 24 and 4 take
#: torch.topk's path in ``ordered_topk``, 512 its grouped path; 4 is narrower than k. Rows
#: divide by 2 and 3 (data-parallel BatchTopK splits them).
SELECTION_CASES = ((48, 4, 24, 5, 7, 2.5), (36, 3, 512, 4, 9, 3.0), (18, 3, 4, 6, 3, 1.5))


def selection_inputs(case: int, world: int) -> dict[str, Tensor]:
    """Small-integer inputs and a dead-latent mask for SELECTION_CASES[case] on ``world`` ranks
    (every pre-activation is an exact small integer)."""
    B, D, width, _, _, _ = SELECTION_CASES[case]
    M = width * world
    gen = torch.Generator().manual_seed(100 + case)
    ints = lambda *shape: torch.randint(-2, 3, shape, generator=gen).float()  # noqa: E731
    return {"x": ints(B, D), "W_enc": ints(D, M), "b_enc": ints(M), "b_dec": torch.zeros(D),
            "dead": torch.rand(M, generator=gen) < 0.5}


def sharded_selection_worker(rank: int, world: int, rdzv: str, result: str) -> None:
    """One rank, for every SELECTION_CASES case: select TopK and AuxK codes on its latent slice
    and merge them across ranks (``keep_global_topk``), and a BatchTopK SAE's training selection
    on its block of rows (data parallel: ``BatchTopKSAE.select_sparse`` and the dense
    ``select``); write the kept (row, latent id, value) entries to ``result``."""
    from saelab.architectures.base import StepContext
    from saelab.distributed import DataParallel
    from saelab.distributed.latent_sharded import keep_global_topk
    from saelab.ops import topk_encode
    from saelab.registry import build

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        out = []
        for case, (B, _, width, k, k_aux, k_batch) in enumerate(SELECTION_CASES):
            p = selection_inputs(case, world)
            lo, hi = rank * width, (rank + 1) * width
            k_aux = min(k_aux, int(p["dead"].sum()))
            enc = topk_encode(p["x"], p["W_enc"][:, lo:hi], p["b_enc"][lo:hi], p["b_dec"],
                              min(k, width), aux=(p["dead"][lo:hi], k_aux))
            assert enc.keys is not None and enc.aux is not None and enc.aux_keys is not None
            kept = {"main": keep_global_topk(enc.codes, enc.keys, k, rank, world),
                    "aux": keep_global_topk(enc.aux, enc.aux_keys, k_aux, rank, world)}
            entries = {name: [[int(r), int(i) + lo, float(v)] for r, i, v in
                              zip(c.row_ids(), c.indices, c.values.detach(), strict=True)]
                       for name, c in kept.items()}
            rows = B // world
            sae = build(config_from_dict({"architecture": "batchtopk", "d_in": p["x"].shape[1],
                                          "d_sae": p["W_enc"].shape[1], "k": k_batch})).eval()
            with torch.no_grad():
                for name in ("W_enc", "b_enc", "b_dec"):
                    getattr(sae, name).copy_(p[name])
            ctx = StepContext(0, 1, batch_group=DataParallel(rank, world))
            batch, _ = sae.select_sparse(p["x"][rank * rows : (rank + 1) * rows], ctx)
            entries["batch"] = [[int(r) + rank * rows, int(i), float(v)] for r, i, v in zip(
                batch.row_ids(), batch.indices, batch.values.detach(), strict=True)]
            dense_BM = sae.select(sae.pre_acts(p["x"][rank * rows : (rank + 1) * rows]), ctx)
            entries["batch_dense"] = [[int(r) + rank * rows, int(i), float(dense_BM[r, i])]
                                      for r, i in dense_BM.detach().nonzero().tolist()]
            out.append(entries)
        Path(result).write_text(json.dumps({"ok": out}))
    except Exception as err:
        Path(result).write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    finally:
        dist.destroy_process_group()
