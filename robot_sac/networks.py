"""SAC networks: the MLP builder, the tanh-squashed Gaussian actor, the batched Q ensemble, V.

Shapes: B is the batch size, A the action size, n the ensemble size. Observations reaching these
networks are already normalized (the replay buffer normalizes at sample time, the env wrapper at act
time); actions are in policy units, (-1, 1)^A.

References: Haarnoja et al. 2018 "Soft Actor-Critic" (arXiv 1801.01290), appendix C (the tanh
change of variables); Haarnoja et al. 2018b "Soft Actor-Critic Algorithms and Applications"
(arXiv 1812.05905).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import Tensor, nn

from robot_sac.configs import NetworkConfig
from robot_sac.fused_mlp import ensemble_relu_mlp, relu_mlp
from robot_sac.fused_sample import squashed_gaussian_sample

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "silu": nn.SiLU}

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def mlp(in_dim: int, out_dim: int, config: NetworkConfig) -> nn.Sequential:
    """A plain MLP: ``[Linear -> (LayerNorm) -> activation] * len(hidden_sizes) -> Linear``.

    Args:
        in_dim: input features.
        out_dim: output features (the last layer is linear, no activation).
        config: hidden widths, activation, LayerNorm switch.

    Returns:
        An `nn.Sequential` of standard modules (so it exports to ONNX as is), default-initialized.
    """
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in config.hidden_sizes:
        layers.append(nn.Linear(width, hidden))
        if config.layer_norm:
            layers.append(nn.LayerNorm(hidden))
        layers.append(_ACTIVATIONS[config.activation]())
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def fusable(config: NetworkConfig) -> bool:
    """Whether `robot_sac.fused_mlp`'s hand-written backward covers this shape (ReLU, no LayerNorm)."""
    return config.activation == "relu" and not config.layer_norm and len(config.hidden_sizes) > 0


def tanh_log_det_jacobian(u: Tensor) -> Tensor:
    """``log(1 - tanh(u)^2)`` elementwise, finite for any finite u.

    The naive form is ``-inf`` once ``tanh(u)`` rounds to ±1 (|u| > ~9 in float32). The identity
    ``1 - tanh(u)^2 = 4 / (e^u + e^-u)^2`` gives ``log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))``
    (Spinning Up's SAC, ``spinup/algos/pytorch/sac/core.py``; TensorFlow Probability's `Tanh` bijector),
    exact and stable for both signs of u. SB3 and CleanRL instead use ``log(1 - tanh(u)^2 + 1e-6)``,
    which is finite but biased near saturation (it caps the correction at ``log 1e-6`` per dimension).
    """
    return 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))


class SquashedGaussianActor(nn.Module):
    """The SAC policy: ``a = tanh(u)``, ``u ~ N(mean(s), exp(log_std(s))^2)`` per action dimension.

    One MLP maps an observation (B, obs_dim) to ``[mean, log_std]`` (B, 2A); a single output layer
    keeps it one GEMM. The deterministic (evaluation and export) action is ``tanh(mean)``.

    ``net`` is a plain `nn.Sequential` (checkpoints, the ONNX exporter and the shipped policy rely on
    its layout). `forward` runs it through `robot_sac.fused_mlp.relu_mlp` (same weights, hand-written
    backward) and `sample` (reparameterized) through `robot_sac.fused_sample` while ``fused`` is True,
    which `fusable` networks start with; False runs ``net`` and the autograd form below.

    Args:
        obs_dim: observation size.
        action_dim: action size A.
        config: network shape and the log-std clamp range.
    """

    def __init__(self, obs_dim: int, action_dim: int, config: NetworkConfig) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.log_std_min = config.log_std_min
        self.log_std_max = config.log_std_max
        self.net = mlp(obs_dim, 2 * action_dim, config)
        self.fused = fusable(config)
        self._linears = [m for m in self.net if isinstance(m, nn.Linear)]

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clamped log-std of the pre-squash Gaussian, each (B, A).

        The clamp to ``[log_std_min, log_std_max]`` (default [-20, 2], as softlearning and SB3) keeps
        ``exp(log_std)`` from underflowing to 0 (a degenerate density and a NaN log-prob) or exploding
        early in training when the critic is still noise. Outside the range the gradient is zero.
        """
        mean, log_std = self._trunk(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def _trunk(self, obs: Tensor) -> Tensor:
        """``net(obs)``, (B, 2A): through `relu_mlp`'s hand-written backward while ``fused``."""
        if self.fused and obs.ndim == 2:
            return relu_mlp(obs, [m.weight for m in self._linears], [m.bias for m in self._linears])
        out: Tensor = self.net(obs)
        return out

    def sample(
        self, obs: Tensor, *, reparameterize: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample an action and its exact log-density.

        Args:
            obs: (B, obs_dim) normalized observations.
            reparameterize: True: ``u = mean + std * eps`` keeps the path gradient (rsample, the SAC
                actor loss). False: u is detached and the log-density still depends on the
                parameters through mean and std (the score function, for the likelihood-ratio actor).
            generator: the random source of eps; None uses torch's global generator.

        Returns:
            action: (B, A) in (-1, 1).
            log_prob: (B,) ``log pi(a|s)`` in nats.
        """
        if self.fused and reparameterize and obs.ndim == 2:
            # The same math with closed-form derivatives, as one autograd node (robot_sac.fused_sample).
            out = self._trunk(obs)
            eps = torch.randn((len(obs), self.action_dim), generator=generator, dtype=out.dtype, device=out.device)
            return squashed_gaussian_sample(out, eps, self.log_std_min, self.log_std_max)
        mean, log_std = self(obs)
        std = log_std.exp()
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        u = mean + std * eps
        if reparameterize:
            # log N(u; mean, std) with (u - mean) / std == eps; the pathwise gradient is unchanged.
            log_normal = -0.5 * eps.square() - log_std - _HALF_LOG_2PI
        else:
            u = u.detach()
            log_normal = -0.5 * ((u - mean) / std).square() - log_std - _HALF_LOG_2PI
        # Change of variables a = tanh(u) (Haarnoja 2018, eq. 21):
        # log pi(a|s) = sum_i [log N(u_i) - log(1 - tanh(u_i)^2)].
        log_prob = (log_normal - tanh_log_det_jacobian(u)).sum(dim=-1)
        return torch.tanh(u), log_prob

    def log_prob(self, obs: Tensor, action: Tensor) -> Tensor:
        """``log pi(action|obs)`` of given squashed actions, (B,).

        Args:
            obs: (B, obs_dim) normalized observations.
            action: (B, A) actions in [-1, 1]; clamped to ``±(1 - float eps)`` before ``atanh`` so that
                actions at the bounds (e.g. clipped uniform exploration) give a finite value.
        """
        mean, log_std = self(obs)
        bound = 1.0 - torch.finfo(action.dtype).eps
        u = torch.atanh(action.clamp(-bound, bound))
        log_normal = -0.5 * ((u - mean) / log_std.exp()).square() - log_std - _HALF_LOG_2PI
        log_prob: Tensor = (log_normal - tanh_log_det_jacobian(u)).sum(dim=-1)
        return log_prob

    def deterministic(self, obs: Tensor) -> Tensor:
        """The evaluation action ``tanh(mean)``, (B, A)."""
        mean, _ = self(obs)
        action: Tensor = torch.tanh(mean)
        return action


class QEnsemble(nn.Module):
    """n soft Q-functions ``Q_j(s, a)`` evaluated as one batched MLP.

    Member j's layer l has weight ``weights[l][j]`` of shape (in, out) and bias ``biases[l][j]`` of
    shape (1, out); a layer is one ``baddbmm`` over all members, so the twin critics cost one GEMM call
    per layer instead of n (the same idea as TorchRL's vmapped critics). Each member is initialized
    independently like `nn.Linear` (weights and biases uniform in ``±1/sqrt(fan_in)``). While
    ``fused`` is True (`fusable` networks start with it) the forward is
    `robot_sac.fused_mlp.ensemble_relu_mlp`, the same math with a hand-written backward.

    Args:
        obs_dim: observation size.
        action_dim: action size A.
        config: hidden widths, activation and LayerNorm (per member, after the linear layer).
        n: ensemble size (2: the clipped double-Q of SAC-v2).
    """

    def __init__(self, obs_dim: int, action_dim: int, config: NetworkConfig, n: int = 2) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"QEnsemble needs at least one member, got n={n}")
        self.n = n
        self.layer_norm = config.layer_norm
        self.activation = _ACTIVATIONS[config.activation]()
        self.fused = fusable(config)
        widths = [obs_dim + action_dim, *config.hidden_sizes, 1]
        self.weights = nn.ParameterList(torch.empty(n, i, o) for i, o in itertools.pairwise(widths))
        self.biases = nn.ParameterList(torch.empty(n, 1, o) for o in widths[1:])
        self.ln_weights = nn.ParameterList(torch.ones(n, 1, h) for h in config.hidden_sizes if self.layer_norm)
        self.ln_biases = nn.ParameterList(torch.zeros(n, 1, h) for h in config.hidden_sizes if self.layer_norm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """`nn.Linear`'s default init, drawn independently for every member."""
        with torch.no_grad():
            for weight, bias in zip(self.weights, self.biases, strict=True):
                bound = 1.0 / math.sqrt(weight.shape[1])
                weight.uniform_(-bound, bound)
                bias.uniform_(-bound, bound)
            for ln_weight, ln_bias in zip(self.ln_weights, self.ln_biases, strict=True):
                ln_weight.fill_(1.0)
                ln_bias.zero_()

    def forward(self, obs: Tensor, action: Tensor, *, detach_params: bool = False) -> Tensor:
        """All members' Q-values, (n, B).

        Args:
            obs: (B, obs_dim) normalized observations.
            action: (B, A) actions in policy units.
            detach_params: evaluate with detached weights, so a backward pass computes gradients for
                the inputs only (the actor loss): it skips the critic's weight gradients, about 10 %
                of an update's FLOPs, and leaves the critic's ``.grad`` untouched.
        """
        weights, biases = _tensors(self.weights, detach_params), _tensors(self.biases, detach_params)
        if self.fused:
            return ensemble_relu_mlp(obs, action, weights, biases)
        ln_weights, ln_biases = _tensors(self.ln_weights, detach_params), _tensors(self.ln_biases, detach_params)
        x = torch.cat((obs, action), dim=-1).expand(self.n, -1, -1)  # (n, B, obs_dim + A), no copy
        for i in range(len(weights) - 1):
            x = torch.baddbmm(biases[i], x, weights[i])  # x_j @ W_j + b_j for every member j
            if self.layer_norm:
                x = torch.addcmul(ln_biases[i], F.layer_norm(x, x.shape[-1:]), ln_weights[i])
            x = self.activation(x)
        # The (H -> 1) output layer as multiply-and-sum: bmm with one output column runs as a slow
        # matrix-vector kernel on CPU (measured at H=256, B=256: 5x slower forward, 2x forward+backward).
        return (x * weights[-1].transpose(1, 2)).sum(dim=-1) + biases[-1].squeeze(-1)


def _tensors(params: nn.ParameterList, detach: bool) -> list[Tensor]:
    # The module's own parameter dict, in order: iterating a ParameterList goes through __getitem__ and
    # string indexing, ~2 µs per parameter (18 per SAC update).
    values = params._parameters.values()
    return [p.detach() for p in values if p is not None] if detach else [p for p in values if p is not None]


class ValueNetwork(nn.Module):
    """The soft state value ``V(s) = E_{a~pi}[Q(s, a) - alpha log pi(a|s)]`` (SAC-v1, LR baseline).

    Args:
        obs_dim: observation size.
        config: network shape.
    """

    def __init__(self, obs_dim: int, config: NetworkConfig) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, config)

    def forward(self, obs: Tensor) -> Tensor:
        """V of each observation, (B,)."""
        value: Tensor = self.net(obs).squeeze(-1)
        return value
