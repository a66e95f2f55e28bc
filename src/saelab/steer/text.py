"""Steered vs unsteered text from a Hugging Face causal LM, and the change in the next-token
distribution.

:func:`steer_text` is the one call behind ``saelab steer`` (and meant for an explorer's steering
box): it generates from the same prompt with and without the interventions (greedy by default,
or sampled with the same seed) and measures KL(p_unsteered ‖ p_steered) of the next-token
distribution at the last prompt position, and its mean over all prompt positions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saelab.config import ConfigError
from saelab.models.hf import output_logits
from saelab.steer.steering import Intervention, steering


def next_token_kl(clean_logits: Tensor, steered_logits: Tensor) -> Tensor:
    """KL(p_clean ‖ p_steered) in nats at every position: Σ_v p_c(v)·(log p_c(v) − log p_s(v))."""
    log_p = clean_logits.float().log_softmax(-1)
    log_q = steered_logits.float().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@dataclass
class SteerResult:
    """What steering changed for one prompt (all fields JSON-able: see :meth:`to_dict`).

    ``kl_next_token``: KL(p_unsteered ‖ p_steered) in nats of the next-token distribution after
    the prompt; ``kl_mean_prompt``: its mean over every prompt position. ``top_*``: the most
    likely next tokens after the prompt with their probabilities.
    """

    prompt: str
    unsteered: str
    steered: str
    kl_next_token: float
    kl_mean_prompt: float
    top_unsteered: list[tuple[str, float]]
    top_steered: list[tuple[str, float]]
    interventions: list[dict[str, Any]]
    max_new_tokens: int
    do_sample: bool
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe(interventions: Sequence[Intervention]) -> list[dict[str, Any]]:
    return [{"hook": str(iv.hook), "edits": [e.describe() for e in iv.edits],
             "positions": None if iv.positions is None else list(iv.positions),
             "keep_error": iv.keep_error, "d_sae": iv.sae.cfg.d_sae} for iv in interventions]


def _top(logits_V: Tensor, tokenizer: Any, n: int) -> list[tuple[str, float]]:
    probs = logits_V.float().softmax(-1)
    values, ids = probs.topk(min(n, probs.shape[-1]))
    return [(str(tokenizer.decode([int(i)])), round(float(v), 6))
            for v, i in zip(values, ids, strict=True)]


@torch.no_grad()
def _generate(model: nn.Module, input_ids: Tensor, tokenizer: Any, max_new_tokens: int,
              do_sample: bool, temperature: float, seed: int) -> str:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        out = model.generate(  # type: ignore[operator]
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature if do_sample else None, top_k=None, top_p=None,
            pad_token_id=pad)
    return str(tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True))


@torch.no_grad()
def steer_text(model: nn.Module, tokenizer: Any, prompt: str,
               interventions: Sequence[Intervention], *, max_new_tokens: int = 20,
               do_sample: bool = False, temperature: float = 1.0, seed: int = 0,
               top_n: int = 5) -> SteerResult:
    """Generate after ``prompt`` with and without ``interventions``; measure the KL.

    ``model`` is a Hugging Face causal LM (anything with ``generate`` whose output has
    ``logits``). Sampling uses the same seed in both runs, so with ``do_sample`` the two texts
    differ only through the steering.
    """
    if not interventions:
        raise ConfigError("give at least one intervention (an SAE, a hook and a latent edit)")
    if not hasattr(model, "generate"):
        raise ConfigError(f"{type(model).__name__} has no generate(); steer a Hugging Face "
                          "causal LM, or use saelab.steer.steering around your own forward pass")
    input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if input_ids.shape[1] == 0:
        raise ConfigError("the prompt is empty after tokenisation; give a prompt with text")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    model.eval()
    clean = output_logits(model(input_ids=input_ids))
    with steering(model, interventions):
        steered_out = output_logits(model(input_ids=input_ids))
    if clean is None or steered_out is None:
        raise ConfigError(f"{type(model).__name__} returned no logits; steer a causal LM")
    kl = next_token_kl(clean[0], steered_out[0])
    texts = []
    for steer in (False, True):
        if steer:
            with steering(model, interventions):
                texts.append(_generate(model, input_ids, tokenizer, max_new_tokens, do_sample,
                                       temperature, seed))
        else:
            texts.append(_generate(model, input_ids, tokenizer, max_new_tokens, do_sample,
                                   temperature, seed))
    return SteerResult(prompt=prompt, unsteered=texts[0], steered=texts[1],
                       kl_next_token=float(kl[-1]), kl_mean_prompt=float(kl.mean()),
                       top_unsteered=_top(clean[0, -1], tokenizer, top_n),
                       top_steered=_top(steered_out[0, -1], tokenizer, top_n),
                       interventions=describe(interventions), max_new_tokens=max_new_tokens,
                       do_sample=do_sample, seed=seed)
