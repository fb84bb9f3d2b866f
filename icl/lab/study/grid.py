"""The study grid a preset selects: ``configs/study/<preset>.yaml`` merges into ``configs/study.yaml``, and a merge
cannot delete keys, so a preset drops an arm or a task by setting it to null (``grid.arms.shared: null``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def active(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with the grid's null arms and tasks left out; a grid with no arm, task or attention left, or an
    attention listed twice, is one error line."""
    grid = dict(cfg["grid"])
    for part in ("arms", "tasks"):
        grid[part] = {name: spec for name, spec in (grid.get(part) or {}).items() if spec is not None}
        if not grid[part]:
            raise ValueError(f"study grid: grid.{part} has no entry left (set at least one to a mapping, not null)")
    attns = list(grid.get("attns") or [])
    if not attns or len(set(attns)) != len(attns):
        raise ValueError(f"study grid: grid.attns must list each attention once, got {attns}")
    return {**cfg, "grid": grid}
