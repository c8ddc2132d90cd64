"""The reparameterized tanh-Gaussian sample with a hand-written backward: the actor's fast path.

`SquashedGaussianActor.sample` turns the trunk's output ``[mean, raw log_std]`` (B, 2A) and the noise
eps (B, A) into ``a = tanh(mean + std * eps)`` and ``log pi(a|s)``. Written with autograd that is ~17
small ops forward and ~25 backward (autograd nodes for clamp, exp, softplus, tanh, ...), ~250 µs per
forward + backward at B = 256, A = 6 on one CPU thread, nearly all of it per-op overhead. The same
math as one `torch.autograd.Function` takes fewer ops each way, with the derivatives in closed form:

- ``log pi = sum_i [-eps_i^2 / 2 - log_std_i - log(2 pi) / 2 - log(1 - tanh(u_i)^2)]``, with the
  stable ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (`robot_sac.networks.tanh_log_det_jacobian`);
- ``d log pi / d u_i = 2 tanh(u_i) = 2 a_i`` (eps is the noise, held fixed: reparameterization);
- ``d a_i / d u_i = 1 - a_i^2``; ``du/dmean = 1``; ``du/dlog_std = std * eps``; ``d log pi / d log_std``
  has the extra direct term -1; the clamp of log_std passes gradient only inside its range.

``tests/test_fused_sample.py`` checks values and gradients against the autograd form in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import Tensor

_CONSTANT = 0.5 * math.log(2.0 * math.pi) + 2.0 * math.log(2.0)
"""Per action dimension: log(2 pi) / 2 from the Gaussian, 2 log 2 from the tanh correction."""


class _SquashedGaussianFunction(torch.autograd.Function):
    """(out (B, 2A), eps (B, A), log_std_min, log_std_max) -> (action (B, A), log_prob (B,))."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, eps: Tensor, log_std_min: float, log_std_max: float) -> tuple[Tensor, Tensor]:
        mean, raw_log_std = out.chunk(2, dim=-1)
        log_std = raw_log_std.clamp(log_std_min, log_std_max)
        noise = log_std.exp().mul_(eps)  # std * eps = u - mean
        u = mean + noise
        action = torch.tanh(u)
        # Per dimension: 2 (u + softplus(-2u)) - eps^2 / 2 - log_std, then the constants.
        per_dim = F.softplus(u * -2.0).add_(u).mul_(2.0).sub_(log_std).addcmul_(eps, eps, value=-0.5)
        log_prob = per_dim.sum(dim=-1).sub_(_CONSTANT * eps.shape[-1])
        ctx.save_for_backward(action, noise, raw_log_std)
        ctx.bounds = (log_std_min, log_std_max)
        return action, log_prob

    @staticmethod
    def backward(ctx: Any, grad_action: Tensor, grad_log_prob: Tensor) -> tuple[Tensor | None, ...]:
        action, noise, raw_log_std = ctx.saved_tensors
        grad_lp = grad_log_prob.unsqueeze(-1)  # (B, 1)
        # dL/du = dL/da (1 - a^2) + dL/dlog_pi * 2a
        grad_u = torch.addcmul(grad_action, grad_action, action.square(), value=-1.0)
        grad_u.addcmul_(action, grad_lp, value=2.0)
        # dL/dlog_std = dL/du * std * eps - dL/dlog_pi, zero where the clamp was active.
        grad_log_std = torch.addcmul(-grad_lp, grad_u, noise)
        low, high = ctx.bounds
        grad_log_std.masked_fill_((raw_log_std < low) | (raw_log_std > high), 0.0)
        return torch.cat((grad_u, grad_log_std), dim=-1), None, None, None


def squashed_gaussian_sample(out: Tensor, eps: Tensor, log_std_min: float, log_std_max: float) -> tuple[Tensor, Tensor]:
    """``a = tanh(mean + exp(clamp(log_std)) * eps)`` and ``log pi(a|s)`` from the actor trunk's output.

    Args:
        out: (B, 2A) ``[mean, log_std]`` before the clamp.
        eps: (B, A) standard normal noise (no gradient).
        log_std_min: the clamp's low end.
        log_std_max: the clamp's high end.

    Returns:
        action (B, A) in (-1, 1) and log_prob (B,) in nats, differentiable with respect to ``out``.
    """
    action, log_prob = _SquashedGaussianFunction.apply(out, eps, log_std_min, log_std_max)  # type: ignore[no-untyped-call]  # torch leaves apply untyped
    return action, log_prob
