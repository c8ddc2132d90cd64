"""The SAC update: hand-computed targets, bootstrapping, Polyak, temperature, resume, learning."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from robot_sac.configs import NetworkConfig, SACConfig
from robot_sac.errors import ConfigError
from robot_sac.replay import ReplayBuffer
from robot_sac.sac import SAC, Batch, polyak_update

OBS, ACT = 4, 2
CPU = torch.device("cpu")
TINY = SACConfig(network=NetworkConfig(hidden_sizes=(16, 16)))


def make_sac(seed: int = 0, obs_dim: int = OBS, action_dim: int = ACT, **overrides: object) -> SAC:
    torch.manual_seed(seed)
    return SAC(obs_dim, action_dim, dataclasses.replace(TINY, **overrides), CPU)


def random_batch(size: int = 32, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(size, OBS, generator=g),
        action=torch.rand(size, ACT, generator=g) * 2 - 1,
        reward=torch.randn(size, generator=g),
        next_obs=torch.randn(size, OBS, generator=g),
        terminated=(torch.rand(size, generator=g) < 0.2).float(),
    )


def three_transitions() -> Batch:
    return Batch(
        obs=torch.zeros(3, OBS),
        action=torch.zeros(3, ACT),
        reward=torch.tensor([1.0, -0.5, 2.0]),
        next_obs=torch.arange(3 * OBS, dtype=torch.float32).reshape(3, OBS),
        terminated=torch.tensor([0.0, 1.0, 0.0]),
    )


class FixedOutput(nn.Module):
    """Stands in for a network: returns ``value`` and records its inputs."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = value
        self.inputs: tuple[Tensor, ...] = ()

    def forward(self, *inputs: Tensor) -> Tensor:
        self.inputs = inputs
        return self.value


# --- the soft Bellman target -----------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [{"alpha": 0.5}, {"initial_alpha": 0.5}], ids=["fixed", "learned"])
def test_v2_target_of_three_transitions_by_hand(monkeypatch: pytest.MonkeyPatch, alpha: dict[str, float]):
    sac = make_sac(gamma=0.9, reward_scale=2.0, **alpha)
    batch = three_transitions()
    next_action = torch.full((3, ACT), 0.3)
    next_log_prob = torch.tensor([0.5, -1.0, 2.0])
    monkeypatch.setattr(sac.actor, "sample", lambda obs, **_: (next_action, next_log_prob))
    target_q = FixedOutput(torch.tensor([[1.0, 5.0, -2.0], [2.0, 4.0, -3.0]]))  # min: [1, 4, -3]
    monkeypatch.setattr(sac, "critic_target", target_q)

    y = sac.soft_bellman_target(batch)

    # y = 2 r + 0.9 (1 - d) (min_j Q̄_j(s', a') - 0.5 log pi(a'|s')), transition by transition:
    #   2 * 1    + 0.9 * (1 - 0.5 * 0.5)  = 2 + 0.675 = 2.675
    #   2 * -0.5   (terminated)           = -1.0
    #   2 * 2    + 0.9 * (-3 - 0.5 * 2)   = 4 - 3.6   = 0.4
    torch.testing.assert_close(y, torch.tensor([2.675, -1.0, 0.4]))
    assert target_q.inputs[0] is batch.next_obs and target_q.inputs[1] is next_action


def test_v1_target_of_three_transitions_by_hand(monkeypatch: pytest.MonkeyPatch):
    sac = make_sac(variant="v1", gamma=0.9, reward_scale=2.0)
    batch = three_transitions()
    target_v = FixedOutput(torch.tensor([3.0, -1.0, 0.5]))
    monkeypatch.setattr(sac, "value_target", target_v)

    y = sac.soft_bellman_target(batch)

    # y = 2 r + 0.9 (1 - d) V̄(s') = [2 + 2.7, -1 (terminated), 4 + 0.45]
    torch.testing.assert_close(y, torch.tensor([4.7, -1.0, 4.45]))
    assert target_v.inputs[0] is batch.next_obs


@pytest.mark.parametrize("variant", ["v2", "v1"])
def test_terminated_transitions_do_not_bootstrap_and_truncated_ones_do(variant: str):
    sac = make_sac(variant=variant, gamma=0.99)
    next_obs = torch.randn(1, OBS).expand(2, -1)
    # The same transition twice: ended by termination, and by truncation (time limit: terminated = 0).
    batch = Batch(torch.zeros(2, OBS), torch.zeros(2, ACT), torch.ones(2), next_obs, torch.tensor([1.0, 0.0]))
    y = sac.soft_bellman_target(batch)
    assert y[0].item() == 1.0
    assert abs(y[1].item() - 1.0) > 1e-3  # bootstraps: r + gamma V(s')


def test_update_regresses_the_critic_onto_the_soft_bellman_target():
    sac = make_sac()
    batch = random_batch()
    rng_state = sac.generator.get_state()
    y = sac.soft_bellman_target(batch)
    q = sac.critic(batch.obs, batch.action).detach()
    sac.generator.set_state(rng_state)  # the update draws the same a' ~ pi(s')

    metrics = sac.update(batch)

    assert metrics["target_mean"] == pytest.approx(y.mean().item(), abs=1e-6)
    assert metrics["critic_loss"] == pytest.approx(((q - y) ** 2).mean(dim=1).sum().item(), rel=1e-5)
    assert metrics["q_min"] == pytest.approx(q.min().item(), abs=1e-6)
    assert metrics["q_max"] == pytest.approx(q.max().item(), abs=1e-6)


def test_metrics_names():
    names = {"critic_loss", "actor_loss", "alpha_loss", "alpha", "entropy", "q_mean", "q_min", "q_max", "target_mean"}
    assert set(make_sac().update(random_batch())) == names
    for overrides in ({"variant": "v1"}, {"actor_gradient": "likelihood_ratio"}):
        metrics = make_sac(**overrides).update(random_batch())
        assert set(metrics) == {*names, "value_loss"}
        assert all(np.isfinite(v) for v in metrics.values())


def test_batch_rejects_shapes_that_would_broadcast():
    batch = random_batch(8)
    with pytest.raises(ValueError, match=r"reward has shape \(8, 1\)"):
        dataclasses.replace(batch, reward=batch.reward[:, None])
    with pytest.raises(ValueError, match="terminated"):
        dataclasses.replace(batch, terminated=batch.terminated[:4])


# --- targets, temperature, delays, clipping --------------------------------------------------------


def test_polyak_tau_1_copies_and_small_tau_moves_by_tau():
    torch.manual_seed(0)
    source, target = (
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)),
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)),
    )
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    source[1].running_mean.fill_(0.7)
    old = [p.detach().clone() for p in target.parameters()]

    polyak_update(source, target, 0.005)
    for p_old, p_src, p_new in zip(old, source.parameters(), target.parameters(), strict=True):
        torch.testing.assert_close(p_new, p_old + 0.005 * (p_src - p_old), rtol=1e-6, atol=1e-7)
        assert not torch.equal(p_new, p_old)
    assert target[1].running_mean.eq(0.7).all()  # buffers are copied

    polyak_update(source, target, 1.0)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_update_moves_targets_by_tau_every_target_update_interval():
    sac = make_sac(tau=0.25, target_update_interval=3)
    for step in range(6):
        before = [p.clone() for p in sac.critic_target.parameters()]
        sac.update(random_batch(seed=step))
        after = list(sac.critic_target.parameters())
        if step % 3 == 0:
            for p_old, p_src, p_new in zip(before, sac.critic.parameters(), after, strict=True):
                torch.testing.assert_close(p_new, p_old + 0.25 * (p_src.detach() - p_old), rtol=1e-6, atol=1e-7)
        else:
            assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not any(p.requires_grad for p in sac.critic_target.parameters())


@pytest.mark.parametrize("direction", [+1.0, -1.0], ids=["entropy-below-target", "entropy-above-target"])
def test_alpha_rises_below_target_entropy_and_falls_above(direction: float):
    sac = make_sac()
    batch = random_batch(256)
    with torch.no_grad():
        _, log_prob = sac.actor.sample(batch.obs)
    entropy = -log_prob.mean().item()
    sac.target_entropy = entropy + direction  # +1: the policy's entropy is 1 nat below the target
    alpha_before = sac.log_alpha.exp().item()

    metrics = sac.update(batch)

    assert metrics["alpha"] == pytest.approx(alpha_before)
    change = sac.log_alpha.exp().item() - alpha_before
    assert change * direction > 0


def test_fixed_alpha_stays_fixed():
    sac = make_sac(alpha=0.2)
    assert sac.alpha_optimizer is None and not sac.log_alpha.requires_grad
    for step in range(3):
        metrics = sac.update(random_batch(seed=step))
    assert metrics["alpha"] == pytest.approx(0.2) and metrics["alpha_loss"] == 0.0
    assert sac.log_alpha.exp().item() == pytest.approx(0.2)


def test_default_target_entropy_is_minus_action_dim():
    assert make_sac(action_dim=5).target_entropy == -5.0
    assert make_sac(target_entropy=-1.5).target_entropy == -1.5


def test_actor_and_alpha_update_only_every_actor_update_interval():
    sac = make_sac(actor_update_interval=3)
    for step in range(7):
        actor_before = [p.clone() for p in sac.actor.parameters()]
        alpha_before = sac.log_alpha.item()
        critic_before = [p.clone() for p in sac.critic.parameters()]
        sac.update(random_batch(seed=step))
        actor_moved = not all(torch.equal(a, b) for a, b in zip(actor_before, sac.actor.parameters(), strict=True))
        assert actor_moved == (step % 3 == 0)
        assert (sac.log_alpha.item() != alpha_before) == (step % 3 == 0)
        assert not any(torch.equal(a, b) for a, b in zip(critic_before, sac.critic.parameters(), strict=True))
    assert sac.num_updates == 7


def _grad_norm(module: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()])).item()


def test_gradient_norm_clipping():
    unclipped = make_sac(actor_gradient="likelihood_ratio")
    unclipped.update(random_batch())
    assert min(_grad_norm(unclipped.critic), _grad_norm(unclipped.actor)) > 1e-2

    sac = make_sac(actor_gradient="likelihood_ratio", max_grad_norm=1e-3)
    sac.update(random_batch())
    for module in (sac.critic, sac.actor, sac.value):
        assert module is not None and _grad_norm(module) <= 1e-3 * (1 + 1e-5)


def test_likelihood_ratio_gradient_equals_the_reparameterized_one_in_expectation():
    """Both actor gradients estimate grad E_a~pi[alpha log pi(a|s) - Q(s, a)]; the baseline adds no bias."""
    n, alpha = 100_000, 0.2
    grads = {}
    for mode in ("reparameterization", "likelihood_ratio"):
        sac = make_sac(obs_dim=1, action_dim=1, actor_gradient=mode, alpha=alpha)
        sac.actor_optimizer = torch.optim.SGD(sac.actor.parameters(), lr=0.0)  # keep the gradients, move nothing
        obs = torch.full((n, 1), 0.5)
        action, log_prob = sac.actor.sample(
            obs, reparameterize=mode == "reparameterization", generator=torch.Generator().manual_seed(1)
        )
        q = -((action - 0.3) ** 2).sum(dim=-1)  # a known smooth critic
        baseline = (q - alpha * log_prob).mean().detach().expand(n)  # V(s) estimate: action-independent
        sac._actor_step(log_prob, q, torch.tensor(alpha), baseline)
        grads[mode] = torch.cat([p.grad.flatten() for p in sac.actor.parameters() if p.grad is not None])
    pathwise, score = grads["reparameterization"], grads["likelihood_ratio"]
    assert (pathwise - score).norm() < 0.02 * pathwise.norm()


# --- acting -------------------------------------------------------------------------------------


def test_act_shapes_dtype_range_and_determinism():
    sac = make_sac()
    single = np.random.default_rng(0).normal(size=OBS)
    many = np.random.default_rng(1).normal(size=(5, OBS)).astype(np.float32)
    assert sac.act(single).shape == (ACT,) and sac.act(many).shape == (5, ACT)
    assert sac.act(many).dtype == np.float32 and np.abs(sac.act(many * 100)).max() <= 1.0
    expected = torch.tanh(sac.actor(torch.as_tensor(many))[0]).detach().numpy()
    np.testing.assert_array_equal(sac.act(many, deterministic=True), expected)
    assert not np.array_equal(sac.act(many), sac.act(many))  # stochastic
    with pytest.raises(ValueError, match=r"\(4,\) or \(B, 4\)"):
        sac.act(np.zeros(OBS + 1))


def test_policy_state_dict_is_a_snapshot_of_the_actor():
    sac = make_sac()
    snapshot = sac.policy_state_dict()
    assert snapshot.keys() == sac.actor.state_dict().keys()
    assert all(torch.equal(snapshot[k], v) for k, v in sac.actor.state_dict().items())
    sac.update(random_batch())
    assert not all(torch.equal(snapshot[k], v) for k, v in sac.actor.state_dict().items())


# --- resume -------------------------------------------------------------------------------------


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize(
    "overrides",
    [{}, {"variant": "v1"}, {"actor_gradient": "likelihood_ratio"}, {"alpha": 0.1}, {"actor_update_interval": 2}],
    ids=["v2", "v1", "likelihood-ratio", "fixed-alpha", "delayed-actor"],
)
def test_state_dict_round_trip_resumes_bit_for_bit(overrides: dict[str, object]):
    sac = make_sac(seed=0, **overrides)
    for step in range(3):
        sac.update(random_batch(seed=step))
    buffer = io.BytesIO()
    torch.save(sac.state_dict(), buffer)
    buffer.seek(0)
    restored = make_sac(seed=99, **overrides)  # different initial weights and RNG
    restored.load_state_dict(torch.load(buffer, weights_only=True))

    _assert_same(restored.state_dict(), sac.state_dict())
    batch = random_batch(seed=10)
    assert restored.update(batch) == sac.update(batch)
    _assert_same(restored.state_dict(), sac.state_dict())
    np.testing.assert_array_equal(restored.act(np.ones(OBS)), sac.act(np.ones(OBS)))


@pytest.mark.parametrize(
    ("saved", "loaded", "match"),
    [
        ({}, {"variant": "v1"}, "variant"),
        ({"alpha": 0.2}, {}, "alpha"),
        ({}, {"obs_dim": OBS + 1}, "obs_dim"),
        ({}, {"network": NetworkConfig(hidden_sizes=(16, 8))}, "sac.network"),
    ],
)
def test_load_state_dict_refuses_another_configuration(saved: dict[str, object], loaded: dict[str, object], match: str):
    state = make_sac(**saved).state_dict()
    with pytest.raises(ConfigError, match=match):
        make_sac(**loaded).load_state_dict(state)


# --- learning -------------------------------------------------------------------------------------
# A 1-D reach: obs = (position x, target t) in [-1, 1]^2, x' = clip(x + 0.5 a), r = -|x' - t|,
# episodes of 5 steps that end by truncation (stored terminated = 0, so every target bootstraps).
# The zero action returns about -3.3 over 5 steps, the optimal policy about -0.4.

STEP_SIZE, HORIZON = 0.5, 5


def _reach_step(obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.clip(obs[..., 0] + STEP_SIZE * action[..., 0], -1.0, 1.0)
    return np.stack((x, obs[..., 1]), axis=-1), -np.abs(x - obs[..., 1])


def _deterministic_return(sac: SAC) -> float:
    obs = np.random.default_rng(123).uniform(-1.0, 1.0, (128, 2))
    total = np.zeros(128)
    for _ in range(HORIZON):
        obs, reward = _reach_step(obs, sac.act(obs, deterministic=True))
        total += reward
    return float(total.mean())


def _train_on_reach(config: SACConfig, env_steps: int = 1000, random_steps: int = 200) -> tuple[float, float]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sac = SAC(2, 1, config, CPU)
    replay = ReplayBuffer(env_steps, 2, 1)
    before = _deterministic_return(sac)
    obs, owed = rng.uniform(-1.0, 1.0, 2), 0.0
    for step in range(env_steps):
        action = rng.uniform(-1.0, 1.0, 1) if step < random_steps else sac.act(obs)
        next_obs, reward = _reach_step(obs, action)
        replay.add(obs, action, float(reward), next_obs, terminated=False)
        obs = next_obs if (step + 1) % HORIZON else rng.uniform(-1.0, 1.0, 2)
        if step >= random_steps:
            owed += config.updates_per_step
            while owed >= 1.0:
                sac.update(replay.sample(config.batch_size, rng, CPU))
                owed -= 1.0
    return before, _deterministic_return(sac)


LEARN = dataclasses.replace(TINY, network=NetworkConfig(hidden_sizes=(64, 64)), learning_rate=1e-3, batch_size=64)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"alpha": 0.05, "reward_scale": 5.0},
        {"variant": "v1"},
        {"actor_gradient": "likelihood_ratio"},
        {"updates_per_step": 2.0, "actor_update_interval": 2, "target_update_interval": 2, "max_grad_norm": 1.0},
    ],
    ids=["v2", "fixed-alpha-reward-scale", "v1", "likelihood-ratio", "utd2-delayed-actor-target-interval-clip"],
)
def test_variant_learns_the_reach_task(overrides: dict[str, object]):
    before, after = _train_on_reach(dataclasses.replace(LEARN, gamma=0.9, **overrides))
    assert before < -3.0
    assert after > -1.2, f"deterministic return {after:.2f} after training (optimal about -0.4, before {before:.2f})"
