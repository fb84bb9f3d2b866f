"""logger=wandb (offline) and logger=mlflow (file store) with the real libraries: curves, summary, eval.csv, figures."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from icl.run.train import train

wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")

STEPS = ["trainer.max_steps=10", "callbacks.model_checkpoint.every_n_train_steps=10"]


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's ``run-<id>.wandb`` (LevelDB log format: 32 KiB blocks of chunks
    ``crc32, length, type`` where type 1 = whole record, 2/3/4 = first/middle/last piece), read with W&B's own schema."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block, records, pending = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B", "not a W&B run file"
    pos = 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def written_records(path: Path, timeout: float = 60.0) -> list:
    """``wandb_records`` once the run's exit record is in the file: W&B's service process writes the offline file
    after ``wandb.finish()`` returns, so under load (CI: two test workers on two cores) an early read can find the
    file still empty of records."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def test_wandb_offline_run_holds_curves_summary_table_and_figures(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    metrics = train(tiny_cfg(*STEPS, "logger=wandb"))
    (run_dir,) = sorted((tmp_path / "wandb").glob("offline-run-*"))  # one offline run, under <job>/wandb
    records = written_records(next(run_dir.glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == f"{tmp_path.parent.name}/{tmp_path.name}"  # no Hydra here: the folder names the run
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item} for r in records if r.HasField("history")]
    assert any("train/loss" in h for h in history), "Lightning's training curve in the same run"
    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    assert summary["eval/error_at_2d"] == pytest.approx(metrics["error_at_2d"])
    table = json.loads(next((run_dir / "files" / "media" / "table").glob("**/*.table.json")).read_text())
    eval_csv = pd.read_csv(tmp_path / "eval.csv")
    assert len(table["data"]) == len(eval_csv) and table["columns"] == list(eval_csv.columns)
    assert list((run_dir / "files" / "media" / "images" / "figures").glob("error_vs_k_standard*.png"))
    assert "artifact" in kinds and "exit" in kinds  # eval.csv as an artifact; the run was finished


def test_mlflow_file_store_holds_curves_summary_eval_csv_and_figures(tiny_cfg, tmp_path):
    store = tmp_path / "mlruns"
    metrics = train(tiny_cfg(*STEPS, "logger=mlflow", f"logger.mlflow.save_dir={store}", "logger.mlflow.name=cell-a"))
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("icl").experiment_id])
    assert run.info.run_name == "cell-a" and run.info.status == "FINISHED"
    assert run.data.metrics["eval_error_at_2d"] == pytest.approx(metrics["error_at_2d"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")], "training curve logged"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "eval.csv" in artifacts and "figures" in artifacts
    local = Path(client.download_artifacts(run.info.run_id, "eval.csv", str(tmp_path / "dl")))
    pd.testing.assert_frame_equal(pd.read_csv(local), pd.read_csv(tmp_path / "eval.csv"))
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")]


def test_a_tracker_that_is_not_installed_or_misconfigured_says_what_to_change(tiny_cfg):
    with pytest.raises(ValueError, match="logger.wandb.mode=sometimes"):
        train(tiny_cfg(*STEPS, "logger=wandb", "logger.wandb.mode=sometimes"))
