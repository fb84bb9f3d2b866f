"""Atomic writes: the target is either the old complete file or the new complete one."""

import json
import subprocess
import sys

import pytest

from icl.files import atomic_write, source_hash, write_json
from tests.helpers import ENV


def test_write_json_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "status.json"
    write_json(path, {"status": "running"})
    write_json(path, {"status": "done", "n": 3})
    assert json.loads(path.read_text()) == {"status": "done", "n": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_failed_write_keeps_the_finished_file(tmp_path):
    path = tmp_path / "eval.csv"
    path.write_text("finished\n")

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_text() == "finished\n"


def test_source_hash_follows_module_content_not_path(tmp_path, monkeypatch):
    """The store and the baseline cache key trained models and predictions by this hash."""
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = source_hash(("fakepkg.mod",))
    assert source_hash(("fakepkg.mod",)) == first
    (pkg / "mod.py").write_text("x = 2\n")
    assert source_hash(("fakepkg.mod",)) != first
    with pytest.raises(ModuleNotFoundError, match="no module fakepkg.gone"):
        source_hash(("fakepkg.gone",))


def test_the_fingerprinted_modules_exist():
    """A module moved or renamed without updating these lists fails here, not silently in a stale store."""
    from icl.cache import SOURCES
    from icl.run.store import TRAINING_SOURCES

    assert len(source_hash(TRAINING_SOURCES)) == len(source_hash(SOURCES)) == 16


WRITER = """
import sys
from pathlib import Path
from icl.files import atomic_write

def chunks(tmp, byte):
    with open(tmp, "wb") as f:  # many small writes, so two writers sharing a temporary file would interleave
        for _ in range(64):
            f.write(byte * 1024)
            f.flush()

path, byte = Path(sys.argv[1]), sys.argv[2].encode()
for _ in range(int(sys.argv[3])):
    atomic_write(path, lambda tmp: chunks(tmp, byte))
"""


def test_two_processes_writing_one_file_always_leave_a_whole_file(tmp_path):
    """Two writers replace the same file many times at once; every read (during and after) is one writer's whole
    file, and no temporary file is left behind."""
    path = tmp_path / "figure.png"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), byte, "150"], env=ENV,
                                stderr=subprocess.PIPE, text=True) for byte in "ab"]
    seen = set()
    while any(w.poll() is None for w in writers):
        if path.is_file():
            data = path.read_bytes()
            assert len(data) == 64 * 1024 and len(set(data)) == 1, "a reader saw a mixed or partial file"
            seen.add(data[:1])
    for w in writers:
        assert w.wait() == 0, w.stderr.read()
    data = path.read_bytes()
    assert len(data) == 64 * 1024 and data in (b"a" * 65536, b"b" * 65536)
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_csv_figure_and_npz_writers_leave_whole_files_and_no_temporaries(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from icl.files import save_figure, temporary_files, write_csv, write_npz

    write_csv(tmp_path / "a.csv", pd.DataFrame({"k": [1, 2]}), index=False)
    fig = plt.figure()
    save_figure(tmp_path / "a.png", fig, dpi=20)  # the format comes from the target's suffix, not the tmp name
    plt.close(fig)
    write_npz(tmp_path / "a.npz", {"x": np.arange(3)})
    assert pd.read_csv(tmp_path / "a.csv").k.tolist() == [1, 2]
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.load(tmp_path / "a.npz")["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.npz", "a.png"]
    assert not list(temporary_files(tmp_path))
