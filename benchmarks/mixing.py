"""The mixing effect of "Sparse but Wrong" on Chanin & Garriga-Alonso's small toy model.

g = 5 orthogonal features in d = 20, each firing with p = 0.4 (true L0 = 2); feature 0 co-fires
with features 1–4 at correlation +0.4 (and, as a second case, −0.4). Two BatchTopK SAEs with 5
latents start at the ground truth (decoder = features, encoder = its transpose, biases 0) and are
trained at L0 = 1.8 (below the truth; correlation +0.4 and −0.4) and at L0 = 2 (the truth,
correlation +0.4) as the control. At L0 = 1.8 the trained SAE
should reach a *lower* MSE than the ground-truth SAE evaluated at the same L0 while its latents
mix features: the latent of the correlated feature 0 drifts away from f0.

Prints, per correlation sign and L0, over N seeds (mean ± 95% interval): MSE of the trained SAE,
MSE of the ground-truth SAE at the same L0, and cos(latent i, f_i) for every feature. JSON at the
end.

Usage: OMP_NUM_THREADS=1 nice -n 10 python benchmarks/mixing.py [--steps 300] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saelab.architectures.base import SAE
from saelab.data.toy import ToySource
from saelab.metrics.seeds import mean_ci
from saelab.registry import build, config_from_dict
from saelab.toy.generator import ToyConfig, ToyModel
from saelab.training.config import TrainConfig
from saelab.training.trainer import Trainer


class GroundTruthInitTrainer(Trainer):
    """A trainer whose SAEs start at the ground truth instead of a random initialisation."""

    def __init__(self, features_GD: torch.Tensor, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.features_GD = features_GD

    def initialise(self) -> None:
        super().initialise()
        for sae in self.saes.values():
            set_ground_truth(sae, self.features_GD)


@torch.no_grad()
def set_ground_truth(sae: SAE, features_GD: torch.Tensor) -> None:
    sae.W_dec.copy_(features_GD)
    sae.W_enc.copy_(features_GD.T)
    sae.b_enc.zero_()
    sae.b_dec.zero_()


@torch.no_grad()
def mse_at_batch_l0(sae: SAE, acts: torch.Tensor, k: float, batch: int) -> tuple[float, float]:
    """(MSE per element, L0) with BatchTopK selection at k over batches of `batch` rows."""
    from saelab.architectures.batchtopk import batch_topk_codes

    err, l0 = 0.0, 0.0
    for chunk in acts.split(batch):
        codes = batch_topk_codes(sae.pre_acts(chunk), k)
        err += float((chunk - sae.decode(codes)).pow(2).sum())
        l0 += float((codes != 0).sum())
    return err / acts.numel(), l0 / acts.shape[0]


def run_case(correlation: float, k: float, seed: int, args: argparse.Namespace) -> dict:
    toy = ToyModel(ToyConfig.chanin_small(correlation_with_first=correlation))
    features = toy.features_GD
    opts = {"architecture": "batchtopk", "d_sae": 5, "k": k, "sparse_kernels": False,
            "aux_coefficient": 0.0, "threshold_start_step": args.steps}
    cfg = config_from_dict(dict(opts))
    train = TrainConfig(total_tokens=args.steps * args.batch_size, batch_size=args.batch_size,
                        lr=args.lr, lr_warmup_steps=0, lr_decay_start=1.0, checkpoint_every=0,
                        log_every=max(1, args.steps // 10), progress=False, measure_peak=False,
                        normalize_inputs=False, seed=seed)
    out = args.out / f"corr{correlation:+.1f}_k{k}_seed{seed}"
    trainer = GroundTruthInitTrainer(features, {"sae": cfg}, train, ToySource(toy, seed=seed), out)
    trained = trainer.fit()["sae"]
    truth = build(trained.cfg)
    set_ground_truth(truth, features)
    acts, _ = toy.sample(args.eval_rows, torch.Generator().manual_seed(777 + seed))
    mse_trained, l0_trained = mse_at_batch_l0(trained, acts, k, args.batch_size)
    mse_truth, l0_truth = mse_at_batch_l0(truth, acts, k, args.batch_size)
    unit = torch.nn.functional.normalize(trained.W_dec.detach(), dim=1)
    cos_to_truth = (unit * features).sum(1).tolist()
    return {"mse_trained": mse_trained, "mse_ground_truth": mse_truth, "l0_trained": l0_trained,
            "l0_ground_truth": l0_truth, "cos_latent_to_own_feature": cos_to_truth,
            "cos_latent0_to_f0": cos_to_truth[0],
            "mean_cos_latents1to4": sum(cos_to_truth[1:]) / 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-rows", type=int, default=65536)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_mixing"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    result: dict = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                    "seeds": args.seeds, "cases": []}
    print("| correlation | L0 | MSE trained | MSE ground truth | cos(latent 0, f0) | "
          "mean cos(latent i, f_i), i=1..4 |")
    print("|---|---|---|---|---|---|")
    for correlation, k in ((0.4, 1.8), (-0.4, 1.8), (0.4, 2.0)):
        rows = [run_case(correlation, k, s, args) for s in range(args.seeds)]
        summary = {m: mean_ci([r[m] for r in rows]) for m in
                   ("mse_trained", "mse_ground_truth", "cos_latent0_to_f0",
                    "mean_cos_latents1to4", "l0_trained")}
        result["cases"].append({"correlation": correlation, "k": k, "per_seed": rows,
                                "summary": {m: v.to_dict() for m, v in summary.items()},
                                "trained_beats_truth_all_seeds": all(
                                    r["mse_trained"] < r["mse_ground_truth"] for r in rows)})
        print(f"| {correlation:+.1f} | {k} | {summary['mse_trained']} | "
              f"{summary['mse_ground_truth']} | {summary['cos_latent0_to_f0']} | "
              f"{summary['mean_cos_latents1to4']} |", flush=True)
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
