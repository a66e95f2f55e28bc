"""SAELens: TopKTrainingSAE, its training_forward_pass (MSE + AuxK), Adam, as its trainer does."""

import torch
from common import activation_pool, parse, report, time_steps
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

args = parse()
torch.set_num_threads(args.threads)
pool = activation_pool(args.d, args.batch)
cfg = TopKTrainingSAEConfig(d_in=args.d, d_sae=args.m, k=args.k, dtype="float32", device="cpu")
sae = TopKTrainingSAE(cfg)
opt = torch.optim.Adam(sae.parameters(), lr=2e-4)
dead = torch.zeros(args.m, dtype=torch.bool)
dead[: args.m // 10] = True  # exercise the AuxK path as a real run with dead latents does
step_no = [0]


def step(x: torch.Tensor) -> None:
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={},
                                                   dead_neuron_mask=dead,
                                                   n_training_steps=step_no[0],
                                                   is_logging_step=False))
    opt.zero_grad()
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    step_no[0] += 1


times = time_steps(step, pool, args.warmup, args.steps)
import sae_lens  # noqa: E402

report("sae_lens", args, times, version=sae_lens.__version__)
