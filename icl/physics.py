"""MuJoCo systems behind the ``mujoco_<system>`` tasks: MJCF written here, a prior over physical parameters,
and batched transitions through the official bindings (``pip install mujoco``; the ``mujoco`` extra).

A ``System`` is one mechanism with a parameter vector ``p`` (masses, lengths, damping, gravity, actuator gain):

* ``xml(p)`` is its MJCF with those values written in, so a freshly compiled model is the reference;
* ``apply(model, p)`` writes ``p`` into an already compiled ``MjModel``, which is what sampling does, because
  compiling a model per prompt costs milliseconds while writing a handful of fields costs microseconds
  (``tests/test_physics.py`` checks the two agree transition for transition);
* ``prior`` is a box: each parameter uniform on ``[low, high]``; its midpoint is the *nominal* system.

Every body carries an explicit point-mass inertial (mass at the link's end, a tiny rotational inertia
``POINT_INERTIA`` so MuJoCo accepts it) and no geoms: nothing collides, contacts are disabled, there are no joint
limits, so the dynamics are the smooth rigid-body equations and nothing else. The integrator is MuJoCo's default
semi-implicit Euler, whose joint damping is integrated implicitly (stable for light links with strong damping).

``transitions(system, models, p, states, actions, frame_skip)`` runs every (prompt, point) from its own state for
``frame_skip`` steps in one ``mujoco.rollout`` call (single thread, so deterministic) and returns the next states.
This module is imported lazily by ``icl.tasks`` so the rest of the package works without MuJoCo installed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import mujoco
import numpy as np
from mujoco import rollout

POINT_INERTIA = 1e-4  # kg m²: the rotational inertia of each point mass about its own centre (MuJoCo needs > 0)
STATE_SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS  # what mujoco.rollout reads and writes: time, qpos, qvel


@dataclass(frozen=True)
class Prior:
    """One physical parameter, uniform on [low, high]; the midpoint is its nominal value."""

    name: str
    low: float
    high: float
    unit: str = ""

    @property
    def nominal(self) -> float:
        return 0.5 * (self.low + self.high)


@dataclass(frozen=True)
class System:
    """A mechanism: its MJCF template, parameters, state/action layout and the input distribution.

    ``state_range[i]``: state coordinate i is drawn uniform on ±state_range[i]; actions uniform on [-1, 1]
    (every actuator has ctrlrange [-1, 1]; its gain is a parameter)."""

    name: str
    template: str  # MJCF with {timestep} and one {field} per prior name
    prior: tuple[Prior, ...]
    state_names: tuple[str, ...]  # qpos coordinates, then qvel coordinates
    state_range: tuple[float, ...]
    n_action: int
    apply: Callable[[mujoco.MjModel, np.ndarray], None]

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def x_dim(self) -> int:
        """Width of one input x = (state, action)."""
        return self.state_dim + self.n_action

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.prior)

    def nominal(self) -> np.ndarray:
        return np.array([p.nominal for p in self.prior])

    def xml(self, params: np.ndarray, timestep: float) -> str:
        """The MJCF of the system with these parameter values (the reference ``apply`` is tested against)."""
        if len(params) != len(self.prior):
            raise ValueError(f"{self.name} takes {len(self.prior)} parameters ({', '.join(self.param_names)}), "
                             f"got {len(params)}")
        return self.template.format(timestep=timestep, inertia=POINT_INERTIA,
                                    **{p.name: float(v) for p, v in zip(self.prior, params)})

    def compile(self, params: np.ndarray | None = None, timestep: float = 0.01) -> mujoco.MjModel:
        model = mujoco.MjModel.from_xml_string(self.xml(self.nominal() if params is None else params, timestep))
        if model.nq + model.nv != self.state_dim or model.nu != self.n_action:
            raise AssertionError(f"{self.name}: MJCF has nq+nv={model.nq + model.nv}, nu={model.nu}")
        return model


_OPTION = '<option timestep="{timestep}" gravity="0 0 -{gravity}"><flag contact="disable"/></option>'
_INERTIA = 'diaginertia="{inertia} {inertia} {inertia}"'

# θ = 0 hangs straight down; the motor's torque is gear · u, u ∈ [-1, 1].
PENDULUM_XML = f"""<mujoco model="pendulum">
  {_OPTION}
  <worldbody>
    <body name="pole">
      <joint name="hinge" type="hinge" axis="0 1 0" damping="{{damping}}"/>
      <inertial pos="0 0 -{{length}}" mass="{{mass}}" {_INERTIA}/>
    </body>
  </worldbody>
  <actuator><motor name="torque" joint="hinge" gear="{{gear}}" ctrlrange="-1 1" ctrllimited="true"/></actuator>
</mujoco>"""


def _apply_pendulum(model: mujoco.MjModel, p: np.ndarray) -> None:
    mass, length, damping, gravity, gear = p
    model.body_mass[1] = mass
    model.body_ipos[1] = (0.0, 0.0, -length)
    model.dof_damping[0] = damping
    model.opt.gravity[2] = -gravity
    model.actuator_gear[0, 0] = gear


# A cart on a rail (slide joint, force gear · u) carrying a pole (hinge); θ = 0 is upright.
CARTPOLE_XML = f"""<mujoco model="cartpole">
  {_OPTION}
  <worldbody>
    <body name="cart">
      <joint name="slider" type="slide" axis="1 0 0" damping="{{cart_damping}}"/>
      <inertial pos="0 0 0" mass="{{cart_mass}}" {_INERTIA}/>
      <body name="pole">
        <joint name="hinge" type="hinge" axis="0 1 0" damping="{{pole_damping}}"/>
        <inertial pos="0 0 {{pole_length}}" mass="{{pole_mass}}" {_INERTIA}/>
      </body>
    </body>
  </worldbody>
  <actuator><motor name="force" joint="slider" gear="{{gear}}" ctrlrange="-1 1" ctrllimited="true"/></actuator>
</mujoco>"""


def _apply_cartpole(model: mujoco.MjModel, p: np.ndarray) -> None:
    cart_mass, pole_mass, pole_length, gravity, cart_damping, pole_damping, gear = p
    model.body_mass[1:3] = (cart_mass, pole_mass)
    model.body_ipos[2] = (0.0, 0.0, pole_length)
    model.dof_damping[:] = (cart_damping, pole_damping)
    model.opt.gravity[2] = -gravity
    model.actuator_gear[0, 0] = gear


# Two links in the horizontal plane (hinges about z, so gravity does no work: it is not a parameter), each a point
# mass at its end, a torque motor at the shoulder and at the elbow — gymnasium's Reacher without the target.
REACHER_XML = f"""<mujoco model="reacher">
  <option timestep="{{timestep}}" gravity="0 0 -9.81"><flag contact="disable"/></option>
  <worldbody>
    <body name="upper">
      <joint name="shoulder" type="hinge" axis="0 0 1" damping="{{damping1}}"/>
      <inertial pos="{{length1}} 0 0" mass="{{mass1}}" {_INERTIA}/>
      <body name="lower" pos="{{length1}} 0 0">
        <joint name="elbow" type="hinge" axis="0 0 1" damping="{{damping2}}"/>
        <inertial pos="{{length2}} 0 0" mass="{{mass2}}" {_INERTIA}/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="shoulder" joint="shoulder" gear="{{gear1}}" ctrlrange="-1 1" ctrllimited="true"/>
    <motor name="elbow" joint="elbow" gear="{{gear2}}" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>"""


def _apply_reacher(model: mujoco.MjModel, p: np.ndarray) -> None:
    mass1, mass2, length1, length2, damping1, damping2, gear1, gear2 = p
    model.body_mass[1:3] = (mass1, mass2)
    model.body_ipos[1] = (length1, 0.0, 0.0)
    model.body_pos[2] = (length1, 0.0, 0.0)
    model.body_ipos[2] = (length2, 0.0, 0.0)
    model.dof_damping[:] = (damping1, damping2)
    model.actuator_gear[:, 0] = (gear1, gear2)


SYSTEMS: dict[str, System] = {
    "pendulum": System(
        "pendulum", PENDULUM_XML,
        (Prior("mass", 0.5, 1.5, "kg"), Prior("length", 0.5, 1.5, "m"), Prior("damping", 0.0, 0.2, "N m s/rad"),
         Prior("gravity", 5.0, 15.0, "m/s²"), Prior("gear", 0.5, 2.0, "N m")),
        ("theta", "omega"), (np.pi, 3.0), 1, _apply_pendulum),
    "cartpole": System(
        "cartpole", CARTPOLE_XML,
        (Prior("cart_mass", 0.5, 1.5, "kg"), Prior("pole_mass", 0.05, 0.5, "kg"), Prior("pole_length", 0.3, 1.0, "m"),
         Prior("gravity", 5.0, 15.0, "m/s²"), Prior("cart_damping", 0.0, 0.5, "N s/m"),
         Prior("pole_damping", 0.0, 0.05, "N m s/rad"), Prior("gear", 5.0, 15.0, "N")),
        ("x", "theta", "x_dot", "omega"), (1.0, np.pi, 2.0, 3.0), 1, _apply_cartpole),
    "reacher": System(
        "reacher", REACHER_XML,
        (Prior("mass1", 0.5, 1.5, "kg"), Prior("mass2", 0.5, 1.5, "kg"), Prior("length1", 0.3, 0.7, "m"),
         Prior("length2", 0.3, 0.7, "m"), Prior("damping1", 0.02, 0.2, "N m s/rad"),
         Prior("damping2", 0.02, 0.2, "N m s/rad"), Prior("gear1", 0.5, 1.5, "N m"), Prior("gear2", 0.5, 1.5, "N m")),
        ("theta1", "theta2", "omega1", "omega2"), (np.pi, np.pi, 3.0, 3.0), 2, _apply_reacher),
}


class Simulator:
    """One compiled system plus a growing list of model copies, one per prompt of a batch.

    ``mujoco.rollout`` takes a model per rollout; prompts get their own copy (parameters written by
    ``System.apply``), the points of a prompt share it. Not thread-safe: each DataLoader worker is its own process."""

    def __init__(self, system: System, timestep: float) -> None:
        self.system = system
        self.base = system.compile(timestep=timestep)
        self.models: list[mujoco.MjModel] = []
        self.data = mujoco.MjData(self.base)  # one MjData: mujoco.rollout runs single-threaded
        if mujoco.mj_stateSize(self.base, STATE_SPEC) != 1 + system.state_dim:
            raise AssertionError(f"{system.name}: unexpected full-physics state size")

    def _models_for(self, params: np.ndarray) -> list[mujoco.MjModel]:
        while len(self.models) < len(params):
            self.models.append(copy.copy(self.base))
        for model, p in zip(self.models, params):
            self.system.apply(model, p)
        return self.models[: len(params)]

    def step(self, params: np.ndarray, states: np.ndarray, actions: np.ndarray, frame_skip: int) -> np.ndarray:
        """Next states (B, n, S) after ``frame_skip`` steps from states (B, n, S) under actions (B, n, A) held
        constant, for prompt b's parameters ``params[b]``; float64."""
        batch, n, s = states.shape
        models = self._models_for(params)
        per_rollout = [models[b] for b in range(batch) for _ in range(n)]
        init = np.concatenate([np.zeros((batch * n, 1)), states.reshape(batch * n, s)], axis=1)
        control = actions.reshape(batch * n, 1, -1).astype(np.float64)
        out, _ = rollout.rollout(per_rollout, self.data, init, control, nstep=frame_skip)
        return out[:, -1, 1:].reshape(batch, n, s)


def system(name: str) -> System:
    if name not in SYSTEMS:
        raise ValueError(f"unknown MuJoCo system '{name}'; choose one of: {', '.join(SYSTEMS)}")
    return SYSTEMS[name]
