"""dictionary_learning: TopKTrainer.update (forward, AuxK, backward, ConstrainedAdam-style step)."""

import torch
from common import activation_pool, parse, report, time_steps
from dictionary_learning.trainers.top_k import TopKTrainer

args = parse()
torch.set_num_threads(args.threads)
pool = activation_pool(args.d, args.batch)
trainer = TopKTrainer(steps=10**6, activation_dim=args.d, dict_size=args.m, k=args.k, layer=0,
                      lm_name="bench", device="cpu", seed=0)
step_no = [0]


def step(x: torch.Tensor) -> None:
    trainer.update(step_no[0], x)
    step_no[0] += 1


times = time_steps(step, pool, args.warmup, args.steps)
report("dictionary_learning", args, times)
