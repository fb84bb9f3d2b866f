"""`pip install .` (not only -e): the wheel carries the configs as package data and the console scripts."""

import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_wheel_ships_configs_and_console_scripts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("icl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert {f"icl/configs/{n}" for n in shipped} <= names
    assert {"icl/run/train.py", "icl/analysis/figures.py", "icl/bench/latency.py", "icl/registry.py", "icl/contract.py",
            "icl/lab/tuning.py"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("icl-train", "icl-evaluate", "icl-figures", "icl-bench", "icl-bench-attn"):
        assert f"{script} = " in scripts
