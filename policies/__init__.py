"""Torch-free policy runtime: ONNX policies, the real-time deploy loop, shipped trained policies.

This package runs on the embedded controller, so it imports only numpy, gymnasium, pyyaml,
pyserial, onnxruntime and the interface modules of ``robot_sac`` — never torch or pybullet (a
subprocess test enforces this).
"""
