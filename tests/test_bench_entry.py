"""The benchmarks' Hydra entry points share one runner (icl.bench.entry): overrides reach ``run``, bad input is one
line and exit 1, and the job keeps its module's name."""

import sys

import pytest
from hydra.core.hydra_config import HydraConfig

from icl.bench.entry import hydra_cli

seen: dict = {}


def record(cfg) -> None:
    seen.update(repeats=cfg.repeats, job=HydraConfig.get().job.name)
    if cfg.repeats < 0:
        raise ValueError("repeats=-1 must be >= 0")


def test_the_runner_hands_the_composed_config_to_run_and_refuses_in_one_line(monkeypatch, tmp_path, capsys):
    cli = hydra_cli(record, "bench_attn")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["icl-bench-attn", "repeats=3"])
    cli()
    assert seen == {"repeats": 3, "job": "test_bench_entry"}  # named after run's module, not icl.bench.entry
    monkeypatch.setattr(sys, "argv", ["icl-bench-attn", "repeats=-1"])
    with pytest.raises(SystemExit) as stop:
        cli()
    assert stop.value.code == 1
    out = capsys.readouterr()
    assert "repeats=-1 must be >= 0" in out.out + out.err and "Traceback" not in out.out + out.err


def test_the_attention_benchmark_runs_through_its_entry_point(monkeypatch, tmp_path, capsys):
    from icl.bench import attention

    monkeypatch.setattr(sys, "argv", ["icl-bench-attn", f"out_dir={tmp_path}", "lengths=[16]", "repeats=1",
                                      "warmup=0", "variants=[softmax,linear]", "modes=[forward]"])
    attention.cli()
    assert (tmp_path / "bench_attn.csv").is_file() and (tmp_path / "bench_attn.md").is_file()
    monkeypatch.setattr(sys, "argv", ["icl-bench", f"out_dir={tmp_path}", "latency.variants=[nope]"])
    from icl.bench import latency

    with pytest.raises(SystemExit) as stop:
        latency.cli()
    assert stop.value.code == 1 and "unknown attention variant(s) ['nope']" in "".join(capsys.readouterr())
