"""A small GPT-2 trained from scratch on the biography task: training, saving, loading, answer
accuracy on held-out question phrasings and residual-stream activations at the answer position.

A model folder holds ``config.json`` + ``model.safetensors`` (``save_pretrained``) and
``training.json``: the exact settings, the command that reproduces them, the measured training
time and the answer accuracy per attribute.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from saelab.biography.task import (
    RELATIONS,
    VOCAB,
    Person,
    Question,
    biography,
    make_people,
    questions,
)
from saelab.boardgame.lm import _no_progress_bars, _versions, lr_factor, save_weights
from saelab.config import ConfigError, option, to_dict
from saelab.io import atomic_write_bytes, atomic_write_json

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
METADATA_NAME = "training.json"
IGNORE_INDEX = -100
N_POSITIONS = 96


@dataclass
class BioLMConfig:
    """Settings of one biography-LM training run (all recorded next to the weights)."""

    n_people: int = option(100, "people in the world (each asked about in training)")
    data_seed: int = option(0, "seed of the people and the biographies")
    bios_per_person: int = option(4, "biographies per person (random templates and order)")
    n_layer: int = option(4, "transformer blocks")
    d_model: int = option(64, "residual stream width")
    n_head: int = option(4, "attention heads")
    steps: int = option(2000, "optimiser steps")
    qa_batch: int = option(32, "questions per step (training phrasings)")
    bio_batch: int = option(4, "biographies per step")
    lr: float = option(3e-3, "peak AdamW learning rate (linear warm-up, cosine decay to 10%)")
    warmup_steps: int = option(100, "learning-rate warm-up steps")
    weight_decay: float = option(0.01, "AdamW weight decay")
    seed: int = option(0, "seed of the weights and the data order")
    threads: int = option(1, "torch threads while training (the machine may be shared)")

    def validate(self) -> None:
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        for name in ("n_people", "steps", "qa_batch", "n_layer", "threads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


def build_model(cfg: BioLMConfig) -> nn.Module:
    """A freshly initialised GPT-2 for ``cfg`` (weights seeded by ``cfg.seed``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(VOCAB), n_positions=N_POSITIONS, n_embd=cfg.d_model,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                        eos_token_id=None, pad_token_id=None)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return GPT2LMHeadModel(config)


def pad_right(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    """(ids padded with 0, lengths). In a causal model padding after a sequence's end cannot
    change its logits, so no attention mask is needed."""
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids, lengths


def _lm_batch(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    ids, lengths = pad_right(seqs)
    targets = ids[:, 1:].clone()
    targets[torch.arange(1, ids.shape[1])[None, :] >= lengths[:, None]] = IGNORE_INDEX
    return ids[:, :-1], targets


def training_sequences(cfg: BioLMConfig) -> tuple[list[list[int]], list[list[int]]]:
    """(question-answer sequences with the training phrasings, biographies)."""
    people = make_people(cfg.n_people, cfg.data_seed)
    qa = [q.prompt + q.answer for q in questions(people, held_out=False)]
    rng = np.random.default_rng(cfg.data_seed + 1)
    bios = [VOCAB.encode(biography(p, rng)) for p in people for _ in range(cfg.bios_per_person)]
    return qa, bios


def train_bio_lm(cfg: BioLMConfig, out_dir: str | Path, command: str = "",
                 progress: bool = True) -> dict[str, Any]:
    """Train, measure answer accuracy on the held-out phrasings, save to ``out_dir``."""
    cfg.validate()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        start, cpu_start = time.time(), time.process_time()
        qa, bios = training_sequences(cfg)
        model = build_model(cfg)
        losses = _fit(model, cfg, qa, bios, progress)
        train_seconds = time.time() - start
        cpu_seconds = time.process_time() - cpu_start
        people = make_people(cfg.n_people, cfg.data_seed)
        accuracy = {"held_out": answer_accuracy(model, questions(people, held_out=True)),
                    "training_phrasings": answer_accuracy(model, questions(people, False))}
    finally:
        torch.set_num_threads(old_threads)
    meta = {"task": "biography", "settings": to_dict(cfg),
            "command": command or reproduce_command(cfg),
            "final_loss": float(np.mean(losses[-50:])), "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(cpu_seconds, 1),
            "threads": cfg.threads, "answer_accuracy": accuracy, "versions": _versions()}
    save_bio_lm(model, out_dir, meta)
    return meta


def _fit(model: nn.Module, cfg: BioLMConfig, qa: list[list[int]], bios: list[list[int]],
         progress: bool) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98),
                            weight_decay=cfg.weight_decay)
    gen = np.random.default_rng(cfg.seed)
    losses: list[float] = []
    model.train()
    tick = start = time.time()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps)
        loss = _batch_loss(model, [qa[i] for i in gen.integers(len(qa), size=cfg.qa_batch)])
        if cfg.bio_batch and bios:
            loss = loss + _batch_loss(model, [bios[i] for i in
                                             gen.integers(len(bios), size=cfg.bio_batch)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress and (time.time() - tick > 5 or step + 1 == cfg.steps):
            rate = (step + 1) / (time.time() - start)
            print(f"biography LM: step {step + 1}/{cfg.steps} loss {np.mean(losses[-50:]):.4f} "
                  f"({rate:.1f} steps/s, ETA {(cfg.steps - step - 1) / rate:.0f} s)",
                  file=sys.stderr, flush=True)
            tick = time.time()
    model.eval()
    return losses


def _batch_loss(model: nn.Module, seqs: list[list[int]]) -> Tensor:
    inputs, targets = _lm_batch(seqs)
    logits = model(input_ids=inputs).logits
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                       ignore_index=IGNORE_INDEX)


def reproduce_command(cfg: BioLMConfig) -> str:
    """The ``saelab alignsae train-lm`` command that reproduces ``cfg``, every setting spelled
    out."""
    flags = [f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}"
             for f in dataclasses.fields(cfg)]
    return " ".join(["OMP_NUM_THREADS=1 saelab alignsae train-lm --out OUT", *flags])


# ---------------------------------------------------------------------------- answers


@torch.no_grad()
def last_position_logits(model: nn.Module, prompts: list[list[int]],
                         batch_size: int = 256) -> Tensor:
    """(N, vocab) next-token logits after each prompt."""
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, lengths = pad_right(prompts[s:s + batch_size])
        logits = model(input_ids=ids).logits
        out.append(logits[torch.arange(len(lengths)), lengths - 1])
    return torch.cat(out)


@torch.no_grad()
def greedy_answers(model: nn.Module, prompts: list[list[int]], max_new: int = 6
                   ) -> list[list[int]]:
    """Greedy-decode each prompt's answer up to and including the end-of-answer token."""
    eos = VOCAB.ids["<eos>"]
    done: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    for _ in range(max_new):
        if not active:
            break
        nxt = last_position_logits(model, [prompts[i] + done[i] for i in active]).argmax(-1)
        still = []
        for i, t in zip(active, nxt.tolist(), strict=True):
            done[i].append(t)
            if t != eos:
                still.append(i)
        active = still
    return done


def answer_accuracy(model: nn.Module, qs: list[Question]) -> dict[str, dict[str, float]]:
    """Per attribute (and ``all``): ``exact`` = the greedy answer equals the true answer word
    for word; ``first_token`` = the top-1 first answer token is right."""
    model.eval()
    answers = greedy_answers(model, [q.prompt for q in qs])
    exact = np.array([a == q.answer for a, q in zip(answers, qs, strict=True)])
    first = np.array([a[0] == q.answer[0] for a, q in zip(answers, qs, strict=True)])
    rel = np.array([q.relation for q in qs])
    out = {RELATIONS[r]: {"exact": float(exact[rel == r].mean()),
                          "first_token": float(first[rel == r].mean())}
           for r in range(len(RELATIONS)) if (rel == r).any()}
    out["all"] = {"exact": float(exact.mean()), "first_token": float(first.mean())}
    return out


# ---------------------------------------------------------------------------- saving and loading


def save_bio_lm(model: nn.Module, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    out = Path(out_dir)
    save_weights(model, out)
    atomic_write_json(out / METADATA_NAME, meta)
    atomic_write_bytes(out / "README.md", _readme(meta).encode())
    return out


def _readme(meta: dict[str, Any]) -> str:
    acc = meta["answer_accuracy"]["held_out"]
    lines = ["# Biography GPT-2 (saelab)", "",
             "Reproduce (seeded; one torch thread gives the same weights on the same torch "
             "build):", "", "```bash", meta["command"], "```", "",
             f"Training: {meta['train_seconds']} s on {meta['threads']} thread(s); final loss "
             f"{meta['final_loss']:.4f}.", "",
             "Answer accuracy on held-out question phrasings (exact answer / first token):", ""]
    lines += [f"- {k}: {v['exact']:.4f} / {v['first_token']:.4f}" for k, v in acc.items()]
    lines += ["", "Full settings: `training.json`. Definitions: docs/alignsae.md.", ""]
    return "\n".join(lines)


def read_metadata(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / METADATA_NAME
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} has no {METADATA_NAME}; is it a biography model saved "
                                "by `saelab alignsae train-lm`?")
    data: dict[str, Any] = json.loads(meta_path.read_text())
    if data.get("task") != "biography":
        raise ConfigError(f"{path} is not a biography model (task {data.get('task')!r})")
    return data


def load_bio_lm(path: str | Path | None = None) -> tuple[nn.Module, BioLMConfig]:
    """Load a biography model (``None`` = the shipped one) in eval mode, with its settings."""
    from transformers import GPT2LMHeadModel

    from saelab.config import from_dict

    folder = PRETRAINED_DIR if path is None else Path(path)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no biography model at {folder}: give a folder written by "
                                "`saelab alignsae train-lm`, or leave --model unset for the "
                                "shipped one")
    cfg = from_dict(BioLMConfig, read_metadata(folder)["settings"])
    with _no_progress_bars():
        model = GPT2LMHeadModel.from_pretrained(folder)
    model.eval()
    return model, cfg


def people_of(cfg: BioLMConfig) -> list[Person]:
    return make_people(cfg.n_people, cfg.data_seed)


# ---------------------------------------------------------------------------- activations


def n_layers(model: nn.Module) -> int:
    """Transformer blocks of a biography model."""
    return int(getattr(model, "config").n_layer)  # noqa: B009  (an HF config, untyped)


def block_hook(layer: int) -> str:
    """The hook of the residual stream after block ``layer`` (0-based)."""
    return f"transformer.h.{layer}"


@torch.no_grad()
def answer_position_activations(model: nn.Module, qs: list[Question], layer: int,
                                batch_size: int = 256) -> Tensor:
    """(N, d_model) residual stream after block ``layer`` at each question's last prompt token
    (the ``:`` after ``A``, where the answer's first token is predicted)."""
    from saelab.models.hooks import capture

    n_layer = n_layers(model)
    if not 0 <= layer < n_layer:
        raise ConfigError(f"layer {layer} is out of range: the model has blocks 0..{n_layer - 1}")
    hook = block_hook(layer)
    out = []
    for s in range(0, len(qs), batch_size):
        ids, lengths = pad_right([q.prompt for q in qs[s:s + batch_size]])
        got = next(iter(capture(model, [hook], functools.partial(model, input_ids=ids)).values()))
        out.append(got[torch.arange(len(lengths)), lengths - 1])
    return torch.cat(out)
