"""The install: constraints.txt pins every dependency at the version installed; XGBoost is an extra asked for in
one line; the pytest warning policy."""

import importlib.metadata
import re
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from icl.evaluation import EvalConfig
from tests.helpers import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def pins() -> dict[str, str]:
    lines = [line.strip() for line in (REPO / "constraints.txt").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+!\-]+", line) for line in lines), "name==version lines only"
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in lines}


def requirements() -> list[Requirement]:
    """The project's own dependencies and those of [dev] and the extras it includes, for this platform."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = [Requirement(r) for r in project["dependencies"] + extras["dev"]]
    included = [r for r in reqs if r.name == "icl"]
    for inc in included:
        reqs += [Requirement(r) for extra in inc.extras for r in extras[extra]]
    return [r for r in reqs if r.name != "icl" and (r.marker is None or r.marker.evaluate())]


def test_constraints_pin_every_dependency_but_torch_at_the_version_installed():
    pinned = pins()
    assert "torch" not in pinned  # an existing (CUDA) torch is kept by make install
    for req in requirements():
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pinned, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{req} excludes its pin {pinned[name]}"
        assert importlib.metadata.version(req.name) == pinned[name], f"{req.name} installed is not the pinned one"


def test_the_xgboost_baseline_asks_for_its_extra_in_one_line(monkeypatch):
    EvalConfig.from_config({**base_eval(), "baselines": ["zero", "xgboost"]})  # installed here ([dev] has [trees])
    monkeypatch.setitem(sys.modules, "xgboost", None)  # as if it were not installed: import fails
    with pytest.raises(ValueError, match=r"pip install -e '\.\[trees\]'"):
        EvalConfig.from_config({**base_eval(), "baselines": ["zero", "xgboost"]})
    EvalConfig.from_config({**base_eval(), "baselines": ["zero", "least_squares"]})  # others need nothing


def base_eval() -> dict:
    import yaml
    return yaml.safe_load((REPO / "configs" / "eval" / "default.yaml").read_text())


def test_our_deprecation_warnings_are_errors_and_third_party_ones_are_named():
    filters = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["filterwarnings"]
    assert "ignore::DeprecationWarning" not in filters  # no blanket ignore
    assert any(f.startswith("error::DeprecationWarning:icl") for f in filters)
    ignored = [f for f in filters if f.startswith("ignore")]
    named = [(f.split(":") + ["", "", "", ""])[1] or (f.split(":") + ["", "", "", ""])[3] for f in ignored]
    assert all(named), "each ignored warning is named by its message or its module"
    import warnings
    with pytest.raises(DeprecationWarning):  # the policy in force in this very test run
        warnings.warn_explicit("old", DeprecationWarning, "icl/x.py", 1, module="icl.x")
