"""The hand-written ReLU MLP backward equals autograd's, for every parameter and input (float64)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

from robot_sac.configs import NetworkConfig
from robot_sac.fused_mlp import ensemble_relu_mlp, relu_mlp
from robot_sac.networks import QEnsemble, SquashedGaussianActor, fusable

OBS, ACT, B = 5, 3, 64
F64 = torch.float64


def _reference_mlp(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        x = torch.relu(x @ weight.t() + bias)
    return x @ weights[-1].t() + biases[-1]


def _reference_ensemble(obs: Tensor, action: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    x = torch.cat((obs, action), dim=-1).expand(weights[0].shape[0], -1, -1)
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        x = torch.relu(x @ weight + bias)
    return (x @ weights[-1] + biases[-1]).squeeze(-1)


def _grads(out: Tensor, upstream: Tensor, tensors: list[Tensor]) -> list[Tensor | None]:
    wanted = [t for t in tensors if t.requires_grad]
    got = iter(torch.autograd.grad(out, wanted, upstream))
    return [next(got) if t.requires_grad else None for t in tensors]


def _assert_grads_equal(fast: list[Tensor | None], reference: list[Tensor | None]) -> None:
    assert len(fast) == len(reference)
    for i, (a, b) in enumerate(zip(fast, reference, strict=True)):
        assert (a is None) == (b is None), i
        if a is not None and b is not None:
            assert a.shape == b.shape, i
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"gradient {i}")


@pytest.mark.parametrize("widths", [(OBS, 32, 32, 2 * ACT), (OBS, 16, 2), (OBS, 8, 24, 16, 4)])
@pytest.mark.parametrize(("x_grad", "w_grad"), [(False, True), (True, True), (True, False)])
def test_relu_mlp_backward_equals_autograd(widths: tuple[int, ...], x_grad: bool, w_grad: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, widths[0], dtype=F64, generator=g).requires_grad_(x_grad)
    weights = [torch.randn(o, i, dtype=F64, generator=g).requires_grad_(w_grad) for i, o in itertools.pairwise(widths)]
    biases = [torch.randn(o, dtype=F64, generator=g).requires_grad_(w_grad) for o in widths[1:]]
    upstream = torch.randn(B, widths[-1], dtype=F64, generator=g)
    fast, reference = relu_mlp(x, weights, biases), _reference_mlp(x, weights, biases)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)
    tensors = [x, *weights, *biases]
    _assert_grads_equal(_grads(fast, upstream, tensors), _grads(reference, upstream, tensors))


@pytest.mark.parametrize(("n", "hidden"), [(2, (32, 32)), (3, (16,)), (1, (8, 24, 16))])
@pytest.mark.parametrize(
    ("obs_grad", "action_grad", "w_grad"),
    [(False, False, True), (False, True, False), (True, True, True), (True, False, False)],
    ids=["critic-step", "actor-step", "all", "obs-only"],
)
def test_ensemble_backward_equals_autograd(
    n: int, hidden: tuple[int, ...], obs_grad: bool, action_grad: bool, w_grad: bool
):
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(B, OBS, dtype=F64, generator=g).requires_grad_(obs_grad)
    action = torch.randn(B, ACT, dtype=F64, generator=g).requires_grad_(action_grad)
    widths = [OBS + ACT, *hidden, 1]
    weights = [
        torch.randn(n, i, o, dtype=F64, generator=g).requires_grad_(w_grad) for i, o in itertools.pairwise(widths)
    ]
    biases = [torch.randn(n, 1, o, dtype=F64, generator=g).requires_grad_(w_grad) for o in widths[1:]]
    upstream = torch.randn(n, B, dtype=F64, generator=g)
    fast = ensemble_relu_mlp(obs, action, weights, biases)
    reference = _reference_ensemble(obs, action, weights, biases)
    assert fast.shape == (n, B)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)
    tensors = [obs, action, *weights, *biases]
    _assert_grads_equal(_grads(fast, upstream, tensors), _grads(reference, upstream, tensors))


def test_ensemble_backward_of_min_over_members_and_of_a_mean():
    """The upstream gradients SAC produces: a scatter from ``min(dim=0)`` and an expanded one from ``mean``."""
    g = torch.Generator().manual_seed(2)
    obs, action = torch.randn(B, OBS, dtype=F64, generator=g), torch.randn(B, ACT, dtype=F64, generator=g)
    action.requires_grad_(True)
    widths = [OBS + ACT, 16, 16, 1]
    weights = [torch.randn(2, i, o, dtype=F64, generator=g, requires_grad=True) for i, o in itertools.pairwise(widths)]
    biases = [torch.randn(2, 1, o, dtype=F64, generator=g, requires_grad=True) for o in widths[1:]]
    tensors = [action, *weights, *biases]
    for reduce in (lambda q: q.min(dim=0).values.mean(), lambda q: q.mean()):
        fast = torch.autograd.grad(reduce(ensemble_relu_mlp(obs, action, weights, biases)), tensors)
        reference = torch.autograd.grad(reduce(_reference_ensemble(obs, action, weights, biases)), tensors)
        _assert_grads_equal(list(fast), list(reference))


@pytest.mark.parametrize(
    "reduce",
    [lambda q: q.min(dim=0).values.square().mean(), lambda q: q[0].sum(), lambda q: (q[:, :5] * 2.0).sum()],
    ids=["min-over-members", "one-member-only", "a-few-rows"],
)
@pytest.mark.parametrize("obs_grad", [False, True])
@pytest.mark.parametrize("hidden", [(16, 24), (8, 24, 16)])
def test_ensemble_input_gradient_through_selected_rows_equals_autograd(reduce, obs_grad: bool, hidden: tuple[int, ...]):
    """Detached weights and an upstream gradient that is zero on some rows: the row-gathering backward."""
    g = torch.Generator().manual_seed(7)
    obs = torch.randn(B, OBS, dtype=F64, generator=g).requires_grad_(obs_grad)
    action = torch.randn(B, ACT, dtype=F64, generator=g).requires_grad_(True)
    widths = [OBS + ACT, *hidden, 1]
    weights = [torch.randn(2, i, o, dtype=F64, generator=g) for i, o in itertools.pairwise(widths)]
    biases = [torch.randn(2, 1, o, dtype=F64, generator=g) for o in widths[1:]]
    tensors = [t for t in (obs, action) if t.requires_grad]
    fast = torch.autograd.grad(reduce(ensemble_relu_mlp(obs, action, weights, biases)), tensors)
    reference = torch.autograd.grad(reduce(_reference_ensemble(obs, action, weights, biases)), tensors)
    _assert_grads_equal(list(fast), list(reference))


def test_fusable_covers_relu_without_layer_norm_only():
    assert fusable(NetworkConfig())
    assert not fusable(NetworkConfig(activation="tanh"))
    assert not fusable(NetworkConfig(layer_norm=True))


def _module_grads(module: nn.Module, inputs: list[Tensor]) -> list[Tensor]:
    return [t.grad.clone() for t in [*module.parameters(), *inputs] if t.grad is not None]


@pytest.mark.parametrize("detach_params", [False, True])
def test_q_ensemble_fused_and_autograd_paths_agree(detach_params: bool):
    torch.manual_seed(3)
    ens = QEnsemble(OBS, ACT, NetworkConfig(hidden_sizes=(32, 32)), n=2)
    assert ens.fused
    obs, action = torch.randn(B, OBS), torch.randn(B, ACT)
    results = []
    for fused in (True, False):
        ens.fused = fused
        ens.zero_grad(set_to_none=True)
        act = action.clone().requires_grad_(True)
        q = ens(obs, act, detach_params=detach_params)
        q.min(dim=0).values.square().mean().backward()
        results.append((q.detach(), _module_grads(ens, [act])))
    (q_fast, g_fast), (q_ref, g_ref) = results
    torch.testing.assert_close(q_fast, q_ref, rtol=1e-5, atol=1e-6)
    assert len(g_fast) == len(g_ref) == (1 if detach_params else 7)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_actor_fused_and_autograd_paths_agree():
    torch.manual_seed(4)
    actor = SquashedGaussianActor(OBS, ACT, NetworkConfig(hidden_sizes=(32, 32)))
    assert actor.fused
    obs = torch.randn(B, OBS)
    results = []
    for fused in (True, False):
        actor.fused = fused
        actor.zero_grad(set_to_none=True)
        action, log_prob = actor.sample(obs, generator=torch.Generator().manual_seed(5))
        (action.sum() + log_prob.mean()).backward()
        results.append((action.detach(), _module_grads(actor, [])))
    (a_fast, g_fast), (a_ref, g_ref) = results
    torch.testing.assert_close(a_fast, a_ref, rtol=1e-5, atol=1e-6)
    assert len(g_fast) == len(g_ref) == 6
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
