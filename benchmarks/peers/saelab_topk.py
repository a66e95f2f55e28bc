"""saelab: a TopK SAE trained by saelab's Trainer.train_step on in-memory activations."""

import tempfile

import torch
from common import activation_pool, parse, report, time_steps

from saelab.data import IteratorSource
from saelab.ops import tune_cpu_allocator
from saelab.registry import config_from_dict
from saelab.training import TrainConfig, Trainer

args = parse()
torch.set_num_threads(args.threads)
tune_cpu_allocator()  # as `saelab train` does
pool = activation_pool(args.d, args.batch)
source = IteratorSource(lambda: iter(pool), d_in=args.d)
opts = {"architecture": "topk", "d_sae": args.m, "k": args.k}
if args.dtype != "float32":
    opts["matmul_dtype"] = args.dtype
cfg = TrainConfig(total_tokens=args.batch * 10**6, batch_size=args.batch, lr=2e-4,
                  checkpoint_every=0, progress=False, init_samples=4096, measure_peak=False,
                  dead_after_tokens=10_000_000)
with tempfile.TemporaryDirectory() as out:
    trainer = Trainer({"topk": config_from_dict(opts)}, cfg, source, out)
    trainer.initialise()
    times = time_steps(lambda x: trainer.train_step(x), pool, args.warmup, args.steps)
    # The one unavoidable dense product, timed in this process under the same conditions.
    W_enc = trainer.saes["topk"].W_enc.detach()
    matmul = time_steps(lambda x: x @ W_enc, pool, 1, 3)
report("saelab", args, times, encoder_matmul_s=sorted(matmul)[1])
