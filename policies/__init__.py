"""Torch-free policy runtime: ONNX policies, the real-time deploy loop, shipped trained policies.

This package runs on the embedded controller, so it imports only numpy, gymnasium, pyyaml,
pyserial, onnxruntime and the interface modules of ``robot_sac`` — never torch or pybullet (a
subprocess test enforces this).

Modules (import them directly; this package imports nothing):

- `policies.onnx_policy`: `OnnxPolicy` (verify, check the contract, warm up, infer) and
  `expected_contract`.
- `policies.deploy`: `DeployLoop`, the onboard real-time loop; `policies.deploy_config`: its `DeployConfig`.
- `policies.deploy_report`: the run report (``deploy_report.json``) and the fault ring buffer.
- `policies.pacing`: when commands go out (sleep on a deadline grid, backend-paced, free-running).
- `policies.signals`: SIGINT/SIGTERM as a stop flag; the second signal aborts.

Shipped policies (data, made by the project's own pipeline; see each directory's README.md for the
command that reproduces it): ``policies/arm_reach`` — ArmReach on the rs_arm4 arm, `SHIPPED_ARM_REACH`.
"""

from pathlib import Path

SHIPPED_ARM_REACH = Path(__file__).resolve().parent / "arm_reach"
"""The shipped ArmReach policy directory (policy.onnx, manifest.json, policy_torch.pt)."""
