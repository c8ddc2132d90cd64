"""Hardware drivers: serial transport, Dynamixel Protocol 2.0, servo bus, the serial robot backend.

This package runs on the embedded controller, so it imports only numpy, gymnasium, pyyaml,
pyserial and the interface modules of ``robot_sac`` — never torch or pybullet (a subprocess test
enforces this). The serial backend implements `robot_sac.backend.RobotBackend` and runs the same
conformance suite as the simulator.
"""
