"""SAC networks: the squashed Gaussian's exact log-density, its stability, the batched Q ensemble."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from robot_sac.configs import NetworkConfig
from robot_sac.networks import QEnsemble, SquashedGaussianActor, ValueNetwork, mlp, tanh_log_det_jacobian

OBS, ACT, B = 7, 3, 512
SMALL = NetworkConfig(hidden_sizes=(32, 32))


def _actor(config: NetworkConfig = SMALL, seed: int = 0) -> SquashedGaussianActor:
    torch.manual_seed(seed)
    return SquashedGaussianActor(OBS, ACT, config)


def _set_head(actor: SquashedGaussianActor, mean: float | list[float], log_std: float | list[float]) -> None:
    """Make the actor output constant ``mean`` and ``log_std`` (zero weights, chosen bias)."""
    head = actor.net[-1]
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        head.weight.zero_()
        head.bias[:ACT] = torch.as_tensor(mean, dtype=torch.float32)
        head.bias[ACT:] = torch.as_tensor(log_std, dtype=torch.float32)


def test_mlp_default_shape_is_256x256_relu():
    net = mlp(10, 4, NetworkConfig())
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [256, 256, 4]


def test_mlp_layer_norm_and_activation_from_config():
    net = mlp(10, 4, NetworkConfig(hidden_sizes=(16, 8, 8), activation="tanh", layer_norm=True))
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.Tanh] * 3 + [nn.Linear]
    assert net(torch.randn(5, 10)).shape == (5, 4)


def test_sample_log_prob_equals_torch_distributions():
    """Same noise, same u: our log pi(a|s) equals Normal + TanhTransform's within 1e-5 (float32)."""
    actor = _actor()
    obs = torch.randn(B, OBS) * 2.0
    action, log_prob = actor.sample(obs, generator=torch.Generator().manual_seed(1))

    mean, log_std = actor(obs)
    assert mean.abs().max() < 3.0  # away from saturation
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    dist = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform(cache_size=1))
    squashed = dist.transforms[0](mean + log_std.exp() * eps)  # caches u, as dist.rsample() does
    expected = dist.log_prob(squashed).sum(dim=-1)

    assert action.shape == (B, ACT) and log_prob.shape == (B,)
    torch.testing.assert_close(action, squashed, rtol=0.0, atol=1e-6)
    torch.testing.assert_close(log_prob, expected, rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("mean_scale", [0.1, 1.0, 2.0])
def test_log_prob_of_given_actions_equals_torch_distributions(mean_scale: float):
    actor = _actor()
    _set_head(actor, [0.0] * ACT, [0.0] * ACT)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # random means and log-stds per row, via the bias-free head on random obs
        actor.net[-1].weight.normal_(0.0, mean_scale / 4.0, generator=gen)
    obs = torch.randn(B, OBS, generator=gen)
    mean, log_std = actor(obs)
    dist = TransformedDistribution(Normal(mean, log_std.exp()), TanhTransform(cache_size=1))
    action = dist.sample()
    action = action.clamp(-0.999, 0.999)  # away from saturation: atanh is exact enough in float32 here
    torch.testing.assert_close(actor.log_prob(obs, action), dist.log_prob(action).sum(-1), rtol=0.0, atol=1e-5)


def test_log_prob_method_agrees_with_sample_in_float64():
    actor = _actor().double()
    obs = torch.randn(64, OBS, dtype=torch.float64)
    action, log_prob = actor.sample(obs)
    torch.testing.assert_close(actor.log_prob(obs, action), log_prob, rtol=0.0, atol=1e-8)


def test_stable_log_det_jacobian_matches_naive_form_where_the_naive_form_works():
    u = torch.linspace(-6.0, 6.0, 1001, dtype=torch.float64)
    naive = torch.log(1.0 - torch.tanh(u) ** 2)
    torch.testing.assert_close(tanh_log_det_jacobian(u), naive, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("log_std", [-20.0, -1.0, 2.0])
def test_log_prob_finite_with_finite_gradients_at_mean_20(log_std: float):
    actor = _actor()
    _set_head(actor, [20.0, -20.0, 20.0], log_std)
    obs = torch.randn(16, OBS)
    u = torch.full((1,), 20.0)
    assert torch.isinf(torch.log(1.0 - torch.tanh(u) ** 2)).all()  # what the naive form would give

    action, log_prob = actor.sample(obs)
    assert torch.isfinite(log_prob).all() and torch.isfinite(action).all()
    assert (action.abs() <= 1.0).all()
    log_prob.sum().backward()
    for p in actor.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()

    actor.zero_grad()
    given = actor.log_prob(obs, torch.tensor([[1.0, -1.0, 1.0]]).expand(16, -1))  # exactly at the bounds
    assert torch.isfinite(given).all()
    given.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in actor.parameters())


def test_deterministic_is_tanh_of_mean():
    actor = _actor()
    obs = torch.randn(32, OBS)
    mean, _ = actor(obs)
    torch.testing.assert_close(actor.deterministic(obs), torch.tanh(mean), rtol=0.0, atol=0.0)


def test_log_std_is_clamped_to_the_configured_range():
    config = dataclasses.replace(SMALL, log_std_min=-5.0, log_std_max=1.0)
    actor = _actor(config)
    obs = torch.randn(4, OBS)
    _set_head(actor, 0.0, [-100.0, 0.5, 100.0])
    _, log_std = actor(obs)
    assert log_std[:, 0].eq(-5.0).all() and log_std[:, 1].eq(0.5).all() and log_std[:, 2].eq(1.0).all()


def test_default_log_std_range_is_softlearnings():
    actor = _actor(NetworkConfig())
    _set_head(actor, 0.0, [-100.0, 0.0, 100.0])
    _, log_std = actor(torch.zeros(1, OBS))
    assert log_std.tolist() == [[-20.0, 0.0, 2.0]]


def _reference_member(ens: QEnsemble, j: int, config: NetworkConfig) -> nn.Sequential:
    """Member j of the ensemble as an ordinary nn.Sequential of nn.Linear (weights copied)."""
    net = mlp(OBS + ACT, 1, config)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    norms = [m for m in net if isinstance(m, nn.LayerNorm)]
    with torch.no_grad():
        for linear, weight, bias in zip(linears, ens.weights, ens.biases, strict=True):
            linear.weight.copy_(weight[j].T)
            linear.bias.copy_(bias[j, 0])
        for norm, gain, shift in zip(norms, ens.ln_weights, ens.ln_biases, strict=True):
            norm.weight.copy_(gain[j, 0])
            norm.bias.copy_(shift[j, 0])
    return net


@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        NetworkConfig(hidden_sizes=(16, 24, 8), activation="tanh"),
        NetworkConfig(hidden_sizes=(32, 32), activation="silu", layer_norm=True),
        NetworkConfig(hidden_sizes=(32,), activation="elu", layer_norm=True),
    ],
    ids=["relu", "tanh-3-layers", "silu-layernorm", "elu-layernorm-1-layer"],
)
def test_q_ensemble_equals_per_member_reference(config: NetworkConfig):
    torch.manual_seed(3)
    ens = QEnsemble(OBS, ACT, config, n=3)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for p in (*ens.ln_weights, *ens.ln_biases):
            p.normal_()
    obs, action = torch.randn(64, OBS), torch.rand(64, ACT) * 2 - 1
    q = ens(obs, action)
    assert q.shape == (3, 64)
    x = torch.cat((obs, action), dim=-1)
    for j in range(3):
        torch.testing.assert_close(q[j], _reference_member(ens, j, config)(x).squeeze(-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(q[0], q[1]) and not torch.allclose(q[1], q[2])


def test_q_ensemble_members_are_initialized_independently_like_nn_linear():
    torch.manual_seed(4)
    ens = QEnsemble(OBS, ACT, NetworkConfig(), n=2)
    for weight, bias in zip(ens.weights, ens.biases, strict=True):
        bound = 1.0 / weight.shape[1] ** 0.5
        assert weight.abs().max() <= bound and bias.abs().max() <= bound
        assert not torch.equal(weight[0], weight[1]) and not torch.equal(bias[0], bias[1])
        if weight.numel() > 1000:  # uniform(-bound, bound): std = bound / sqrt(3)
            assert abs(weight.std().item() - bound / 3**0.5) < 0.05 * bound
            corr = torch.corrcoef(torch.stack((weight[0].flatten(), weight[1].flatten())))[0, 1]
            assert abs(corr.item()) < 0.05


def test_q_ensemble_detach_params_gives_input_gradients_only():
    torch.manual_seed(5)
    ens = QEnsemble(OBS, ACT, SMALL)
    obs, action = torch.randn(8, OBS), torch.randn(8, ACT, requires_grad=True)
    q_detached = ens(obs, action, detach_params=True)
    torch.testing.assert_close(q_detached, ens(obs, action), rtol=0.0, atol=0.0)
    q_detached.sum().backward()
    assert action.grad is not None and action.grad.abs().sum() > 0
    assert all(p.grad is None for p in ens.parameters())


def test_value_network_shape():
    value = ValueNetwork(OBS, dataclasses.replace(SMALL, layer_norm=True))
    assert value(torch.randn(9, OBS)).shape == (9,)
