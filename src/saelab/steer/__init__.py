"""Steering a model through its SAE: edit latents at one or more hooks during a forward pass or
``generate()``, keeping the SAE's error term so only the edited latents change the activation.

- :mod:`saelab.steer.edits`: what an edit is (add α·d_j, clamp, scale, zero) and how it applies
  to a code vector (shared with the SARM reward heads).
- :mod:`saelab.steer.steering`: :class:`Intervention` and the :func:`steering` context manager
  that installs the edits as hooks on any ``nn.Module`` and always removes them.
- :mod:`saelab.steer.text`: :func:`steer_text`, steered vs unsteered generation and the KL of
  the next-token distributions for a Hugging Face causal LM (JSON-able result, used by the CLI).
- :mod:`saelab.steer.board`: board-state interventions on an Othello LM (after Li et al.),
  through SAE latents and along linear-probe directions.
"""

from saelab.steer.edits import EditOp, LatentEdit, apply_edits, parse_edit
from saelab.steer.steering import Intervention, steering
from saelab.steer.text import SteerResult, next_token_kl, steer_text

__all__ = ["EditOp", "Intervention", "LatentEdit", "SteerResult", "apply_edits",
           "next_token_kl", "parse_edit", "steer_text", "steering"]
