"""bf16 autocast against fp32 for game-LM training (``saelab boardgame train-lm --autocast``).

Two copies of one model (random weights, or ``--from`` a trained game LM, e.g. the committed
``checkpoints/othello-8x256``) take the same training batches with the same step function as
``train-lm`` (``saelab.training.game_lm.train_step``), one with ``--autocast off`` and one with
``--autocast bf16``. Their steps alternate in one process, so both see the same machine load.
Reported: median seconds per step and tokens/s of each, the bf16/fp32 speed ratio, the mean
training loss of each over the last half of the steps (same batches; the bf16 one is computed
from bf16 logits, so it also carries their rounding), and each copy's loss in float32 on 64
held-out games after training (what the bf16 steps cost the weights themselves). Expect bf16 to be faster only on GPUs and on CPUs with native bf16
(avx512_bf16 or AMX); on AVX2-only CPUs it is slower.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/game_lm_autocast.py --threads 2 \
        --from checkpoints/othello-8x256 --steps 40
Prints one JSON line on stdout; stage lines go to stderr.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time

import torch

from saelab.boardgame import lm
from saelab.training import game_lm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--from", dest="source", default="",
                   help="start from this trained game LM (folder or 'othello'); its shape wins")
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=40, help="steps per mode (after 3 warm-up steps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=6e-4)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.source:
        model, game = lm.load_game_lm(args.source)
        conf = lm.model_config(model)
        shape = dict(n_layer=conf.n_layer, d_model=conf.n_embd, n_head=conf.n_head)
    else:
        game, shape = "othello", dict(n_layer=args.n_layer, d_model=args.d_model,
                                      n_head=args.n_head)
    cfg = lm.LMTrainConfig(game=game, batch_size=args.batch_size, lr=args.lr, warmup_steps=0,
                           train_games=args.batch_size * (args.steps + 3), **shape)
    if not args.source:
        model = lm.build_model(cfg)
    device = torch.device("cpu")
    models = {"off": model, "bf16": copy.deepcopy(model)}
    opts = {mode: game_lm.make_optimizer(m.train(), cfg) for mode, m in models.items()}
    cfgs = {mode: dataclasses.replace(cfg, autocast=mode) for mode in models}
    times: dict[str, list[float]] = {mode: [] for mode in models}
    losses: dict[str, list[float]] = {mode: [] for mode in models}
    print(f"game_lm_autocast: {game} {shape}, batch {args.batch_size}, {args.steps} steps per "
          f"mode, {args.threads} threads", file=sys.stderr, flush=True)
    start = time.time()
    for i, batch in enumerate(lm.batches(cfg)):
        for mode in models:
            t = time.perf_counter()
            loss = game_lm.train_step(models[mode], opts[mode], batch.data, batch.rows,
                                      cfgs[mode], device)
            if i >= 3:  # warm-up steps are not timed
                times[mode].append(time.perf_counter() - t)
                losses[mode].append(loss)
        if (i + 1) % 10 == 0:
            print(f"  step {i + 1}/{args.steps + 3}, {time.time() - start:.0f} s",
                  file=sys.stderr, flush=True)
    held_out = lm.training_data(cfg, 64, lm.held_out_seed(0))
    rows = torch.arange(64)
    for m in models.values():
        m.eval()
    with torch.no_grad():
        held_out_loss = {mode: float(held_out.loss(m(input_ids=held_out.inputs).logits.float(),
                                                   rows)) for mode, m in models.items()}
    tokens = args.batch_size * game_lm.context_positions(cfg)
    half = args.steps // 2
    result = {"game": game, **shape, "batch_size": args.batch_size, "steps": args.steps,
              "threads": args.threads, "from": args.source or "random weights",
              "cpu_bf16": _cpu_bf16_flags()}
    for mode in models:
        step = statistics.median(times[mode])
        result[mode] = {"median_step_s": round(step, 4), "tokens_per_s": round(tokens / step),
                        "mean_loss_last_half": round(statistics.fmean(losses[mode][half:]), 5),
                        "held_out_loss_fp32": round(held_out_loss[mode], 5)}
    result["bf16_speedup"] = round(result["off"]["median_step_s"]
                                   / result["bf16"]["median_step_s"], 2)
    print(json.dumps(result))


def _cpu_bf16_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return []
    return sorted(f for f in set(flags) if "bf16" in f or f.startswith("amx"))


if __name__ == "__main__":
    main()
