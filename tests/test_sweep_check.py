"""A ``-m`` sweep is checked before it launches: one bad cell fails once, and no job folder is created."""

import pytest

from tests.helpers import FAST, jobs, run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sweep, expected", [
    (["task=linear,sparse_linear", "+optim.lrr=1e-3,2e-3"], "unknown config key 'optim.lrr'"),  # every cell
    (["task=linear,sparse_linear", "optim.lr=1e-3,0"], "optim.lr=0 is not allowed"),  # the 2nd and 4th cells
    (["quant=intx_weight", "quant.group_size=32,48", "seed=0,1"],  # the quant mode tried on the untrained model
     "quant.group_size=48 does not divide the input width"),
])
def test_a_bad_4_job_sweep_fails_before_its_first_job(tmp_path, sweep, expected):
    proc = run(["-m", "icl.train", "-m", *FAST, *sweep, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path,
               check=False)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0 and expected in out and "no job was started" in out
    assert out.count(expected) == 1 and "Traceback" not in proc.stderr
    assert jobs(tmp_path) == [] and not list(tmp_path.glob("sweep/*/")), "a job folder was created"


def test_the_sweep_a_config_declares_is_checked_too():
    from icl.run.spec import sweep_cells, with_sweeper_params

    overrides = with_sweeper_params(["seed=1,2"], {"quant": "none,int8_weight", "seed": "7"})
    assert overrides == ["quant=none,int8_weight", "seed=1,2"]  # the command line's seed wins
    assert len(sweep_cells(overrides)) == 4
    assert with_sweeper_params(["+x=1"], None) == ["+x=1"]
