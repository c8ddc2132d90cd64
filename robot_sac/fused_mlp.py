"""ReLU MLPs with a hand-written backward: the learner's fast path for the actor trunk and the Q ensemble.

Autograd's backward of ``Linear -> ReLU -> ... -> Linear`` is the right math, but on CPU at the sizes
of SAC (batch 256, width 256) a profile of one update (1 thread, 11.5 ms) showed ~4 ms outside the
GEMMs, part of it here: every ReLU backward allocates a fresh (n, B, H) gradient (``threshold_backward``
took 78-115 µs per call inside an update against 16 µs in place on a warm buffer), ReLU forward copies,
and the first layer's input gradient is computed for all ``obs_dim + A`` columns although only the
action's are used. The two `Function`s below do the same math with less work:

- ReLU forward and backward in place on buffers the function owns (``relu_``, ``threshold_backward``
  written into its own input);
- weight gradients only where ``ctx.needs_input_grad`` asks: the actor loss backpropagates through
  the critic with detached weights into the action only, and through each sample's minimizing
  member only (`_input_grads_by_rows`);
- the ensemble's input gradient only for the inputs that need it (the action, (B, A));
- narrow GEMMs (the actor's 12 outputs, the 26 observation inputs, the 6 action columns) computed
  transposed, which MKL runs 1.6-1.8x faster on this CPU (`_linear`, `_weight_grad`);
- the (H -> 1) output layer as multiply-and-sum, its weight gradient as ``bmm`` with one output row
  (13 µs at (2, 256, 256)); ``bmm`` with one output *column* takes a slow matrix-vector path on CPU
  (147 µs).

They cover ReLU MLPs without LayerNorm (the default network); `robot_sac.networks` keeps autograd's
path for the other activations and LayerNorm. ``tests/test_fused_mlp.py`` checks every gradient
against autograd in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _relu_backward_(grad: Tensor, activation: Tensor) -> Tensor:
    """``grad * (activation > 0)`` written into ``grad`` (which the caller owns); returns it.

    ``activation`` is the ReLU's output: it is positive exactly where its input was. A bool mask
    (``h > 0``, ``masked_fill_``, ``where``) costs 150-550 µs at (2, 256, 256) on this CPU; the fused
    kernel of autograd's ReLU backward, in place, 16 µs.
    """
    result: Tensor = torch.ops.aten.threshold_backward.grad_input(grad, activation, 0.0, grad_input=grad)
    return result


_NARROW = 32
"""Below this many columns a GEMM is computed transposed (see `_linear` and `_weight_grad`)."""


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight.T + bias``, (B, out); a narrow output as ``(weight @ x.T + bias).T`` (a transposed view).

    MKL's sgemm is slow with few output columns: (256, 256) @ (256, 12), the actor's output layer, took
    45 µs (35 GFLOP/s, 1 thread) and the transposed product 27 µs.
    """
    if weight.shape[0] < _NARROW:
        return torch.addmm(bias.unsqueeze(1), weight, x.t()).t()
    return torch.addmm(bias, x, weight.t())


def _weight_grad(grad: Tensor, x: Tensor) -> Tensor:
    """``grad.T @ x``, (out, in); with a narrow input as ``(x.T @ grad).T``.

    The observation layer's weight gradient (256, 256)^T @ (256, 26) took 71 µs as is, 44 µs transposed.
    """
    if x.shape[1] < _NARROW:
        return torch.mm(x.t(), grad).t()
    return torch.mm(grad.t(), x)


class _ReLUMLPFunction(torch.autograd.Function):
    """``x -> [Linear -> ReLU] * (L - 1) -> Linear`` with `nn.Linear`'s parameter layout.

    Inputs: x (B, in), then per layer weight (out, in) and bias (out,). Output (B, out_L).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, *params: Tensor) -> Tensor:
        weights, biases = params[0::2], params[1::2]
        activations = [x]
        h = x
        for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
            h = _linear(h, weight, bias).relu_()
            activations.append(h)
        out = _linear(h, weights[-1], biases[-1])
        ctx.save_for_backward(*activations, *weights)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        layers = len(saved) // 2
        activations, weights = saved[:layers], saved[layers:]
        needs = ctx.needs_input_grad
        grads: list[Tensor | None] = [None] * (2 * layers)
        g = grad_out  # dLoss/d(output of layer l), (B, out_l)
        for layer in reversed(range(layers)):
            if layer < layers - 1:
                g = _relu_backward_(g, activations[layer + 1])
            if needs[1 + 2 * layer]:
                grads[2 * layer] = _weight_grad(g, activations[layer])  # (out, in)
            if needs[2 + 2 * layer]:
                grads[2 * layer + 1] = g.sum(dim=0)
            if layer > 0 or needs[0]:
                g = torch.mm(g, weights[layer])  # (B, in), a fresh buffer the next ReLU backward may overwrite
        return (g if needs[0] else None, *grads)


class _EnsembleReLUMLPFunction(torch.autograd.Function):
    """n MLPs on the same input ``cat(obs, action)``, `QEnsemble`'s layout; output (n, B).

    Inputs: obs (B, O), action (B, A), then per layer weight (n, in, out) and bias (n, 1, out); the
    last layer has out = 1.
    """

    @staticmethod
    def forward(ctx: Any, obs: Tensor, action: Tensor, *params: Tensor) -> Tensor:
        weights, biases = params[0::2], params[1::2]
        n = weights[0].shape[0]
        x = torch.cat((obs, action), dim=-1)
        h = x.expand(n, -1, -1)  # (n, B, O + A), no copy: every member reads the same rows
        activations = [h]
        for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
            h = torch.baddbmm(bias, h, weight).relu_()  # x_j @ W_j + b_j for every member j
            activations.append(h)
        # The (H -> 1) output layer as multiply-and-sum: 27 µs at (2, 256, 256), against 34 µs for two
        # addmv and 147 µs for bmm with one output column (a slow matrix-vector path on CPU).
        q = (h * weights[-1].transpose(1, 2)).sum(dim=-1).add_(biases[-1].squeeze(-1))  # (n, B)
        ctx.obs_dim = obs.shape[-1]
        ctx.save_for_backward(*activations, *weights)
        return q

    @staticmethod
    def backward(ctx: Any, grad_q: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        layers = len(saved) // 2
        activations, weights = saved[:layers], saved[layers:]
        needs = ctx.needs_input_grad
        grads: list[Tensor | None] = [None] * (2 * layers)
        last = layers - 1
        if not any(needs[2:]):
            sparse = _input_grads_by_rows(grad_q, activations, weights, needs[:2], ctx.obs_dim)
            if sparse is not None:
                return (*sparse, *grads)
        if needs[2 + 2 * last]:
            # dW_j = h_j^T dq_j as (1, B) @ (B, H) per member: one output row is a fast bmm (13 µs).
            grads[2 * last] = torch.bmm(grad_q.unsqueeze(1), activations[last]).transpose(1, 2)
        if needs[3 + 2 * last]:
            grads[2 * last + 1] = grad_q.sum(dim=1).reshape(-1, 1, 1)
        # dLoss/dh of the last hidden layer: the outer product grad_q_j * w_j, (n, B, H).
        g = grad_q.unsqueeze(-1) * weights[last].transpose(1, 2)
        for layer in reversed(range(last)):
            g = _relu_backward_(g, activations[layer + 1])
            if needs[2 + 2 * layer]:
                grads[2 * layer] = torch.bmm(activations[layer].transpose(1, 2), g)  # (n, in, out)
            if needs[3 + 2 * layer]:
                grads[2 * layer + 1] = g.sum(dim=1, keepdim=True)
            if layer > 0:
                g = torch.bmm(g, weights[layer].transpose(1, 2))
        # The first layer's input gradient, summed over members, for the inputs that need it only; as
        # (W_in @ g^T)^T: bmm with A = 6 output columns took 61 µs at (2, 256, 256), transposed 35 µs.
        obs_dim = ctx.obs_dim
        inputs = [
            torch.bmm(part, g.transpose(1, 2)).sum(dim=0).t() if need else None
            for need, part in zip(needs[:2], (weights[0][:, :obs_dim], weights[0][:, obs_dim:]), strict=True)
        ]
        return (*inputs, *grads)


def _input_grads_by_rows(
    grad_q: Tensor, activations: Sequence[Tensor], weights: Sequence[Tensor], needs: Sequence[bool], obs_dim: int
) -> list[Tensor | None] | None:
    """Input gradients through each member's rows with a nonzero ``grad_q`` only; None if all are nonzero.

    The actor loss reads ``min_j Q_j(s, a)``: each sample's gradient reaches one member, so half of the
    (n, B, H) backward through the twin critics multiplies zeros. Backpropagating member j through only
    its own rows (gathered with ``index_select``, scattered back with ``index_add_``) halves those
    GEMMs, ~67 of the update's 590 MFLOP, at the cost of ~10 small ops per member: the actor step's
    pass through the critic took 1.90 ms instead of 2.32 (1 thread). One padded bmm over both members
    (rows sorted, then ``gather``-ed) was slower, 2.56 ms: ``gather`` on CPU is no memcpy.
    """
    # Per-member views come from one unbind per tensor: in an update every op costs ~10 µs (caches cold
    # after the GEMMs), indexing [j] tensor by tensor would add ~10 ops.
    q_grads = grad_q.unbind()
    rows = [g.nonzero().view(-1) for g in q_grads]
    if sum(len(r) for r in rows) == grad_q.numel():
        return None
    last = len(weights) - 1
    out_weights = weights[last].squeeze(-1).unbind()  # n x (H,)
    hidden = [h.unbind() for h in activations[1:]]  # per hidden layer, n x (B, width)
    inner_t = [w.transpose(1, 2).unbind() for w in weights[1:last]]  # per inner layer, n x (out, in)
    parts = (weights[0][:, :obs_dim], weights[0][:, obs_dim:])  # (n, O, H), (n, A, H)
    inputs = [
        grad_q.new_zeros(grad_q.shape[1], part.shape[1]) if need else None
        for need, part in zip(needs, parts, strict=True)
    ]
    part_rows = [part.unbind() if need else () for need, part in zip(needs, parts, strict=True)]
    for j, idx in enumerate(rows):
        if len(idx) == 0:
            continue
        g = torch.outer(q_grads[j].index_select(0, idx), out_weights[j])  # (m, H)
        for layer in reversed(range(last)):
            g = _relu_backward_(g, hidden[layer][j].index_select(0, idx))
            if layer > 0:
                g = torch.mm(g, inner_t[layer - 1][j])
        for grad, part in zip(inputs, part_rows, strict=True):
            if grad is not None:
                grad.index_add_(0, idx, torch.mm(part[j], g.t()).t())
    return inputs


def relu_mlp(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
    """A ReLU MLP with `nn.Linear` layout (weight (out, in), bias (out,)); (B, in) -> (B, out)."""
    params = [p for pair in zip(weights, biases, strict=True) for p in pair]
    out: Tensor = _ReLUMLPFunction.apply(x, *params)  # type: ignore[no-untyped-call]  # torch leaves apply untyped
    return out


def ensemble_relu_mlp(obs: Tensor, action: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
    """N ReLU MLPs on ``cat(obs, action)`` with `QEnsemble`'s layout; (B, O), (B, A) -> (n, B).

    Needs at least one hidden layer; the last layer has one output.
    """
    params = [p for pair in zip(weights, biases, strict=True) for p in pair]
    q: Tensor = _EnsembleReLUMLPFunction.apply(obs, action, *params)  # type: ignore[no-untyped-call]  # untyped
    return q
