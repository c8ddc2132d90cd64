"""The fused tanh-Gaussian sample equals the autograd form: values and gradients, float64."""

from __future__ import annotations

import pytest
import torch

from robot_sac.configs import NetworkConfig
from robot_sac.fused_sample import squashed_gaussian_sample
from robot_sac.networks import _HALF_LOG_2PI, SquashedGaussianActor, tanh_log_det_jacobian

B, A = 128, 4
F64 = torch.float64


def _reference(out: torch.Tensor, eps: torch.Tensor, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean, log_std = out.chunk(2, dim=-1)
    log_std = log_std.clamp(low, high)
    u = mean + log_std.exp() * eps
    log_prob = (-0.5 * eps.square() - log_std - _HALF_LOG_2PI - tanh_log_det_jacobian(u)).sum(dim=-1)
    return torch.tanh(u), log_prob


@pytest.mark.parametrize(
    ("scale", "low", "high"),
    [(1.0, -20.0, 2.0), (4.0, -1.0, 0.5), (15.0, -20.0, 2.0)],
    ids=["plain", "clamped", "saturated"],
)
@pytest.mark.parametrize("upstream", ["both", "action-only", "log-prob-only"])
def test_values_and_gradients_equal_autograds(scale: float, low: float, high: float, upstream: str):
    g = torch.Generator().manual_seed(0)
    out = (torch.randn(B, 2 * A, dtype=F64, generator=g) * scale).requires_grad_(True)
    eps = torch.randn(B, A, dtype=F64, generator=g)
    grad_action = torch.randn(B, A, dtype=F64, generator=g) * (upstream != "log-prob-only")
    grad_log_prob = torch.randn(B, dtype=F64, generator=g) * (upstream != "action-only")
    results = []
    for function in (squashed_gaussian_sample, _reference):
        action, log_prob = function(out, eps, low, high)
        (grad,) = torch.autograd.grad((action * grad_action).sum() + (log_prob * grad_log_prob).sum(), out)
        results.append((action, log_prob, grad))
    # d log pi / du is 2 tanh(u) here and 2 - 4 sigmoid(-2u) through autograd's softplus: equal, but
    # rounded differently once |u| is large (the saturated case).
    for fast, reference in zip(*results, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-7, atol=1e-8)
    if low == -1.0:  # some log-stds sit outside the clamp: their gradient is zero
        assert (results[0][2][:, A:] == 0).any()


def test_unused_output_gets_no_gradient_and_no_error():
    out = torch.randn(B, 2 * A, dtype=F64, requires_grad=True)
    action, _ = squashed_gaussian_sample(out, torch.randn(B, A, dtype=F64), -20.0, 2.0)
    action.sum().backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()


@pytest.mark.parametrize("reparameterize", [True, False])
def test_actor_sample_fast_and_autograd_paths_agree(reparameterize: bool):
    torch.manual_seed(1)
    actor = SquashedGaussianActor(7, A, NetworkConfig(hidden_sizes=(32, 32)))
    obs = torch.randn(B, 7)
    results = []
    for fused in (True, False):
        actor.fused = fused
        actor.zero_grad(set_to_none=True)
        action, log_prob = actor.sample(obs, reparameterize=reparameterize, generator=torch.Generator().manual_seed(2))
        (action.square().sum() + log_prob.mean()).backward()
        results.append((action.detach(), log_prob.detach(), [p.grad.clone() for p in actor.parameters()]))
    (a_fast, lp_fast, g_fast), (a_ref, lp_ref, g_ref) = results
    torch.testing.assert_close(a_fast, a_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lp_fast, lp_ref, rtol=1e-5, atol=1e-5)
    for fast, reference in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
