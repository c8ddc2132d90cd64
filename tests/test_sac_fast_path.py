"""SAC.update on the fast path (fused networks, FusedAdam, direct alpha gradient, cached Polyak lists)
matches the autograd reference path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robot_sac.configs import NetworkConfig, SACConfig
from robot_sac.optim import FusedAdam
from robot_sac.sac import SAC, Batch, polyak_update

OBS, ACT, B = 5, 3, 64


def _set_fused(sac: SAC, fused: bool) -> None:
    for module in (sac.actor, sac.critic, sac.critic_target):
        module.fused = fused


@pytest.mark.parametrize(
    "overrides",
    [{}, {"variant": "v1"}, {"actor_gradient": "likelihood_ratio"}, {"alpha": 0.2, "actor_update_interval": 2}],
    ids=["v2", "v1", "likelihood-ratio", "fixed-alpha-delayed-actor"],
)
def test_sac_update_with_the_fast_path_matches_the_autograd_path(overrides: dict[str, object]):
    """Fused networks + FusedAdam against autograd's networks + torch.optim.Adam, from the same seed."""
    config = dataclasses.replace(SACConfig(network=NetworkConfig(hidden_sizes=(32, 32))), **overrides)
    learners = []
    for fast in (True, False):
        torch.manual_seed(0)
        sac = SAC(OBS, ACT, config, torch.device("cpu"))
        _set_fused(sac, fast)
        if not fast:
            for name in ("actor_optimizer", "critic_optimizer", "value_optimizer", "alpha_optimizer"):
                optimizer = getattr(sac, name)
                if optimizer is not None:
                    setattr(
                        sac,
                        name,
                        torch.optim.Adam(optimizer.param_groups[0]["params"], lr=config.learning_rate, fused=True),
                    )
        learners.append(sac)
    g = torch.Generator().manual_seed(6)
    for _ in range(4):
        batch = Batch(
            obs=torch.randn(B, OBS, generator=g),
            action=torch.rand(B, ACT, generator=g) * 2 - 1,
            reward=torch.randn(B, generator=g),
            next_obs=torch.randn(B, OBS, generator=g),
            terminated=(torch.rand(B, generator=g) < 0.1).float(),
        )
        fast_metrics, reference_metrics = (sac.update(batch) for sac in learners)
        assert fast_metrics.keys() == reference_metrics.keys()
        for name, value in fast_metrics.items():
            assert value == pytest.approx(reference_metrics[name], rel=1e-4, abs=1e-5), name
    fast_state, reference_state = (
        dict(sac.actor.named_parameters()) | {f"critic.{k}": v for k, v in sac.critic.named_parameters()}
        for sac in learners
    )
    for name, value in fast_state.items():
        torch.testing.assert_close(value, reference_state[name], rtol=1e-4, atol=1e-5, msg=name)


def test_learner_uses_the_fast_path_by_default():
    sac = SAC(OBS, ACT, SACConfig(), torch.device("cpu"))
    assert sac.actor.fused and sac.critic.fused and sac.critic_target.fused
    assert all(isinstance(o, FusedAdam) for o in (sac.actor_optimizer, sac.critic_optimizer, sac.alpha_optimizer))
    slow = SAC(OBS, ACT, SACConfig(network=NetworkConfig(activation="tanh")), torch.device("cpu"))
    assert not (slow.actor.fused or slow.critic.fused)


def test_alpha_gradient_equals_autograds_of_the_alpha_loss():
    torch.manual_seed(0)
    sac = SAC(OBS, ACT, SACConfig(initial_alpha=0.3), torch.device("cpu"))
    log_prob = torch.randn(B, dtype=torch.float32)
    sac.alpha_optimizer.step = lambda *args, **kwargs: None  # keep the gradient, move nothing
    loss = sac._alpha_step(log_prob)
    log_alpha = sac.log_alpha.detach().clone().requires_grad_(True)
    reference = -(log_alpha * (log_prob + sac.target_entropy)).mean()
    reference.backward()
    torch.testing.assert_close(sac.log_alpha.grad, log_alpha.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("variant", ["v2", "v1"])
def test_cached_polyak_step_equals_polyak_update(variant: str):
    torch.manual_seed(1)
    config = SACConfig(variant=variant, tau=0.3, network=NetworkConfig(hidden_sizes=(8, 8)))
    sac = SAC(OBS, ACT, config, torch.device("cpu"))
    with torch.no_grad():
        for p in sac._online_params:
            p.add_(1.0)
    pairs = [(sac.critic, sac.critic_target)] + ([(sac.value, sac.value_target)] if variant == "v1" else [])
    expected = [(online, target, {k: v.clone() for k, v in target.state_dict().items()}) for online, target in pairs]
    with torch.no_grad():
        torch._foreach_lerp_(sac._target_params, sac._online_params, config.tau)
    for online, target, before in expected:
        for name, value in target.state_dict().items():
            torch.testing.assert_close(value, torch.lerp(before[name], online.state_dict()[name], 0.3))
    assert sum(p.numel() for p in sac._target_params) == sum(
        p.numel() for _, target in pairs for p in target.parameters()
    )
    polyak_update(sac.critic, sac.critic_target, 1.0)  # the public function still works on modules
    assert all(torch.equal(a, b) for a, b in zip(sac.critic.parameters(), sac.critic_target.parameters(), strict=True))
