"""saelab: a TopK SAE trained by saelab's Trainer.train_step on in-memory activations."""

import os
import re
import sys
import tempfile
import time
from collections import defaultdict

import torch
from common import activation_pool, parse, report, time_steps

from saelab.architectures.topk import TopKFamilySAE
from saelab.data import IteratorSource
from saelab.ops import encode, tune_cpu_allocator
from saelab.registry import config_from_dict
from saelab.training import TrainConfig, Trainer

args = parse()
torch.set_num_threads(args.threads)
tune_cpu_allocator()  # as `saelab train` does
cpu_pool = activation_pool(args.d, args.batch)
source = IteratorSource(lambda: iter(cpu_pool), d_in=args.d)  # for initialisation
pool = [x.to(args.device) for x in cpu_pool]  # what the timed steps train on
opts = {"architecture": "topk", "d_sae": args.m, "k": args.k}
if args.dtype != "float32":
    opts["matmul_dtype"] = args.dtype
cfg = TrainConfig(total_tokens=args.batch * 10**6, batch_size=args.batch, lr=2e-4,
                  checkpoint_every=0, progress=False, init_samples=4096, measure_peak=False,
                  dead_after_tokens=10_000_000, device=args.device, autocast=args.autocast)

# The step paths --compare-old alternates: (W_enc stored latents-major, b_enc folded into the
# encoder GEMM). "addmm": the step before the 65k-latent work (row-major W_enc, so the sparse
# backward's (latents, d) gradient is transposed into W_enc's layout each step; b_enc added by
# addmm, which first copies it into every pre-activation chunk); "row_major": b_enc folded;
# "new": the current step (W_enc latents-major: no transpose).
# "chunks_64mb": W_enc latents-major with the earlier 64 MB pre-activation chunks of whole rows;
# "chunks_512mb": two GEMMs of 2,048 rows; "chunks_1gb": the whole (4096, 65,536) product in one
# GEMM (W_enc packed once, not 4 times).
# "blocked": the product computed 4,096 latents at a time (16 MB blocks), each row's per-block
# top-k merged (saelab.ops.encode.BLOCK_LATENTS). The fourth field is the selection's latents
# per column block (0 = whole rows). "plain_adam": the current step with torch's fused Adam
# handed the latents-major W_enc as it is (the kernel copies it to row-major order first) instead
# of its contiguous transpose (saelab.training.trainer._DenseLayoutAdam); the last field says
# which Adam.
PATHS = {"addmm": (False, False, 2**24, 0, False), "row_major": (False, True, 2**24, 0, False),
         "chunks_64mb": (True, True, 2**24, 0, True), "chunks_512mb": (True, True, 2**27, 0, True),
         "chunks_1gb": (True, True, 2**28, 0, True),
         "blocked": (True, True, 2**26, 4096, True),
         "plain_adam": (True, True, encode._CHUNK_ELEMS, encode.BLOCK_LATENTS, False),
         "new": (True, True, encode._CHUNK_ELEMS, encode.BLOCK_LATENTS, True)}


def use_path(name: str) -> None:
    encode.FOLD_BIAS = PATHS[name][1]
    encode._CHUNK_ELEMS = PATHS[name][2]
    encode.BLOCK_LATENTS = PATHS[name][3]


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def breakdown(trainer: Trainer) -> dict[str, float]:
    """Seconds of one profiled step per saelab function (the innermost saelab frame above each
    ATen operator; the encoder GEMM is the one under ``_matmul``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        trainer.train_step(pool[0])
    spent: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if not ev.name.startswith("aten::"):
            continue
        parent, where = ev.cpu_parent, "(outside saelab)"
        while parent is not None:
            if "saelab/" in parent.name:
                where = re.sub(r"\(\d+\)", "", parent.name.split("saelab/")[-1])
                break
            parent = parent.cpu_parent
        spent[where] += ev.self_cpu_time_total / 1e6
    return dict(sorted(spent.items(), key=lambda kv: -kv[1]))


class ProductClock:
    """Seconds spent in the step's own encoder product (``_Preacts._matmul``: the GEMM of each
    row chunk or column block, synchronous on CPU; on CUDA the device is synchronised around it,
    which serialises the step a little). The rest of the step is what runs outside it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._matmul = encode._Preacts._matmul
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

        def timed(pre: encode._Preacts, *a: object) -> None:
            sync()
            start = time.perf_counter()
            self._matmul(pre, *a)  # type: ignore[arg-type]
            sync()
            self.seconds += time.perf_counter() - start

        encode._Preacts._matmul = timed  # type: ignore[method-assign]

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


paths = args.paths.split(",") if args.compare_old else ["new"]
if "new" not in paths or not set(paths) <= set(PATHS):
    raise SystemExit(f"--paths takes 'new' and any of {sorted(PATHS)}, got {args.paths!r}")
trainers: dict[str, Trainer] = {}
with tempfile.TemporaryDirectory() as out:
    for p in paths:  # each path its own SAE, from the same seed
        TopKFamilySAE.latents_major_encoder = PATHS[p][0]
        trainers[p] = Trainer({"topk": config_from_dict(opts)}, cfg, source, f"{out}/{p}")
        trainers[p].initialise()
        if not PATHS[p][4]:  # torch's own fused Adam, no step taken yet
            slot = trainers[p].slots["topk"]
            slot.optimizer = torch.optim.Adam(trainers[p].saes["topk"].parameters(),
                                              **slot.optimizer.defaults)
    TopKFamilySAE.latents_major_encoder = True
    # The one unavoidable dense product, (B, d) @ (d, latents) into a reused, already-faulted
    # output (as the step's chunks are), timed right after each step under the same load: the
    # pair gives the share of the step spent outside it.
    out_BM = pool[0].new_zeros(args.batch, args.m)
    times: dict[str, list[float]] = {p: [] for p in paths}
    matmul: dict[str, list[float]] = {p: [] for p in paths}
    in_step: dict[str, list[float]] = {p: [] for p in paths}
    for p in paths:
        use_path(p)
        time_steps(trainers[p].train_step, pool, args.warmup, 0)
    clock = ProductClock()
    load_start = os.getloadavg()
    for i in range(args.steps):
        for p in paths:  # the paths alternate step by step: all see the same load
            use_path(p)
            W_enc = trainers[p].saes["topk"].W_enc.detach()
            clock.take()
            times[p] += time_steps(trainers[p].train_step, pool[i % len(pool):], 0, 1)
            in_step[p].append(clock.take())
            matmul[p] += time_steps(lambda x, w=W_enc: torch.mm(x, w, out=out_BM),
                                    pool[i % len(pool):], 0, 1)
    encode._Preacts._matmul = clock._matmul  # type: ignore[method-assign]
    phases = None
    if args.breakdown:
        use_path("new")
        phases = breakdown(trainers["new"])
        for name, secs in phases.items():
            print(f"{secs * 1e3:9.1f} ms  {name}", file=sys.stderr)
load_end = os.getloadavg()
pair_shares = {p: [1 - mm / st for mm, st in zip(matmul[p], times[p], strict=True)]
               for p in paths}
shares = {p: median(v) for p, v in pair_shares.items()}
# The same share measured inside each step: its own product's time against the whole step
# (no pairing noise; the product's chunking counts as product, not as outside work).
step_shares = {p: [1 - mm / st for mm, st in zip(in_step[p], times[p], strict=True)]
               for p in paths}
extra: dict[str, object] = {"pair_shares": pair_shares["new"],
                            "encoder_matmul_times_s": matmul["new"],
                            "in_step_product_times_s": in_step["new"],
                            "in_step_shares": step_shares["new"],
                            "in_step_outside_share": median(step_shares["new"]),
                            "load_average_1_5_15": {"start": load_start, "end": load_end}}
if args.compare_old:
    extra["old_paths"] = {p: {"median_step_s": median(times[p]), "step_times_s": times[p],
                              "encoder_matmul_s": median(matmul[p]),
                              "encoder_matmul_times_s": matmul[p],
                              "outside_encoder_share": shares[p], "pair_shares": pair_shares[p],
                              "in_step_product_times_s": in_step[p],
                              "in_step_shares": step_shares[p],
                              "in_step_outside_share": median(step_shares[p])}
                          for p in paths if p != "new"}
if phases is not None:
    extra["breakdown_s"] = phases
report("saelab", args, times["new"], encoder_matmul_s=median(matmul["new"]),
       outside_encoder_share=shares["new"], **extra)
