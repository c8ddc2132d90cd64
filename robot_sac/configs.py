"""Configuration schemas for envs and training runs (frozen dataclasses, loaded by `config_loader`).

Defaults live here and only here. A YAML file under ``configs/`` overrides some of them; CLI
``--set key.path=value`` overrides go through the same validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from robot_sac.config_loader import load_config, param
from robot_sac.errors import ConfigError
from robot_sac.safety import SafetyConfig

REPO_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""The ``configs/`` directory of a source checkout or editable install."""


_MAX_STABLE_VELOCITY_GAIN = 1.5
"""PyBullet's position servo oscillates from a velocity gain of about 1.9 (measured on arm4)."""


def _check_range(name: str, bounds: tuple[float, float]) -> None:
    if bounds[0] > bounds[1]:
        raise ConfigError(f"{name}: the range [{bounds[0]}, {bounds[1]}] is empty; write it as [low, high]")


@dataclass(frozen=True, kw_only=True)
class ArmReachConfig:
    """The ArmReach task: move the end effector to a random reachable point."""

    horizon_steps: int = param(100, ge=1, le=100_000, doc="episode length; episodes end by truncation here")
    success_threshold_m: float = param(0.01, unit="m", gt=0.0, le=0.5, doc="success when the tip is this close")
    action_penalty: float = param(0.01, ge=0.0, le=10.0, doc="reward weight of |a|^2 (a in policy units)")
    velocity_penalty: float = param(0.001, ge=0.0, le=10.0, doc="reward weight of |qdot|^2 (rad^2/s^2)")
    precision_reward: float = param(
        1.0, ge=0.0, le=100.0, doc="weight of the bonus exp(-(d/precision_scale_m)^2) that sharpens the optimum"
    )
    precision_scale_m: float = param(0.02, unit="m", gt=0.0, le=1.0, doc="width of the precision bonus")
    settle_penalty: float = param(
        0.1, ge=0.0, le=10.0, doc="weight of exp(-(d/precision_scale_m)^2)·|qdot|^2: speed near the target costs"
    )
    target_min_height_m: float = param(0.03, unit="m", ge=-1.0, le=1.0, doc="targets sit above the table")
    target_min_radius_m: float = param(0.08, unit="m", ge=0.0, le=1.0, doc="targets keep clear of the base")
    target_max_azimuth_rad: float = param(
        1.5708, unit="rad", gt=0.0, le=3.1416, doc="targets lie within this angle of the arm's front (x axis)"
    )


@dataclass(frozen=True, kw_only=True)
class RandomizationConfig:
    """Domain randomization of the simulator, sampled once per episode when ``enabled``.

    Each range is ``[low, high]`` and sampled uniformly; scales multiply the URDF's nominal values.
    When disabled the nominal model is used (no latency, no noise).
    """

    enabled: bool = param(False, doc="sample the ranges below at every reset")
    link_mass_scale: tuple[float, float] = param((0.8, 1.2), gt=0.0, le=10.0, doc="multiplies each link mass")
    lateral_friction: tuple[float, float] = param((0.5, 1.2), ge=0.0, le=5.0, doc="link surface friction coefficient")
    joint_damping_nm_s_rad: tuple[float, float] = param(
        (0.0, 0.05), unit="N·m·s/rad", ge=0.0, le=10.0, doc="viscous joint damping"
    )
    actuator_gain_scale: tuple[float, float] = param((0.7, 1.3), gt=0.0, le=10.0, doc="multiplies the servo gain")
    max_velocity_scale: tuple[float, float] = param(
        (0.8, 1.2), gt=0.0, le=10.0, doc="multiplies the servo's speed limit"
    )
    action_latency_periods: tuple[int, int] = param(
        (0, 1), ge=0, le=10, doc="commands take effect this many control periods late"
    )
    command_latency_s: tuple[float, float] = param(
        (0.0, 0.0),
        unit="s",
        ge=0.0,
        le=0.5,
        doc="more command delay within the period: the new target applies this late (the serial round trip)",
    )
    position_noise_rad: tuple[float, float] = param((0.0, 0.002), unit="rad", ge=0.0, le=0.5, doc="encoder noise std")
    velocity_noise_rad_s: tuple[float, float] = param(
        (0.0, 0.02), unit="rad/s", ge=0.0, le=5.0, doc="velocity estimate noise std"
    )

    def __post_init__(self) -> None:
        """Every range must be ordered."""
        for name in (
            "link_mass_scale",
            "lateral_friction",
            "joint_damping_nm_s_rad",
            "actuator_gain_scale",
            "max_velocity_scale",
            "action_latency_periods",
            "command_latency_s",
            "position_noise_rad",
            "velocity_noise_rad_s",
        ):
            _check_range(name, getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """The PyBullet backend."""

    urdf: str = param("arm4.urdf", doc="URDF file name in sim/assets, or a path")
    physics_substeps: int = param(8, ge=1, le=100, doc="physics steps per control period")
    position_gain: float = param(0.3, gt=0.0, le=1.0, doc="servo position gain (PyBullet positionGain)")
    velocity_gain: float = param(1.0, ge=0.0, le=1.5, doc="servo velocity gain (PyBullet velocityGain)")
    measure_at_s: float | None = param(
        None,
        unit="s",
        gt=0.0,
        le=1.0,
        doc="when in each control period the state is read (rounded to a physics "
        "step); null: at its end. The serial driver reads at period - transaction budget (0.012 s at 50 Hz)",
    )
    randomization: RandomizationConfig = param(RandomizationConfig)

    def __post_init__(self) -> None:
        """The randomized velocity gain must stay where PyBullet's servo is stable (measured: < ~1.9)."""
        scale = self.randomization.actuator_gain_scale[1] if self.randomization.enabled else 1.0
        if self.velocity_gain * scale > _MAX_STABLE_VELOCITY_GAIN:
            raise ConfigError(
                f"velocity_gain {self.velocity_gain} x randomization.actuator_gain_scale high end {scale} = "
                f"{self.velocity_gain * scale:.2f} exceeds {_MAX_STABLE_VELOCITY_GAIN}, where the simulated servo "
                "oscillates; lower one of them"
            )


@dataclass(frozen=True, kw_only=True)
class SerialConfig:
    """The serial backend: Dynamixel X-series servos on a Protocol 2.0 bus (``drivers/``)."""

    port: str = param("", doc="pyserial URL: /dev/ttyUSB0, the pty printed by `robot-sac emulate`, loop://")
    baud_rate: int = param(1_000_000, ge=9600, le=10_500_000, doc="bus speed in bit/s (the servos' baud_rate)")
    calibration: str = param("calibration/arm4.json", doc="joint/servo map JSON, relative to configs/ or absolute")
    transaction_timeout_s: float | None = param(
        None, unit="s", gt=0.0, le=1.0, doc="one request/reply's budget; null: 0.4 control periods (SAFETY.md #1)"
    )
    fault_cycles: int = param(2, ge=1, le=10, doc="consecutive failed cycles before a comm fault is raised")
    bus_watchdog_s: float = param(
        0.1, unit="s", ge=0.0, le=2.54, doc="servos stop when no instruction arrives for this long; 0 disables"
    )
    return_delay_s: float = param(0.0, unit="s", ge=0.0, le=0.000508, doc="servo reply delay (2 µs units)")
    homing_speed_rad_s: float = param(0.5, unit="rad/s", gt=0.0, le=3.0, doc="joint speed while homing in reset")
    homing_tolerance_rad: float = param(0.01, unit="rad", gt=0.0, le=0.5, doc="homing ends this close to home")
    homing_timeout_s: float = param(15.0, unit="s", gt=0.0, le=120.0, doc="homing that takes longer is a fault")
    close_action: Literal["hold", "torque_off"] = param(
        "hold", doc="what close() leaves the servos doing: hold (arm stays up) or torque_off (only if supported)"
    )

    def calibration_path(self, config_dir: Path = REPO_CONFIG_DIR) -> Path:
        """The calibration JSON's path: absolute as written, else under ``config_dir``."""
        path = Path(self.calibration)
        return path if path.is_absolute() else config_dir / path


@dataclass(frozen=True, kw_only=True)
class NormalizationConfig:
    """Running observation normalization (mean/variance), clipped at ±clip_sigma."""

    enabled: bool = param(True, doc="normalize observations for the policy")
    clip_sigma: float = param(5.0, gt=0.0, le=100.0, doc="normalized values are clipped to ±clip_sigma")
    epsilon: float = param(1e-8, gt=0.0, le=1.0, doc="added to the variance before the square root")


@dataclass(frozen=True, kw_only=True)
class EnvConfig:
    """Everything `make_env` needs besides the backend itself."""

    robot: str = param("robots/arm4.yaml", doc="robot YAML, relative to the configs/ directory or absolute")
    task: ArmReachConfig = param(ArmReachConfig)
    backend: Literal["pybullet", "serial"] = param("pybullet", doc="the simulator, or servos on a serial port")
    sim: SimConfig = param(SimConfig)
    serial: SerialConfig = param(SerialConfig)
    safety: SafetyConfig = param(SafetyConfig)
    normalization: NormalizationConfig = param(NormalizationConfig)

    def robot_path(self, config_dir: Path = REPO_CONFIG_DIR) -> Path:
        """The robot YAML's path: absolute as written, else under ``config_dir``.

        Raises:
            ConfigError: the file does not exist (with the fix).
        """
        path = Path(self.robot)
        path = path if path.is_absolute() else config_dir / path
        if not path.is_file():
            raise ConfigError(
                f"robot: {path} does not exist. Relative paths are read under {config_dir} (the configs/ "
                "directory of a source checkout installed with `pip install -e .`); give an absolute path otherwise"
            )
        return path


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """MLP shape shared by the actor, the critics and (SAC-v1) the value network."""

    hidden_sizes: tuple[int, ...] = param((256, 256), ge=1, le=8192, doc="layer widths")
    activation: Literal["relu", "tanh", "elu", "silu"] = param("relu", doc="hidden-layer nonlinearity")
    layer_norm: bool = param(False, doc="LayerNorm after each hidden linear layer (before the activation)")
    log_std_min: float = param(-20.0, ge=-50.0, le=0.0, doc="actor log-std clamp, low end (softlearning/SB3)")
    log_std_max: float = param(2.0, ge=-10.0, le=10.0, doc="actor log-std clamp, high end")

    def __post_init__(self) -> None:
        """The clamp range must be ordered."""
        _check_range("log_std_min/log_std_max", (self.log_std_min, self.log_std_max))


@dataclass(frozen=True, kw_only=True)
class SACConfig:
    """SAC hyperparameters (Haarnoja et al. 2018b, table 1 defaults) and the algorithm variant."""

    variant: Literal["v2", "v1"] = param(
        "v2", doc="v2: twin Q, target Q, learned alpha (2018b); v1: adds a soft value net V and target V (2018)"
    )
    actor_gradient: Literal["reparameterization", "likelihood_ratio"] = param(
        "reparameterization",
        doc="likelihood_ratio: grad log pi * (alpha log pi - Q + V), for policies that cannot be reparameterized",
    )
    learning_rate: float = param(3e-4, gt=0.0, le=1.0, doc="Adam step size for actor, critics and temperature")
    gamma: float = param(0.99, ge=0.0, lt=1.0, doc="discount factor")
    tau: float = param(0.005, gt=0.0, le=1.0, doc="Polyak factor of the target networks")
    batch_size: int = param(256, ge=1, le=65_536, doc="transitions per gradient step")
    buffer_size: int = param(1_000_000, ge=1, le=100_000_000, doc="replay capacity in transitions")
    learning_starts: int = param(5_000, ge=0, doc="env steps of uniform random actions before updates start")
    alpha: float | None = param(None, gt=0.0, le=100.0, doc="fixed temperature; null learns it")
    initial_alpha: float = param(1.0, gt=0.0, le=100.0, doc="starting temperature when it is learned")
    target_entropy: float | None = param(None, le=0.0, doc="null means -|A| (the paper's heuristic)")
    goal_relabel_ratio: float = param(
        0.0, ge=0.0, le=1.0, doc="share of each minibatch given hindsight goals (HER 'future'; goal tasks only)"
    )
    goal_relabel_horizon_steps: int = param(
        100, ge=1, le=100_000, doc="hindsight goals come from this many steps ahead"
    )
    real_batch_fraction: float = param(
        0.5, ge=0.0, le=1.0, doc="share of each minibatch from real (robot) transitions once enough exist; 0: uniform"
    )
    min_real_transitions: int = param(
        500, ge=1, le=10**8, doc="real transitions stored before real_batch_fraction applies (uniform until then)"
    )
    reward_scale: float = param(1.0, gt=0.0, le=1000.0, doc="rewards are multiplied by this before the backup")
    updates_per_step: float = param(1.0, gt=0.0, le=64.0, doc="gradient updates per env step (UTD ratio)")
    target_update_interval: int = param(1, ge=1, le=10_000, doc="gradient updates between Polyak target updates")
    actor_update_interval: int = param(1, ge=1, le=100, doc="gradient updates between actor/alpha updates (delay)")
    max_grad_norm: float | None = param(None, gt=0.0, le=1e6, doc="clip each network's gradient norm; null: off")
    network: NetworkConfig = param(NetworkConfig)
    device: Literal["auto", "cpu", "cuda"] = param("auto", doc="auto picks CUDA when present, CPU otherwise")
    cpu_threads: int | None = param(
        None, ge=1, le=256, doc="torch CPU threads; null: OMP_NUM_THREADS if set, else min(cores, 4)"
    )


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The training run: length, evaluation, checkpoints, logging."""

    total_steps: int = param(50_000, ge=1, le=10**9, doc="env steps to train for")
    eval_interval_steps: int = param(5_000, ge=1, doc="env steps between deterministic evaluations")
    eval_episodes: int = param(10, ge=1, le=10_000, doc="episodes per evaluation")
    checkpoint_interval_steps: int = param(10_000, ge=1, doc="env steps between checkpoints")
    keep_checkpoints: int = param(3, ge=1, le=100, doc="newest checkpoints kept on disk")
    log_interval_steps: int = param(1_000, ge=1, doc="env steps between metric rows")
    save_replay: bool = param(True, doc="store the replay buffer in checkpoints (needed for an exact resume)")


@dataclass(frozen=True, kw_only=True)
class HardwareActorConfig:
    """The hardware actor: the robot on a serial port, collecting at its control rate (never throttled)."""

    enabled: bool = param(False, doc="run one hardware actor beside the simulation actors (local runtime)")
    robot: str | None = param(
        None, doc="robot YAML for the hardware (e.g. a stricter *_finetune.yaml); null: the env's robot"
    )
    serial: SerialConfig = param(SerialConfig)
    drift_sigma: float = param(
        4.0, gt=0.0, le=100.0, doc="warn when real observations lie beyond this many sim standard deviations"
    )
    realtime_priority: int = param(
        0, ge=0, le=99, doc="SCHED_FIFO priority of the hardware actor's loop where the OS allows (e.g. 20); 0: normal"
    )
    budget_steps: int | None = param(
        None,
        ge=1,
        le=10**9,
        doc="real transitions to collect, counting a resumed run's: the run ends when they are in, whatever the "
        "simulation actors beside the robot collected (robot-sac finetune --budget-s); null: run.total_steps alone",
    )
    sim_actor_niceness: int = param(
        19,
        ge=0,
        le=19,
        doc="niceness of the simulation actors while the hardware actor runs, so that they take only the CPU time "
        "the robot's loop, its resets and the learner leave (0: equal shares)",
    )


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Where Ray actors run (``runtime.mode: ray``)."""

    address: str | None = param(
        None, doc="Ray cluster address (auto or head:6379; run the learner on a cluster node); null: a local instance"
    )
    num_cpus: int | None = param(None, ge=1, le=4096, doc="CPUs of the local instance; null: Ray's detection")
    actor_num_cpus: float = param(1.0, gt=0.0, le=64.0, doc="CPUs reserved per Ray actor")
    call_timeout_s: float = param(
        10.0, unit="s", gt=0.0, le=600.0, doc="deadline of every remote call between actors and the learner"
    )


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How collection and learning are arranged: one loop, or actors and a learner."""

    mode: Literal["sync", "local", "ray"] = param(
        "local",
        doc="sync: one process steps and learns in turn; local: actor processes feed a learner; ray: Ray actors",
    )
    actors: int | None = param(None, ge=0, le=4096, doc="simulation actors (local, ray); null: cores - 1, at least 1")
    max_actor_lead_steps: int = param(
        1_000, ge=1, le=10**7, doc="env steps the actors may run ahead of the learner's ingestion (throttle)"
    )
    publish_interval_updates: int = param(
        50, ge=1, le=10**6, doc="gradient updates between weight + statistics publications to the actors"
    )
    chunk_steps: int = param(50, ge=1, le=100_000, doc="env steps per transition chunk (an episode end sends early)")
    queue_chunks: int = param(64, ge=1, le=100_000, doc="transition queue capacity; a full queue drops (counted)")
    heartbeat_timeout_s: float = param(
        3.0, unit="s", gt=0.0, le=600.0, doc="a peer silent this long is presumed dead (actors stop, learner restarts)"
    )
    hardware: HardwareActorConfig = param(HardwareActorConfig)
    ray: RayConfig = param(RayConfig)

    def __post_init__(self) -> None:
        """A chunk must fit in the lead; an asynchronous run needs an actor; hardware needs a port."""
        if self.chunk_steps > self.max_actor_lead_steps:
            raise ConfigError(
                f"runtime.chunk_steps={self.chunk_steps} exceeds runtime.max_actor_lead_steps="
                f"{self.max_actor_lead_steps}; an actor could never fill a chunk. Lower chunk_steps or raise the lead"
            )
        if self.actors == 0 and not self.hardware.enabled:
            raise ConfigError("runtime.actors=0 leaves no actor to collect; set it >= 1 or enable runtime.hardware")
        if self.hardware.enabled and not self.hardware.serial.port:
            raise ConfigError(
                "runtime.hardware.enabled needs runtime.hardware.serial.port (e.g. /dev/ttyUSB0, or the pty "
                "`robot-sac emulate` prints)"
            )
        if self.hardware.enabled and self.mode != "local":
            raise ConfigError(f"runtime.hardware runs in the local runtime; set runtime.mode=local (not {self.mode})")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A training run: the env, the learner and the run settings."""

    seed: int = param(0, ge=0, le=2**31 - 1, doc="seeds numpy, torch and the envs")
    env_id: str | None = param(
        None, doc="a registered gymnasium id with Box spaces (e.g. Pendulum-v1); null: ArmReach built from `env`"
    )
    env: EnvConfig = param(EnvConfig)
    sac: SACConfig = param(SACConfig)
    run: RunConfig = param(RunConfig)
    runtime: RuntimeConfig = param(RuntimeConfig)


def load_env_config(path: str | Path, overrides: tuple[str, ...] = ()) -> EnvConfig:
    """Load ``configs/envs/<name>.yaml``."""
    return load_config(EnvConfig, path, overrides)


def load_train_config(path: str | Path, overrides: tuple[str, ...] = ()) -> TrainConfig:
    """Load ``configs/train/<name>.yaml``."""
    return load_config(TrainConfig, path, overrides)
