"""Where the shipped configs live, and a syntax check that turns a broken YAML file into one line.

Hydra reports a YAML syntax error with a long traceback; ``check_yaml`` runs first in every entry
point so the user instead sees ``error: broken YAML at configs/model/tiny.yaml:3:9: <problem>``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def check_yaml(root: Path = CONFIG_DIR) -> None:
    """Parse every ``*.yaml`` under ``root``; exit with one line naming file, line and column on the first error."""
    for path in sorted(Path(root).rglob("*.yaml")):
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise SystemExit(f"error: broken YAML at {where}: {problem} (fix that file)") from None
