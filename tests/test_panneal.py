import torch

from saelab.architectures.base import StepContext
from saelab.architectures.panneal import PAnnealer, PAnnealOptions, lp_penalty
from tests.helpers import small_sae


def test_lp_penalty_values_and_finite_gradient_at_zero():
    acts = torch.tensor([[0.0, 4.0, 9.0]], requires_grad=True)
    pen = lp_penalty(acts, torch.ones(3), 0.5)
    assert torch.isclose(pen, torch.tensor(5.0))
    pen.backward()
    assert torch.isfinite(acts.grad).all()
    assert acts.grad[0, 0] == 0
    assert torch.isclose(acts.grad[0, 1], torch.tensor(0.5 * 4.0 ** -0.5))


def test_schedule_reaches_p_end_and_rescales_coefficient():
    opts = PAnnealOptions(p_start=1.0, p_end=0.2, anneal_start=0.5, n_updates=4, queue_length=3)
    ann = PAnnealer(opts, coefficient=2.0)
    steps, ps = ann.schedule(100)
    assert steps == [50, 62, 75, 88]
    assert torch.allclose(torch.tensor(ps, dtype=torch.float64), torch.tensor([0.8, 0.6, 0.4, 0.2], dtype=torch.float64))
    acts = torch.full((8, 5), 4.0)
    w = torch.ones(5)
    seen_p, coefs = [], []
    for step in range(100):
        ann.penalty(acts, w, StepContext(step, 100))
        seen_p.append(float(ann.p))
        coefs.append(float(ann.coefficient))
    assert seen_p[49] == 1.0 and abs(seen_p[50] - 0.8) < 1e-9 and abs(seen_p[-1] - 0.2) < 1e-9
    # Penalty continuity: coefficient·Σf^p is the same just before and after each change.
    for step in steps:
        before = coefs[step - 1] * 5 * 4.0 ** seen_p[step - 1]
        after = coefs[step] * 5 * 4.0 ** seen_p[step]
        assert abs(before - after) / before < 1e-6


def test_panneal_sae_state_survives_state_dict():
    sae = small_sae("panneal")
    x = torch.rand(16, 16)
    for step in range(80):
        sae.training_loss(x, StepContext(step, 100))
    state = sae.state_dict()
    assert float(state["annealer.p"]) < 1.0
    fresh = small_sae("panneal")
    fresh.load_state_dict(state)
    assert float(fresh.annealer.p) == float(sae.annealer.p)
    assert float(fresh.annealer.coefficient) == float(sae.annealer.coefficient)


def test_gated_panneal_uses_annealed_penalty():
    sae = small_sae("gated_panneal")
    x = torch.rand(16, 16)
    for step in range(100):
        out = sae.training_loss(x, StepContext(step, 100))
    assert abs(float(sae.annealer.p) - 0.2) < 1e-9
    assert "aux" in out.parts
