"""Where the shipped configs live, and a syntax check that turns a broken YAML file into one line.

The configs are the package ``icl.configs`` (``configs/`` of the checkout, mapped in pyproject.toml), so an
editable install and a wheel (``pip install .``) find them alike. Hydra reports a YAML syntax error with a long
traceback; ``check_yaml`` runs first in every entry point so the user instead sees
``error: broken YAML at configs/model/tiny.yaml:3:9: <problem>``.
"""

from __future__ import annotations

import importlib.resources
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml


def _config_dir() -> Path:
    """``configs/`` beside the imported ``icl`` package when run from a source checkout (also one put first on
    PYTHONPATH), else the installed package data."""
    beside = Path(__file__).resolve().parents[2] / "configs"
    if (beside / "train.yaml").is_file():
        return beside
    return Path(str(importlib.resources.files("icl.configs")))


CONFIG_DIR = _config_dir()
HYDRA_CONFIGS = str(CONFIG_DIR)  # config_path of every @hydra.main (an absolute path)


_PASSED: set[tuple[tuple[str, int, int], ...]] = set()  # config trees already parsed whole in this process


def check_yaml(root: Path = CONFIG_DIR) -> None:
    """Parse every ``*.yaml`` under ``root``; exit with one line naming file, line and column on the first error.
    A tree already checked in this process, unchanged (same files, sizes and modification times), is not parsed
    again: entry points call this both through ``run_cli`` and from their ``main``."""
    paths = sorted(Path(root).rglob("*.yaml"))
    state = tuple((str(p), (st := p.stat()).st_mtime_ns, st.st_size) for p in paths)
    if state in _PASSED:
        return
    for path in paths:
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise SystemExit(f"error: broken YAML at {where}: {problem} (fix that file)") from None
    _PASSED.add(state)


def run_cli(main: Callable[[], object]) -> None:
    """What every Hydra entry point does first: one-line YAML errors, then the Hydra ``main``.

    configs/hydra/launcher/*.yaml deliberately share the plugins' names (hydra/launcher=joblib keeps working) and are
    validated against the plugins' schemas; Hydra 1.3 still does that but warns it is deprecated: silenced here.
    """
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")
    check_yaml()
    main()


@contextmanager
def refusals(*errors: type[BaseException]) -> Iterator[None]:
    """A command's bad input (one of ``errors``) ends it with the error's one line and exit 1, no traceback."""
    try:
        yield
    except errors as err:
        logging.getLogger("icl").error("%s", err)
        raise SystemExit(1) from None
