"""`PyBulletBackend`: the simulated arm behind the `RobotBackend` contract.

One DIRECT-mode physics client per instance, every call passes ``physicsClientId`` (the global
default client is never used), so many backends in one process do not interfere. Joints are
position-controlled servos: PyBullet's POSITION_CONTROL motor with the servo's stall torque as
force limit and its no-load speed as velocity clamp. Seeded resets restore a snapshot taken right
after loading (``saveState``/``restoreState``), so solver and contact caches never leak between
episodes and the same seed gives bit-identical trajectories.

PyBullet is imported here and nowhere else in the package.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pybullet as pb

from robot_sac.backend import check_target
from robot_sac.configs import SimConfig
from robot_sac.errors import ConfigError, EnvStateError, NonFiniteObservation
from robot_sac.spec import RobotSpec, RobotState
from sim import resolve_urdf
from sim.randomization import DynamicsSample, nominal, sample_dynamics

GRAVITY_M_S2 = -9.81
TOOL_LINK_NAME = "tool_link"
MAX_MARKERS = 4
"""Marker spheres `render_rgb` can draw; they are created once, before the reset snapshot."""
MARKER_RADIUS_M = 0.008
_HIDDEN_M = (0.0, 0.0, -100.0)  # beyond the camera's far plane
# Camera: front-left of the arm, slightly above, looking at the middle of its workspace.
_CAMERA_TARGET_M = (0.04, 0.0, 0.17)
_CAMERA_DISTANCE_M = 0.85
_CAMERA_YAW_DEG = 135.0
_CAMERA_PITCH_DEG = -25.0
_CAMERA_FOV_DEG = 50.0


def _measure_substeps(spec: RobotSpec, config: SimConfig) -> int:
    """After how many of a period's physics steps the state is read (``sim.measure_at_s``; all when null)."""
    substeps = config.physics_substeps
    if config.measure_at_s is None:
        return substeps
    if config.measure_at_s > spec.dt_s:
        raise ConfigError(
            f"sim.measure_at_s {config.measure_at_s} s is past the control period {spec.dt_s} s; use at most "
            f"{spec.dt_s} (or null for the period's end)"
        )
    return max(1, round(config.measure_at_s / spec.dt_s * substeps))


class PyBulletBackend:
    """A simulated arm that holds a joint-position target for one control period per `step`.

    Follows the `robot_sac.backend.RobotBackend` contract. Physics runs at
    ``spec.dt_s / config.physics_substeps``; ``stamp_s`` is simulated time since the last reset.

    Args:
        spec: the robot; its joint names and limits must match the URDF (checked by `connect`).
        config: the simulator settings, including domain randomization.
        urdf_path: overrides ``config.urdf`` (a bare name there is looked up in ``sim/assets``).
    """

    def __init__(self, spec: RobotSpec, config: SimConfig, urdf_path: Path | None = None) -> None:
        """Store the configuration; `connect` does the work."""
        self._spec = spec
        self._config = config
        self._urdf_path = Path(urdf_path) if urdf_path is not None else resolve_urdf(config.urdf)
        self._measure_substeps = _measure_substeps(spec, config)
        self._client: int | None = None
        self._episode_active = False
        self._diverged = False
        self._rng: np.random.Generator | None = None
        self._dynamics: DynamicsSample | None = None
        self._steps = 0
        self._stamp_s = 0.0
        self._latency: collections.deque[list[float]] = collections.deque()
        self._applied: list[float] = []
        # Filled by connect(): PyBullet ids, index lists and the URDF's nominal model.
        self._body = -1
        self._snapshot = -1
        self._tool_link = -1
        self._markers: list[int] = []
        self._joint_indices: list[int] = []
        self._no_load_speed_rad_s: list[float] = []
        self._mass_kg: list[float] = []
        self._inertia_kg_m2: list[np.ndarray] = []
        self._forces_nm: list[float] = []
        self._position_gains: list[float] = []
        self._velocity_gains: list[float] = []

    # --- RobotBackend --------------------------------------------------------------------------

    @property
    def spec(self) -> RobotSpec:
        """The robot this backend drives."""
        return self._spec

    @property
    def physics_client_id(self) -> int:
        """The PyBullet client id, for tests and inspection tools (never step physics through it)."""
        return self._require_connected()

    @property
    def body_id(self) -> int:
        """The arm's PyBullet body id (its links ``0..dof-1`` are the children of the spec's joints)."""
        self._require_connected()
        return self._body

    @property
    def dynamics(self) -> DynamicsSample:
        """The current episode's physical parameters (nominal unless randomization is enabled)."""
        if self._dynamics is None:
            raise EnvStateError("no dynamics yet: call connect() and reset() first")
        return self._dynamics

    def connect(self) -> None:
        """Create the physics client, load the table and the arm, check the URDF matches ``spec``.

        Idempotent. Raises `ConfigError` (and leaves nothing open) if the URDF is missing or its
        joints differ from the spec.
        """
        if self._client is not None:
            return
        if not self._urdf_path.is_file():
            raise ConfigError(f"sim.urdf: {self._urdf_path} does not exist; give a file in sim/assets or a path")
        self._client = pb.connect(pb.DIRECT)
        if self._client < 0:
            self._client = None
            raise RuntimeError("pybullet.connect(DIRECT) failed: too many physics clients in this process?")
        try:
            self._load_world()
            self._index_joints()
            self._create_markers()
            self._snapshot = pb.saveState(physicsClientId=self._client)
        except BaseException:
            self.close()
            raise

    def reset(self, seed: int | None = None) -> RobotState:
        """Restore the post-load snapshot, draw this episode's dynamics, hold ``spec.home_rad``.

        Args:
            seed: seeds ``np.random.default_rng(seed)`` for the dynamics sample and the sensor noise.
                ``None`` continues the internal generator (fresh entropy if there is none yet).

        Returns:
            The state at home: zero velocity, zero effort (no physics has run), ``stamp_s`` 0.
            After a non-finite state the world is rebuilt from the URDF first.
        """
        self._require_connected()
        if self._diverged:
            # restoreState does not clear NaN from the motors' solver state: rebuild the world.
            self.close()
            self.connect()
            self._diverged = False
        client = self._require_connected()
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        elif self._rng is None:
            self._rng = np.random.default_rng()
        if self._config.randomization.enabled:
            self._dynamics = sample_dynamics(self._config.randomization, self._rng, self._spec.dof)
        else:
            self._dynamics = self._nominal
        pb.restoreState(stateId=self._snapshot, physicsClientId=client)
        self._apply_dynamics(self._dynamics)
        self._apply_servos(self._dynamics)
        home = self._spec.home_rad.tolist()
        self._latency = collections.deque([home] * self._dynamics.action_latency_periods)
        self._applied = home
        self._steps = 0
        self._stamp_s = 0.0
        self._episode_active = True
        return self._read_state(zero_effort=True)

    def step(self, target_rad: np.ndarray) -> RobotState:
        """Command ``target_rad`` (after the latency queue), advance one control period, measure.

        Raises:
            NonFiniteAction, LimitExceeded: from `check_target`, before anything reaches PyBullet.
            EnvStateError: before `connect`/`reset`, or after a non-finite observation.
            NonFiniteObservation: the physics diverged; call `reset`.
        """
        target = check_target(self._spec, target_rad)
        client = self._require_connected()
        if not self._episode_active:
            raise EnvStateError("step() needs a reset() first (after connect() or after a non-finite state)")
        command = target.tolist()
        if self._latency:
            self._latency.append(command)
            command = self._latency.popleft()
        substeps = self._config.physics_substeps
        # Within the period the previous target holds for the command latency, then the new one.
        late = min(substeps, round(self._dynamics_sample().command_latency_s / self._spec.dt_s * substeps))
        state: RobotState | None = None
        for i in range(substeps):
            if i == late or (i == 0 and late == 0):
                self._command(client, command)
            elif i == 0:
                self._command(client, self._applied)
            pb.stepSimulation(physicsClientId=client)
            if i + 1 == self._measure_substeps:
                self._stamp_s = (self._steps + (i + 1) / substeps) * self._spec.dt_s
                state = self._read_state(zero_effort=False)  # the rest of the period runs on, unobserved
        if late == substeps:
            self._command(client, command)  # it lands at the start of the next period
        self._applied = command
        self._steps += 1
        assert state is not None
        return state

    def _command(self, client: int, targets: list[float]) -> None:
        pb.setJointMotorControlArray(
            self._body,
            self._joint_indices,
            pb.POSITION_CONTROL,
            targetPositions=targets,
            forces=self._forces_nm,
            positionGains=self._position_gains,
            velocityGains=self._velocity_gains,
            physicsClientId=client,
        )

    def _dynamics_sample(self) -> DynamicsSample:
        assert self._dynamics is not None  # set by reset(), which step() requires
        return self._dynamics

    def rearm(self) -> None:
        """Nothing latches in a simulator: a no-op (part of the backend contract)."""

    def close(self) -> None:
        """Disconnect the physics client. Idempotent, safe after any failure."""
        client, self._client = self._client, None
        self._episode_active = False
        if client is not None and pb.isConnected(physicsClientId=client):
            pb.disconnect(physicsClientId=client)

    # --- extras: rendering and checks ----------------------------------------------------------

    def render_rgb(self, width: int = 320, height: int = 240, markers_m: Sequence[np.ndarray] = ()) -> np.ndarray:
        """Render the scene headless (TinyRenderer) from the front-left of the arm.

        Args:
            width: image width in pixels.
            height: image height in pixels.
            markers_m: up to `MAX_MARKERS` world positions (each shape (3,), m) drawn as small red
                spheres, e.g. the reach target. They have no collision and no mass: rendering never
                changes the dynamics.

        Returns:
            RGB image, shape (height, width, 3), uint8.
        """
        client = self._require_connected()
        if len(markers_m) > MAX_MARKERS:
            raise ValueError(f"render_rgb draws at most {MAX_MARKERS} markers, got {len(markers_m)}")
        for i, marker in enumerate(self._markers):
            position = _HIDDEN_M
            if i < len(markers_m):
                point = np.asarray(markers_m[i], dtype=np.float64)
                if point.shape != (3,) or not np.isfinite(point).all():
                    raise ValueError(f"marker {i} must be a finite position of shape (3,), got {point!r}")
                position = tuple(point.tolist())
            pb.resetBasePositionAndOrientation(marker, position, (0.0, 0.0, 0.0, 1.0), physicsClientId=client)
        view = pb.computeViewMatrixFromYawPitchRoll(
            _CAMERA_TARGET_M, _CAMERA_DISTANCE_M, _CAMERA_YAW_DEG, _CAMERA_PITCH_DEG, 0.0, 2
        )
        projection = pb.computeProjectionMatrixFOV(_CAMERA_FOV_DEG, width / height, 0.01, 5.0)
        _, _, rgba, _, _ = pb.getCameraImage(
            width, height, view, projection, renderer=pb.ER_TINY_RENDERER, physicsClientId=client
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()

    def end_effector_link_m(self) -> np.ndarray:
        """PyBullet's world position of the URDF's ``tool_link`` frame, shape (3,), m."""
        client = self._require_connected()
        state = pb.getLinkState(self._body, self._tool_link, computeForwardKinematics=True, physicsClientId=client)
        return np.array(state[4], dtype=np.float64)

    def set_joint_positions_rad(self, position_rad: np.ndarray) -> None:
        """Teleport the joints to ``position_rad`` at zero velocity, without physics (tests, debugging).

        Bypasses the servos and the latency queue; the next `step` starts from here.
        """
        client = self._require_connected()
        position = np.asarray(position_rad, dtype=np.float64)
        if position.shape != (self._spec.dof,) or not np.isfinite(position).all():
            raise ValueError(f"position_rad must be finite with shape ({self._spec.dof},), got {position!r}")
        for joint, q in zip(self._joint_indices, position.tolist(), strict=True):
            pb.resetJointState(self._body, joint, q, 0.0, physicsClientId=client)

    # --- internals -----------------------------------------------------------------------------

    def _require_connected(self) -> int:
        if self._client is None:
            raise EnvStateError("the PyBullet backend is not connected: call connect() first")
        return self._client

    def _load_world(self) -> None:
        """Physics settings, the table (a plane) and the arm at home."""
        client = self._client
        pb.setGravity(0.0, 0.0, GRAVITY_M_S2, physicsClientId=client)
        pb.setTimeStep(self._spec.dt_s / self._config.physics_substeps, physicsClientId=client)
        plane = pb.createCollisionShape(pb.GEOM_PLANE, physicsClientId=client)
        table = pb.createVisualShape(
            pb.GEOM_BOX, halfExtents=(0.6, 0.6, 0.002), visualFramePosition=(0.0, 0.0, -0.002),
            rgbaColor=(0.72, 0.62, 0.48, 1.0), physicsClientId=client,
        )  # fmt: skip
        ground = pb.createMultiBody(0.0, plane, table, physicsClientId=client)
        pb.changeDynamics(ground, -1, lateralFriction=1.0, physicsClientId=client)
        self._body = pb.loadURDF(
            str(self._urdf_path),
            useFixedBase=True,
            flags=pb.URDF_USE_INERTIA_FROM_FILE,
            physicsClientId=client,
        )
        pb.changeDynamics(self._body, -1, activationState=pb.ACTIVATION_STATE_DISABLE_SLEEPING, physicsClientId=client)

    def _index_joints(self) -> None:
        """Map spec joints to PyBullet indices, check names and limits, read the nominal model."""
        client = self._client
        count = pb.getNumJoints(self._body, physicsClientId=client)
        infos = [pb.getJointInfo(self._body, j, physicsClientId=client) for j in range(count)]
        by_name = {info[1].decode(): info for info in infos if info[2] == pb.JOINT_REVOLUTE}
        if tuple(by_name) != self._spec.joint_names:
            raise ConfigError(
                f"{self._urdf_path}: revolute joints {list(by_name)} differ from the spec's "
                f"{list(self._spec.joint_names)}; the URDF and the robot YAML must agree"
            )
        tools = [info[0] for info in infos if info[12].decode() == TOOL_LINK_NAME]
        if not tools:
            raise ConfigError(f"{self._urdf_path}: no link named {TOOL_LINK_NAME!r}; add a fixed tool link")
        self._tool_link = tools[0]
        joints = [by_name[name] for name in self._spec.joint_names]
        for joint_spec, info in zip(self._spec.joints, joints, strict=True):
            if (info[8], info[9]) != (joint_spec.lower_rad, joint_spec.upper_rad):
                raise ConfigError(
                    f"{self._urdf_path}: joint {joint_spec.name!r} limits [{info[8]}, {info[9]}] differ from the "
                    f"spec's [{joint_spec.lower_rad}, {joint_spec.upper_rad}] rad"
                )
        self._joint_indices = [info[0] for info in joints]
        # The servo's speed clamp: its no-load speed (URDF), or the Velocity_Limit the serial driver
        # writes from the same robot YAML (drivers/servo_setup.eeprom_settings) when that is lower, as
        # the servos (and the emulator) enforce it. Without it the simulated servo ran at no-load speed,
        # reached each 20 ms target early in the period and read 4x slower than the arm at the sample.
        self._no_load_speed_rad_s = np.minimum([info[11] for info in joints], self._spec.max_velocity_rad_s).tolist()
        dyn = [pb.getDynamicsInfo(self._body, j, physicsClientId=client) for j in self._joint_indices]
        self._mass_kg = [d[0] for d in dyn]
        self._inertia_kg_m2 = [np.array(d[2], dtype=np.float64) for d in dyn]
        self._nominal = nominal(
            self._spec.dof, lateral_friction=dyn[0][1], joint_damping_nm_s_rad=[info[6] for info in joints]
        )
        self._forces_nm = self._spec.max_effort_nm.tolist()
        # Replace PyBullet's default velocity motors (which would brake the joints) by torque-free ones;
        # reset() then switches every joint to the position servo.
        pb.setJointMotorControlArray(
            self._body, self._joint_indices, pb.VELOCITY_CONTROL, forces=[0.0] * self._spec.dof,
            physicsClientId=client,
        )  # fmt: skip
        for joint, q in zip(self._joint_indices, self._spec.home_rad.tolist(), strict=True):
            pb.resetJointState(self._body, joint, q, 0.0, physicsClientId=client)

    def _create_markers(self) -> None:
        """Visual-only, massless spheres for `render_rgb`, created before the snapshot."""
        client = self._client
        shape = pb.createVisualShape(
            pb.GEOM_SPHERE, radius=MARKER_RADIUS_M, rgbaColor=(0.9, 0.05, 0.05, 1.0), physicsClientId=client
        )
        self._markers = [
            pb.createMultiBody(0.0, -1, shape, basePosition=_HIDDEN_M, physicsClientId=client)
            for _ in range(MAX_MARKERS)
        ]

    def _apply_dynamics(self, sample: DynamicsSample) -> None:
        """Set every moving link's mass, inertia, friction and joint damping (all of them, every reset)."""
        for i, link in enumerate(self._joint_indices):
            scale = sample.link_mass_scale[i]
            pb.changeDynamics(
                self._body,
                link,
                mass=self._mass_kg[i] * scale,
                localInertiaDiagonal=(self._inertia_kg_m2[i] * scale).tolist(),
                lateralFriction=sample.lateral_friction,
                jointDamping=sample.joint_damping_nm_s_rad[i],
                physicsClientId=self._client,
            )

    def _apply_servos(self, sample: DynamicsSample) -> None:
        """Position servos holding home: stall torque, scaled gains, scaled speed clamp.

        ``maxVelocity`` (the motor's right-hand-side clamp) is only settable per joint; it persists
        through the per-step `setJointMotorControlArray` calls, which set targets, forces and gains.
        """
        gains = np.asarray(sample.actuator_gain_scale)
        self._position_gains = (self._config.position_gain * gains).tolist()
        self._velocity_gains = (self._config.velocity_gain * gains).tolist()
        home = self._spec.home_rad.tolist()
        for i, joint in enumerate(self._joint_indices):
            pb.setJointMotorControl2(
                self._body,
                joint,
                pb.POSITION_CONTROL,
                targetPosition=home[i],
                targetVelocity=0.0,
                force=self._forces_nm[i],
                positionGain=self._position_gains[i],
                velocityGain=self._velocity_gains[i],
                maxVelocity=self._no_load_speed_rad_s[i] * sample.max_velocity_scale[i],
                physicsClientId=self._client,
            )

    def _read_state(self, *, zero_effort: bool) -> RobotState:
        """One getJointStates call, sensor noise, finiteness check."""
        states = pb.getJointStates(self._body, self._joint_indices, physicsClientId=self._client)
        # rows: position (rad), velocity (rad/s), applied motor torque (N·m)
        measured = np.array([(s[0], s[1], s[3]) for s in states], dtype=np.float64).T.copy()
        if zero_effort:  # the motors' last impulses are stale (even NaN after a divergence)
            measured[2] = 0.0
        if not np.isfinite(measured).all():
            self._episode_active = False
            self._diverged = True
            raise NonFiniteObservation(
                f"simulated joint state is not finite: {measured.tolist()}; the physics diverged, call reset()"
            )
        position, velocity, effort = measured
        sample = self._dynamics
        assert sample is not None and self._rng is not None  # set by reset()
        if sample.position_noise_rad > 0.0:
            position += self._rng.normal(0.0, sample.position_noise_rad, self._spec.dof)
        if sample.velocity_noise_rad_s > 0.0:
            velocity += self._rng.normal(0.0, sample.velocity_noise_rad_s, self._spec.dof)
        return RobotState(position_rad=position, velocity_rad_s=velocity, effort_nm=effort, stamp_s=self._stamp_s)
