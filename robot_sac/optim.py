"""Adam as one fused kernel call per step: `torch.optim.Adam(fused=True)` without its per-parameter Python.

In a profile of one SAC update (1 thread) ``Optimizer.step`` of the three optimizers took 0.72 ms, of
which the fused Adam kernel itself was 0.16 ms; the rest is Python run for every parameter on every
step (gathering the state lists, device/dtype grouping, the hook and profiler wrapper), plus 29-48 µs
per ``zero_grad``. `FusedAdam` is a `torch.optim.Adam`: same constructor, the same ``state_dict``
format (checkpoints written before it load unchanged), the same kernel with the same arguments,
so its steps are bit-identical to ``torch.optim.Adam(fused=True)`` (``tests/test_optim.py``). Its
`step` gathers the state with plain list comprehensions and calls ``torch._fused_adam_`` once (and
skips torch's per-call profiler/hook wrapper, see the note at `step`); any
case it does not cover (several parameter groups, AMSGrad, decoupled weight decay, a gradient
scaler, a missing gradient, parameters on several devices or dtypes, the first step that creates
the state) runs `torch.optim.Adam.step`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class FusedAdam(torch.optim.Adam):
    """`torch.optim.Adam` with ``fused=True`` and a step of one kernel call.

    Args:
        params: the tensors to optimize (one group).
        lr: the step size.
    """

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        super().__init__(params, lr=lr, fused=True)
        self._params: list[Tensor] = [p for group in self.param_groups for p in group["params"]]
        self._step_buffer = torch.zeros(0)
        self._step_views: list[Tensor] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every gradient; the plain loop skips `torch.optim.Optimizer`'s grouping."""
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for p in self._params:
            p.grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Adam step of every parameter (see the module docstring for when it defers to torch)."""
        grads = [p.grad for p in self._params]
        group = self.param_groups[0]
        if (
            closure is not None
            or len(self.param_groups) != 1
            or group["amsgrad"]
            or group["decoupled_weight_decay"]
            or getattr(self, "grad_scale", None) is not None
            or getattr(self, "found_inf", None) is not None
            or any(g is None for g in grads)
            or len({(p.device, p.dtype) for p in self._params}) != 1
            or len(self.state) != len(self._params)
        ):
            loss: float | None = super().step(closure)
            return loss
        states: list[dict[str, Any]] = [self.state[p] for p in self._params]
        views = self._step_views
        if len(views) != len(states) or not all(s["step"] is view for s, view in zip(states, views, strict=True)):
            self._share_step_storage(states)
        beta1, beta2 = group["betas"]
        # What torch.optim.adam._fused_adam does for one device and dtype; its
        # ``_foreach_add_(steps, 1)`` is a single add on the shared step storage.
        self._step_buffer.add_(1.0)
        torch._fused_adam_(
            self._params,
            grads,  # type: ignore[arg-type]  # None was ruled out above
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            self._step_views,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            grad_scale=None,
            found_inf=None,
        )
        return None

    # torch.optim.Optimizer wraps every subclass's `step` (once, on the class) in a profiler label and the
    # step-hook loop unless the method is marked as hooked already: that wrapper cost 25 µs per call
    # (1 thread; a FusedAdam step of log alpha takes 13 µs). So FusedAdam runs no optimizer step hooks.
    step.hooked = True  # type: ignore[attr-defined]

    def _share_step_storage(self, states: list[dict[str, Any]]) -> None:
        """Make every parameter's ``step`` a view into one tensor, so that counting a step is one op.

        On CPU ``torch._foreach_add_(steps, 1)`` runs one ``add_`` (with a scalar-to-tensor copy) per
        parameter. The views keep the state format: each parameter still has its own 0-dim ``step``
        tensor. Runs after the state is created and after every `load_state_dict`.
        """
        self._step_buffer = torch.stack([s["step"] for s in states])
        self._step_views = list(self._step_buffer.unbind())
        for s, view in zip(states, self._step_views, strict=True):
            s["step"] = view
