"""Function classes f ~ D_f and the input sampler x ~ N(0, I_d), after Garg et al. (2022).

Every task draws its randomness from an explicit ``torch.Generator`` so a data stream is a pure
function of its seeds (see ``icl.data``). A task knows how to

* ``sample_params(batch, n_active, gen)``: draw one function per prompt (a dict of tensors);
* ``evaluate(params, xs)``: compute ``ys = f(xs)`` for those functions;
* ``loss`` / ``zero_loss``: its training objective and what the zero estimator scores on it.

Dimension truncation (the curriculum): only the first ``n_active`` coordinates of x are non-zero.
Finite pools (``num_tasks``, ``num_training_examples``) reuse a fixed set of functions / input
prompts, each one regenerated from its own index so the pool never has to sit in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from icl.curriculum import CurriculumSpec
from icl.registry import Registry
from icl.spec import require, typed_fields

Params = dict[str, Tensor]

TASKS: Registry[type["Task"]] = Registry("task", "task")


def register(name: str, **meta: Any) -> Callable[[type["Task"]], type["Task"]]:
    """Class decorator: make a task available as ``task=<name>`` (the class learns its name)."""

    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASKS.add(name, cls, **meta)

    return wrap


# Key spaces: the first key of every generator says what it is for, so streams never share seeds.
# (Use four keys everywhere: numpy's SeedSequence treats trailing zeros as absent.)
TRAIN_STREAM, EVAL_STREAM, POOL_FUNCTIONS, POOL_INPUTS = 1, 2, 3, 4


def seeded(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints (well mixed, so neighbouring keys are unrelated)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_xs(batch: int, n_points: int, n_dims: int, n_active: int, gen: torch.Generator) -> Tensor:
    """x ~ N(0, I_d) with coordinates beyond ``n_active`` set to zero: (B, n, d)."""
    xs = torch.randn(batch, n_points, n_dims, generator=gen)
    xs[..., n_active:] = 0.0
    return xs


class Task:
    """A function class. Subclasses set ``metric`` and implement ``sample_params`` and ``evaluate``."""

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "squared_error"  # or "error_rate" for classification
    y_dim: ClassVar[int] = 1  # outputs per point: ys are (B, n) when 1, else (B, n, y_dim) (the MuJoCo tasks)

    def __init__(self, n_dims: int, **params: Any) -> None:
        if n_dims < 1:
            raise ValueError(f"task.n_dims must be >= 1, got {n_dims}")
        self.n_dims = n_dims
        known = self.param_names()
        for key, value in params.items():
            if key not in known:
                raise ValueError(f"task '{self.name}' has no parameter '{key}' (known: {', '.join(known) or 'none'})")
            default = getattr(self, key)
            if isinstance(default, (int, float)) and not isinstance(value, (int, float)) or (
                    isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float)):
                raise ValueError(f"task parameter '{key}' must be of type {type(default).__name__}, got {value!r}")
            setattr(self, key, value)

    @classmethod
    def param_names(cls) -> list[str]:
        """The configurable parameters: annotated class attributes (not ClassVars) up the class chain."""
        names = {k for c in cls.__mro__ for k, v in vars(c).get("__annotations__", {}).items()
                 if "ClassVar" not in str(v)}
        return sorted(names)

    def sample_params(self, batch: int, n_active: int, gen: torch.Generator) -> Params:
        raise NotImplementedError

    def sample_xs(self, batch: int, n_points: int, n_active: int, gen: torch.Generator) -> Tensor:
        """Inputs (B, n, d): N(0, I_d) truncated to ``n_active`` coordinates unless the task has its own."""
        return sample_xs(batch, n_points, self.n_dims, n_active, gen)

    def evaluate(self, params: Params, xs: Tensor) -> Tensor:
        raise NotImplementedError

    def add_noise(self, ys: Tensor, gen: torch.Generator) -> Tensor:
        """Observation noise, drawn from the batch's generator (so pooled functions still get fresh noise)."""
        return ys

    # --- objective -------------------------------------------------------------------------
    def loss(self, preds: Tensor, ys: Tensor) -> Tensor:
        """Training loss: mean squared error over every prediction position."""
        return F.mse_loss(preds, ys)

    def zero_loss(self, ys: Tensor) -> Tensor:
        """The loss of the zero estimator on the same batch (Garg et al.'s relative-loss baseline)."""
        return ys.pow(2).mean()

    def errors(self, preds: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        """Per-(prompt, position) error of ``preds`` and of the zero estimator, for evaluation.

        Vector outputs (B, n, y_dim): the mean over coordinates, which the task standardises so each weighs alike."""
        err, ref = (preds - ys).pow(2), ys.pow(2)
        if ys.ndim == 3:
            return err.mean(-1), ref.mean(-1)
        return err, ref


def _gaussian_w(batch: int, n_dims: int, gen: torch.Generator) -> Tensor:
    return torch.randn(batch, n_dims, generator=gen)


@register("linear")
class Linear(Task):
    """y = scale · w·x with w ~ N(0, I_d)."""

    scale: float = 1.0

    def sample_params(self, batch: int, n_active: int, gen: torch.Generator) -> Params:
        return {"w": _gaussian_w(batch, self.n_dims, gen)}

    def evaluate(self, params: Params, xs: Tensor) -> Tensor:
        return self.scale * torch.einsum("bnd,bd->bn", xs, params["w"])


@register("sparse_linear")
class SparseLinear(Linear):
    """Linear with all but ``sparsity`` coordinates of w zeroed, chosen among the active ones."""

    sparsity: int = 3

    def sample_params(self, batch: int, n_active: int, gen: torch.Generator) -> Params:
        w = _gaussian_w(batch, self.n_dims, gen)
        order = torch.rand(batch, n_active, generator=gen).argsort(dim=1)  # a random permutation per prompt
        keep = torch.zeros(batch, self.n_dims, dtype=torch.bool)
        keep[:, :n_active].scatter_(1, order[:, : min(self.sparsity, n_active)], True)
        return {"w": w * keep}


@register("noisy_linear")
class NoisyLinear(Linear):
    """Linear plus N(0, noise_std²) label noise; ``renormalize`` rescales y to std √d per batch."""

    noise_std: float = 1.0
    renormalize: bool = False

    def add_noise(self, ys: Tensor, gen: torch.Generator) -> Tensor:
        ys = ys + self.noise_std * torch.randn(ys.shape, generator=gen)
        if self.renormalize:
            ys = ys * math.sqrt(self.n_dims) / ys.std()
        return ys


@register("quadratic")
class Quadratic(Linear):
    """y = (x ⊙ x)·w / √3, so y has the same variance as in the linear task."""

    def evaluate(self, params: Params, xs: Tensor) -> Tensor:
        return self.scale * torch.einsum("bnd,bd->bn", xs.pow(2), params["w"]) / math.sqrt(3)


@register("linear_classification")
class LinearClassification(Linear):
    """y = sign(w·x) ∈ {−1, +1}; trained with cross-entropy on logits, scored by error rate."""

    metric = "error_rate"

    def evaluate(self, params: Params, xs: Tensor) -> Tensor:
        return torch.sign(super().evaluate(params, xs))

    def loss(self, preds: Tensor, ys: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(preds, (ys > 0).to(preds.dtype))

    def zero_loss(self, ys: Tensor) -> Tensor:
        return torch.tensor(math.log(2.0))  # a logit of 0 is a coin flip

    def errors(self, preds: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        wrong = (torch.where(preds > 0, 1.0, -1.0) != ys).float()
        return wrong, torch.full_like(wrong, 0.5)  # normalised error: error rate / chance level


@register("relu_2nn")
class Relu2NN(Task):
    """y = √(2/h) · W2ᵀ ReLU(W1ᵀ x), entries N(0, 1), h = ``hidden`` (100).

    The √(2/h) (He) factor keeps E[y²] = E‖x‖² = d, the same scale as the linear task."""

    hidden: int = 100

    def sample_params(self, batch: int, n_active: int, gen: torch.Generator) -> Params:
        return {
            "w1": torch.randn(batch, self.n_dims, self.hidden, generator=gen),
            "w2": torch.randn(batch, self.hidden, generator=gen),
        }

    def evaluate(self, params: Params, xs: Tensor) -> Tensor:
        h = torch.relu(xs @ params["w1"])  # (B, n, h)
        return math.sqrt(2.0 / self.hidden) * torch.einsum("bnh,bh->bn", h, params["w2"])


@register("relu_3nn")
class Relu3NN(Relu2NN):
    """Two hidden ReLU layers of width ``hidden``, He-scaled at each layer (a stretch-list class)."""

    def sample_params(self, batch: int, n_active: int, gen: torch.Generator) -> Params:
        params = super().sample_params(batch, n_active, gen)
        params["w_mid"] = torch.randn(batch, self.hidden, self.hidden, generator=gen)
        return params

    def evaluate(self, params: Params, xs: Tensor) -> Tensor:
        c = math.sqrt(2.0 / self.hidden)
        h = torch.relu(xs @ params["w1"])
        h = torch.relu(c * h @ params["w_mid"])
        return c * torch.einsum("bnh,bh->bn", h, params["w2"])


@register("decision_tree")
class DecisionTree(Task):
    """Complete binary tree of ``depth``; each node tests a coordinate drawn uniformly from all d
    (Garg et al.: inactive coordinates are 0 and so always go left), right iff x[coord] > 0; leaves N(0, 1)."""

    depth: int = 4

    def sample_params(self, batch: int, n_active: int, gen: torch.Generator) -> Params:
        n_nodes = 2**self.depth - 1
        return {
            "coords": torch.randint(0, self.n_dims, (batch, n_nodes), generator=gen),
            "leaves": torch.randn(batch, n_nodes + 1, generator=gen),
        }

    def evaluate(self, params: Params, xs: Tensor) -> Tensor:
        return _eval_tree(params["coords"], params["leaves"], xs, self.depth)


def _eval_tree(coords: Tensor, leaves: Tensor, xs: Tensor, depth: int) -> Tensor:
    """Walk B trees for all n points at once: node i has children 2i+1 (left) and 2i+2 (right)."""
    batch, n, _ = xs.shape
    node = torch.zeros(batch, n, dtype=torch.long)
    for _ in range(depth):
        coord = coords.gather(1, node)  # (B, n): which coordinate this point's node tests
        right = xs.gather(2, coord.unsqueeze(-1)).squeeze(-1) > 0
        node = 2 * node + 1 + right.long()
    return leaves.gather(1, node - (2**depth - 1))


@register("random_forest")
class RandomForest(DecisionTree):
    """Mean of ``n_trees`` independent random trees (a stretch-list class)."""

    n_trees: int = 4

    def sample_params(self, batch: int, n_active: int, gen: torch.Generator) -> Params:
        trees = [super(RandomForest, self).sample_params(batch, n_active, gen) for _ in range(self.n_trees)]
        return {key: torch.stack([t[key] for t in trees], dim=1) for key in trees[0]}

    def evaluate(self, params: Params, xs: Tensor) -> Tensor:
        ys = [
            _eval_tree(params["coords"][:, t], params["leaves"][:, t], xs, self.depth)
            for t in range(self.n_trees)
        ]
        return torch.stack(ys).mean(dim=0)


# --- MuJoCo state transitions (icl/physics.py; docs/mujoco.md) ---------------------------------------------------
SCALE_STREAM = 5  # key space of the fixed reference draw that sets a MuJoCo task's per-coordinate y scale
SCALE_PROMPTS, SCALE_POINTS = 256, 16


class MujocoTask(Task):
    """f = a MuJoCo system whose physical parameters are drawn per prompt from a box prior (``icl.physics``).

    x = (state, action): each state coordinate uniform on ±its range, each action uniform on [-1, 1];
    y = (state after ``frame_skip`` steps of ``timestep`` − state) / ``y_scale``, a vector of ``y_dim`` = state
    coordinates. Delta form: "no change" is the zero estimator, and the delta is small and smooth where the next
    state is dominated by the state itself. ``y_scale`` (per coordinate) is the delta's root mean square on a
    fixed reference draw, so every coordinate weighs alike in the loss and the zero estimator scores ≈ 1 on each.
    ``prior_scale`` shrinks the prior's box around its midpoint (0: every prompt is the nominal system).
    """

    system_name: ClassVar[str] = ""
    frame_skip: int = 2  # simulator steps per transition: 2 × 0.025 s = 0.05 s between states (gymnasium Pendulum's dt)
    timestep: float = 0.025  # 2.5× fewer steps than 5 × 0.01 s for the same 0.05 s (sampling cost: docs/mujoco.md)
    prior_scale: float = 1.0
    _scales: ClassVar[dict[tuple, np.ndarray]] = {}  # y_scale per (system, frame_skip, timestep, prior_scale)

    def __init__(self, n_dims: int, **params: Any) -> None:
        super().__init__(n_dims, **params)
        try:
            from icl import physics
        except ImportError:
            raise ImportError(f"task '{self.name}' needs MuJoCo: pip install -e '.[mujoco]' (or pip install mujoco)") \
                from None
        self.system = physics.system(self.system_name)
        if n_dims != self.system.x_dim:
            raise ValueError(f"task.n_dims must be {self.system.x_dim} for {self.name} ({self.system.state_dim} state + "
                             f"{self.system.n_action} action coordinates), got {n_dims}")
        if self.frame_skip < 1 or self.timestep <= 0 or not 0 <= self.prior_scale <= 1:
            raise ValueError(f"task '{self.name}' needs frame_skip >= 1, timestep > 0 and 0 <= prior_scale <= 1, got "
                             f"{self.frame_skip}, {self.timestep}, {self.prior_scale}")
        self.y_dim = self.system.state_dim  # type: ignore[misc]  # an instance value: fixed by the system
        low, high = (np.array([getattr(p, side) for p in self.system.prior]) for side in ("low", "high"))
        self._mid, self._half = (low + high) / 2, self.prior_scale * (high - low) / 2
        self._x_range = torch.tensor([*self.system.state_range, *[1.0] * self.system.n_action])
        self._sim = None
        self.y_scale = self._reference_scale()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sim": None}  # MjModels stay behind; a DataLoader worker builds its own

    @property
    def simulator(self) -> Any:
        if self._sim is None:
            from icl.physics import Simulator

            self._sim = Simulator(self.system, self.timestep)
        return self._sim

    def sample_params(self, batch: int, n_active: int, gen: torch.Generator) -> Params:
        u = torch.rand(batch, len(self._mid), generator=gen, dtype=torch.float64)
        return {"physics": torch.from_numpy(self._mid) + torch.from_numpy(self._half) * (2 * u - 1)}

    def sample_xs(self, batch: int, n_points: int, n_active: int, gen: torch.Generator) -> Tensor:
        if n_active != self.n_dims:
            raise ValueError(f"task '{self.name}' has no dims curriculum: set task.curriculum.dims.start = "
                             f"task.n_dims = {self.n_dims}")
        return (2 * torch.rand(batch, n_points, self.n_dims, generator=gen) - 1) * self._x_range

    def deltas(self, phys: np.ndarray, xs: Tensor) -> np.ndarray:
        """Raw next state − state (B, n, y_dim), float64, for physical parameters (B, P) at inputs (B, n, d)."""
        x = xs.detach().cpu().double().numpy()
        s = self.system.state_dim
        return self.simulator.step(phys, x[..., :s], x[..., s:], self.frame_skip) - x[..., :s]

    def evaluate(self, params: Params, xs: Tensor) -> Tensor:
        return torch.from_numpy(self.deltas(params["physics"].numpy(), xs) / self.y_scale).float()

    def nominal(self, xs: Tensor) -> Tensor:
        """The nominal system's (prior midpoint) prediction at xs: what a model ignoring the context could use."""
        return torch.from_numpy(self.deltas(np.tile(self._mid, (xs.shape[0], 1)), xs) / self.y_scale).float()

    def _reference_scale(self) -> np.ndarray:
        key = (self.system_name, self.frame_skip, self.timestep, self.prior_scale)
        if key not in self._scales:
            gen = seeded(SCALE_STREAM, 0, 0, 0)
            xs = self.sample_xs(SCALE_PROMPTS, SCALE_POINTS, self.n_dims, gen)
            delta = self.deltas(self.sample_params(SCALE_PROMPTS, self.n_dims, gen)["physics"].numpy(), xs)
            self._scales[key] = np.sqrt((delta**2).mean(axis=(0, 1)))
        return self._scales[key]


@register("mujoco_pendulum", simulator="mujoco")
class MujocoPendulum(MujocoTask):
    """A torque-driven pendulum: x = (θ, ω, u), y = Δ(θ, ω)."""

    system_name = "pendulum"


@register("mujoco_cartpole", simulator="mujoco")
class MujocoCartpole(MujocoTask):
    """A force-driven cart with a free pole: x = (x, θ, ẋ, ω, u), y = Δ(x, θ, ẋ, ω)."""

    system_name = "cartpole"


@register("mujoco_reacher", simulator="mujoco")
class MujocoReacher(MujocoTask):
    """A planar 2-link arm, a motor per joint: x = (θ1, θ2, ω1, ω2, u1, u2), y = Δ(θ1, θ2, ω1, ω2)."""

    system_name = "reacher"


@dataclass(frozen=True)
class TaskSpec:
    """A ``configs/task/*.yaml`` node, checked (``task.params`` by the task class, plus the ranges below)."""

    name: str
    n_dims: int
    params: dict[str, Any] | None
    num_tasks: int | None
    num_training_examples: int | None
    curriculum: CurriculumSpec
    baselines: tuple[str, ...]

    @classmethod
    def from_config(cls, node: dict[str, Any]) -> "TaskSpec":
        values = typed_fields(cls, node, "task", skip=("curriculum",))
        spec = cls(**{**values, "params": dict(values["params"] or {}), "baselines": tuple(values["baselines"] or ()),
                      "curriculum": CurriculumSpec.from_config(values["curriculum"])})
        TASKS.check(spec.name)
        require(spec.n_dims >= 1, "task.n_dims", "must be >= 1", spec.n_dims)
        check_task_params(spec.params or {}, spec.n_dims)
        return spec

    def as_dict(self) -> dict[str, Any]:
        """The plain node (what ``PromptDataModule`` and a checkpoint's hyper-parameters hold)."""
        return {"name": self.name, "n_dims": self.n_dims, "params": dict(self.params or {}),
                "num_tasks": self.num_tasks, "num_training_examples": self.num_training_examples,
                "curriculum": self.curriculum.as_dict(), "baselines": list(self.baselines)}

    @cached_property
    def task(self) -> "Task":
        """The task object, built once per spec (evaluation and the quantisation proof share it)."""
        return build_task(self.name, self.n_dims, self.params)


def check_task_params(params: dict[str, Any], d: int) -> None:
    """Task parameters whose ranges the task classes do not check themselves."""
    if "sparsity" in params:
        require(1 <= params["sparsity"] <= d, "task.params.sparsity",
                f"must be in 1..task.n_dims={d} (non-zero coordinates of w)", params["sparsity"])
    for key in ("depth", "hidden", "n_trees"):
        if key in params:
            require(params[key] >= 1, f"task.params.{key}", "must be >= 1", params[key])
    if "scale" in params and not math.isnan(params["scale"]):  # NaN is allowed: tests force a NaN loss with it
        require(params["scale"] > 0, "task.params.scale", "must be > 0", params["scale"])
    if "noise_std" in params:
        require(params["noise_std"] >= 0, "task.params.noise_std", "must be >= 0", params["noise_std"])


def build_task(name: str, n_dims: int, params: dict[str, Any] | None = None) -> Task:
    """Instantiate a task by its config name, with a one-line error listing the known names."""
    return TASKS[name](n_dims, **(params or {}))


class PromptSampler:
    """Draws batches of prompts (xs, ys) for a task, optionally from finite pools.

    ``num_tasks``: functions come from a fixed pool of that many, function i regenerated from
    ``seeded(POOL_FUNCTIONS, pool_seed, 0, i)``; ``num_training_examples``: input prompts likewise from a fixed pool.
    """

    def __init__(
        self,
        task: Task,
        num_tasks: int | None = None,
        num_training_examples: int | None = None,
        pool_seed: int = 0,
        max_points: int = 0,
    ) -> None:
        for key, value in (("num_tasks", num_tasks), ("num_training_examples", num_training_examples)):
            if value is not None and value < 1:
                raise ValueError(f"task.{key} must be a positive integer or null, got {value}")
        self.task = task
        self.num_tasks = num_tasks
        self.num_training_examples = num_training_examples
        self.pool_seed = pool_seed
        self.max_points = max_points

    def sample(self, batch: int, n_points: int, n_active: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """One batch: xs (B, n, d), ys (B, n), or (B, n, y_dim) for a task with vector outputs."""
        task, d = self.task, self.task.n_dims
        if not 1 <= n_active <= d:
            raise ValueError(f"active dims must be in 1..{d} (task.n_dims), got {n_active}")
        if self.num_training_examples is None:
            xs = task.sample_xs(batch, n_points, n_active, gen)
        else:
            ids = torch.randint(0, self.num_training_examples, (batch,), generator=gen).tolist()
            width = max(n_points, self.max_points)  # fixed width so a prompt's prefix never changes
            xs = torch.cat([task.sample_xs(1, width, n_active, seeded(POOL_INPUTS, self.pool_seed, 0, i)) for i in ids])
            xs = xs[:, :n_points]
        if self.num_tasks is None:
            params = task.sample_params(batch, n_active, gen)
        else:
            ids = torch.randint(0, self.num_tasks, (batch,), generator=gen).tolist()
            pool = [task.sample_params(1, n_active, seeded(POOL_FUNCTIONS, self.pool_seed, 0, i)) for i in ids]
            params = {key: torch.cat([p[key] for p in pool]) for key in pool[0]}
        return xs, task.add_noise(task.evaluate(params, xs), gen)
