"""saelab: a TopK SAE trained by saelab's Trainer.train_step on in-memory activations."""

import tempfile

import torch
from common import activation_pool, parse, report, time_steps

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

def use_path(old: bool) -> None:
    """Switch between the step before the 65k-latent fixes (old) and the current one."""
    encode.FOLD_BIAS = not old


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


paths = ["old", "new"] if args.compare_old else ["new"]
with tempfile.TemporaryDirectory() as out:
    trainer = Trainer({"topk": config_from_dict(opts)}, cfg, source, out)
    trainer.initialise()
    W_enc = trainer.saes["topk"].W_enc.detach()
    times: dict[str, list[float]] = {p: [] for p in paths}
    matmul: dict[str, list[float]] = {p: [] for p in paths}
    for p in paths:
        use_path(p == "old")
        time_steps(lambda x: trainer.train_step(x), pool, args.warmup, 0)
    for i in range(args.steps):
        for p in paths:  # old and new alternate step by step: both see the same load
            use_path(p == "old")
            # The one unavoidable dense product, timed right after each step under the same
            # load: the pair gives the share of the step spent outside it.
            times[p] += time_steps(lambda x: trainer.train_step(x), pool[i % len(pool):], 0, 1)
            matmul[p] += time_steps(lambda x: x @ W_enc, pool[i % len(pool):], 0, 1)
shares = {p: median([1 - mm / st for mm, st in zip(matmul[p], times[p], strict=True)])
          for p in paths}
extra: dict[str, object] = {}
if args.compare_old:
    extra["old_path"] = {"median_step_s": median(times["old"]), "step_times_s": times["old"],
                         "encoder_matmul_s": median(matmul["old"]),
                         "outside_encoder_share": shares["old"]}
report("saelab", args, times["new"], encoder_matmul_s=median(matmul["new"]),
       outside_encoder_share=shares["new"], **extra)
