"""Concept swap: make the model answer another relation by editing two latents.

For a question asking relation s, at the hooked block's output and the answer position:
z = encode(h); z′ = z with z′[src] = 0 and z′[tgt] = v; h′ = h + decode(z′) − decode(z)
(the SAE's error term is kept, so only the edit moves h). The swap succeeds when the model's
top-1 next token is then the first token of the person's value of relation t.

- AlignSAE: src, tgt = the slots of s and t, v = α (the paper's edit).
- Plain SAE: src, tgt = the best-matching latents of s and t (see metrics.py), v = α·m_t with m_t
  the target latent's mean activation on questions asking t, so α = 1 means "as on as usual"
  for both SAEs (AlignSAE's slots are trained towards 1).

Cases: held-out-phrasing questions the unedited model answers right (first token), paired with
every other relation whose value starts with a different token than the asked one's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from saelab.architectures.base import SAE
from saelab.biography.lm import block_hook, last_position_logits, pad_right
from saelab.biography.task import RELATIONS, VOCAB, Person, Question
from saelab.models.hooks import splice


def swap_codes(codes_BM: Tensor, src_B: Tensor, tgt_B: Tensor, value_B: Tensor) -> Tensor:
    """z′: a copy of z with z′[b, src_b] = 0 and then z′[b, tgt_b] = value_b."""
    rows = torch.arange(codes_BM.shape[0])
    out = codes_BM.clone()
    out[rows, src_B] = 0
    out[rows, tgt_B] = value_B.to(out.dtype)
    return out


def swap_delta(sae: SAE, acts_BD: Tensor, src_B: Tensor, tgt_B: Tensor, value_B: Tensor
               ) -> Tensor:
    """decode(z′) − decode(z) for each row (the change the swap makes to the activation)."""
    codes = sae.encode(acts_BD)
    return sae.decode(swap_codes(codes, src_B, tgt_B, value_B)) - sae.decode(codes)


@dataclass
class SwapCases:
    """Questions to edit and the relation each is swapped to."""

    prompts: list[list[int]]
    source: np.ndarray  # asked relation
    target: np.ndarray  # relation swapped to
    target_token: np.ndarray  # first token of the person's target value

    def __len__(self) -> int:
        return len(self.prompts)


def swap_cases(model: nn.Module, people: list[Person], qs: list[Question], max_cases: int,
               seed: int) -> SwapCases:
    """Every (correctly answered question, other relation with a different first token),
    subsampled to ``max_cases`` (seeded)."""
    top = last_position_logits(model, [q.prompt for q in qs]).argmax(-1).numpy()
    rows = []
    for q, pred in zip(qs, top, strict=True):
        if pred != q.answer_first_token:
            continue
        for t, rel in enumerate(RELATIONS):
            tok = VOCAB.encode(people[q.person].values[rel])[0]
            if t != q.relation and tok != q.answer_first_token:
                rows.append((q.prompt, q.relation, t, tok))
    rng = np.random.default_rng(seed)
    if len(rows) > max_cases:
        rows = [rows[i] for i in np.sort(rng.choice(len(rows), max_cases, replace=False))]
    return SwapCases([r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.int64),
                     np.array([r[2] for r in rows], dtype=np.int64),
                     np.array([r[3] for r in rows], dtype=np.int64))


@torch.no_grad()
def swapped_top_tokens(model: nn.Module, layer: int, sae: SAE, prompts: list[list[int]],
                       src: Tensor, tgt: Tensor, value: Tensor, batch_size: int = 512) -> Tensor:
    """The model's top-1 next token after each prompt with the swap spliced in at block
    ``layer``'s output, at the prompt's last position."""
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, lengths = pad_right(prompts[s:s + batch_size])
        pos = lengths - 1
        rows = torch.arange(len(pos))
        sl = slice(s, s + len(pos))

        def edit(x_BTD: Tensor, pos: Tensor = pos, rows: Tensor = rows, sl: slice = sl) -> Tensor:
            h = x_BTD[rows, pos]
            edited = x_BTD.clone()
            edited[rows, pos] = h + swap_delta(sae, h, src[sl], tgt[sl], value[sl]).to(h.dtype)
            return edited

        with splice(model, block_hook(layer), edit):
            logits = model(input_ids=ids).logits
        out.append(logits[rows, pos].argmax(-1))
    return torch.cat(out)


def swap_success(model: nn.Module, layer: int, sae: SAE, cases: SwapCases,
                 latent_of: list[int], on_value: list[float], alpha: float) -> float:
    """Share of cases whose top-1 answer token becomes the target relation's value."""
    src = torch.tensor([latent_of[r] for r in cases.source])
    tgt = torch.tensor([latent_of[r] for r in cases.target])
    value = torch.tensor([alpha * on_value[r] for r in cases.target], dtype=torch.float32)
    top = swapped_top_tokens(model, layer, sae, cases.prompts, src, tgt, value)
    return float((top.numpy() == cases.target_token).mean())
