"""The training curriculum of Garg et al.: active dims and points per prompt grow in steps.

A schedule is a pure function of the global step, so the curriculum state is one integer; it is
still saved as a dict (step plus the values it implies) so a checkpoint shows what it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from icl.spec import typed_fields


@dataclass(frozen=True)
class Stage:
    """``start`` growing by ``inc`` every ``interval`` steps, capped at ``end``."""

    start: int
    end: int
    inc: int = 1
    interval: int = 2000

    def __post_init__(self) -> None:
        if self.start < 1 or self.end < self.start:
            raise ValueError(f"curriculum stage needs 1 <= start <= end, got start={self.start}, end={self.end}")
        if self.inc < 0 or self.interval < 1:
            raise ValueError(f"curriculum stage needs inc >= 0 and interval >= 1, got {self.inc}, {self.interval}")

    def at(self, step: int) -> int:
        return min(self.end, self.start + self.inc * (step // self.interval))


@dataclass
class Curriculum:
    """Active input dims and points per prompt as functions of the training step."""

    dims: Stage
    points: Stage
    step: int = field(default=0)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Curriculum":
        stages = {}
        for name in ("dims", "points"):
            try:
                stages[name] = Stage(**cfg[name])
            except (TypeError, ValueError) as err:
                hint = " (with a small task.n_dims, lower task.curriculum.dims.start too)" if name == "dims" else ""
                raise ValueError(f"task.curriculum.{name}: {err}{hint}") from None
        return cls(**stages)

    @property
    def n_dims(self) -> int:
        return self.dims.at(self.step)

    @property
    def n_points(self) -> int:
        return self.points.at(self.step)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "n_dims": self.n_dims, "n_points": self.n_points,
                "dims": asdict(self.dims), "points": asdict(self.points)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


@dataclass(frozen=True)
class CurriculumSpec:
    """``task.curriculum``: both stages, every key given (the YAML holds the defaults)."""

    dims: Stage
    points: Stage

    @classmethod
    def from_config(cls, node: dict[str, Any]) -> "CurriculumSpec":
        typed_fields(cls, node, "task.curriculum", skip=("dims", "points"))
        for name in ("dims", "points"):
            typed_fields(Stage, node[name], f"task.curriculum.{name}")
        curriculum = Curriculum.from_config(node)
        return cls(curriculum.dims, curriculum.points)

    def as_dict(self) -> dict[str, Any]:
        return {"dims": asdict(self.dims), "points": asdict(self.points)}

    def start(self) -> Curriculum:
        """A fresh schedule at step 0 (each data module steps its own)."""
        return Curriculum(self.dims, self.points)
