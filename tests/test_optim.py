"""FusedAdam steps bit-identically to torch.optim.Adam(fused=True) and keeps its state format."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from robot_sac.optim import FusedAdam


def _params(seed: int) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=g)) for shape in ((2, 7, 5), (2, 1, 5), (5,), ())]


def _step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    optimizer.zero_grad(set_to_none=True)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    optimizer.step()


def _round_trip(state: dict[str, object]) -> dict[str, object]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, object] = torch.load(buffer, weights_only=True)
    return loaded


def _assert_equal_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for key, state in sa["state"].items():
        assert state.keys() == sb["state"][key].keys()
        for name, value in state.items():
            other = sb["state"][key][name]
            assert value.shape == other.shape and value.dtype == other.dtype and torch.equal(value, other), name


@pytest.mark.parametrize("lr", [3e-4, 0.1])
def test_steps_are_bit_identical_to_torch_fused_adam(lr: float):
    ours, theirs = _params(0), _params(0)
    fast, reference = FusedAdam(ours, lr=lr), torch.optim.Adam(theirs, lr=lr, fused=True)
    for step in range(5):
        _step(fast, ours, step)
        _step(reference, theirs, step)
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b), step
    _assert_equal_state(fast, reference)


def test_state_round_trips_in_torch_adams_format_both_ways():
    """A checkpoint of torch.optim.Adam loads into FusedAdam and back, and steps go on bit for bit."""
    ours, theirs = _params(1), _params(1)
    fast, reference = FusedAdam(ours, lr=1e-3), torch.optim.Adam(theirs, lr=1e-3, fused=True)
    for step in range(3):
        _step(fast, ours, step)
        _step(reference, theirs, step)
    resumed_params = [nn.Parameter(p.detach().clone()) for p in theirs]
    resumed = FusedAdam(resumed_params, lr=1e-3)
    resumed.load_state_dict(_round_trip(reference.state_dict()))
    back_params = [nn.Parameter(p.detach().clone()) for p in ours]
    back = torch.optim.Adam(back_params, lr=1e-3, fused=True)
    back.load_state_dict(_round_trip(fast.state_dict()))
    for step in range(3, 6):
        for optimizer, params in ((fast, ours), (reference, theirs), (resumed, resumed_params), (back, back_params)):
            _step(optimizer, params, step)
        for a, b, c, d in zip(ours, theirs, resumed_params, back_params, strict=True):
            assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    _assert_equal_state(resumed, reference)
    _assert_equal_state(back, fast)
    for state in fast.state_dict()["state"].values():
        assert state["step"].shape == () and state["step"].item() == 6.0


def test_a_missing_gradient_skips_that_parameter_like_torch():
    ours, theirs = _params(2), _params(2)
    fast, reference = FusedAdam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for step in range(4):
        for optimizer, params in ((fast, ours), (reference, theirs)):
            _step(optimizer, params, step)
            if step == 2:
                params[1].grad = None
                optimizer.step()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b)
    _assert_equal_state(fast, reference)


def test_zero_grad():
    params = _params(3)
    optimizer = FusedAdam(params, lr=1e-3)
    _step(optimizer, params, 0)
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)
