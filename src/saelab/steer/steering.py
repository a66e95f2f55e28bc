"""Install latent edits as hooks on any ``nn.Module`` for the duration of a ``with`` block.

At each hooked call the activation x (… × d_in) at the chosen positions is encoded, the edits
give z' from z, and the activation becomes

- with the error term kept (default): x' = x + (z' − z)·W_dec, i.e. x' = x̂(z') + (x − x̂(z)):
  only the edited latents change the activation, and an edit that changes nothing (α = 0)
  leaves x bit-identical;
- without it (``keep_error=False``): x' = x̂(z') = z'·W_dec + b_dec, the plain reconstruction.

Positions count the tokens that have passed through the hooked module since the block was
entered, so within one ``generate()`` call (with or without a KV cache) position p is the p-th
token of the sequence, prompt and generated tokens alike. Run separate passes in separate
``with`` blocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saelab.architectures.base import SAE
from saelab.config import ConfigError
from saelab.models.hooks import HookError, HookPoint, check_width, splice
from saelab.steer.edits import LatentEdit, apply_edits, check_latents, edited_latents


@dataclass
class Intervention:
    """Edits of one SAE's latents at one hook point.

    ``positions``: token positions to edit (None = every position). ``keep_error``: keep the
    SAE's error term (only the edits change the activation) or splice the reconstruction.
    """

    sae: SAE
    hook: str | HookPoint
    edits: Sequence[LatentEdit]
    positions: Sequence[int] | None = None
    keep_error: bool = True

    def __post_init__(self) -> None:
        self.hook = HookPoint.parse(self.hook)
        self.edits = tuple(self.edits)
        check_latents(self.edits, self.sae.cfg.d_sae)
        if self.positions is not None and any(p < 0 for p in self.positions):
            raise ConfigError("positions count from the first token (>= 0); a negative "
                              "position has no meaning while tokens are still being generated")


@dataclass
class _Editor:
    """The hook function of one intervention; counts the positions it has seen."""

    intervention: Intervention
    seen: int = 0
    calls: int = 0
    edited_positions: list[int] = field(default_factory=list)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        iv, sae = self.intervention, self.intervention.sae
        check_width(iv.hook, int(x.shape[-1]), sae.cfg.d_in)
        self.calls += 1
        if iv.positions is None:
            if x.ndim >= 2:
                self.seen += int(x.shape[-2])
            return self._edit(x)
        if x.ndim < 3:
            raise HookError(f"hook {iv.hook}: positions need a (batch, sequence, width) "
                            f"activation, got shape {tuple(x.shape)}; leave positions unset")
        length = int(x.shape[-2])
        absolute = torch.arange(self.seen, self.seen + length)
        self.seen += length
        chosen = torch.isin(absolute, torch.tensor(list(iv.positions), dtype=torch.long))
        if not chosen.any():
            return x
        self.edited_positions.extend(absolute[chosen].tolist())
        index = chosen.nonzero().squeeze(1).to(x.device)
        out = x.clone()
        out.index_copy_(-2, index, self._edit(x.index_select(-2, index)))
        return out

    def _edit(self, x: Tensor) -> Tensor:
        iv = self.intervention
        return edit_activation(iv.sae, x, iv.edits, iv.keep_error)


def edit_activation(sae: SAE, x: Tensor, edits: Sequence[LatentEdit],
                    keep_error: bool = True) -> Tensor:
    """x' for activations ``x`` (… × d_in): x + (z' − z)·W_dec, or x̂(z') without the error term."""
    weight = sae.W_dec
    codes = sae.encode(x.to(weight.dtype))
    new_codes = apply_edits(codes, edits)
    if not keep_error:
        return sae.decode(new_codes).to(x.dtype)
    cols = edited_latents(edits)
    delta = (new_codes[..., cols] - codes[..., cols]) @ weight[cols]
    return x + delta.to(x.dtype)


@contextmanager
def steering(model: nn.Module, interventions: Sequence[Intervention]) -> Iterator[list[_Editor]]:
    """Within the block every intervention edits its hook on each forward call of ``model``.

    The hooks are removed on leaving the block, also when the forward pass or ``generate()``
    raises. A hook that never ran during the block raises :class:`HookError` (the edit would
    otherwise silently do nothing). Yields the editors (their ``calls`` and
    ``edited_positions`` say what was edited).
    """
    editors = [_Editor(iv) for iv in interventions]
    with ExitStack() as stack:
        for editor in editors:
            stack.enter_context(splice(model, editor.intervention.hook, editor))
        yield editors
    idle = [str(e.intervention.hook) for e in editors if e.calls == 0]
    if idle:
        raise HookError(f"steering hooks {idle} never ran: is the module used by this model's "
                        "forward pass?")
