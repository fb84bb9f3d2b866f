"""Atomic writes: the target is either the old complete file or the new complete one."""

import json

import pytest

from icl.files import atomic_write, write_json


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
