"""The committed study page is what `python -m icl.study` writes from the committed cells alone (issue 25: "its output
in a fresh clone equals the committed RESULTS.md"), run in a temporary folder so nothing in the repository is written."""

import shutil
import subprocess

import pytest

from tests.helpers import REPO, run

INPUTS = ("docs/study/cells", "docs/study/tuning", "docs/study/bench.csv")  # what the page reads (configs/study.yaml)
TABLES = ("claims.csv", "failures.csv", "overview.csv", "verdicts.csv")


def repo_state() -> str:
    """git's view of what `icl.study` would write in the repository (only those paths: an edit elsewhere in docs/
    while the test runs is not the study's write)."""
    return subprocess.run(["git", "status", "--porcelain", "--", "docs/RESULTS_STUDY.md", "docs/study", "README.md"],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_the_committed_page_is_regenerated_from_the_committed_cells(tmp_path):
    if not (REPO / ".git").exists():
        pytest.skip("needs the git checkout's committed cells")
    for path in INPUTS:  # the committed files at the paths configs/study.yaml names, as in a fresh clone
        source, copy = REPO / path, tmp_path / path
        copy.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, copy)
    before = repo_state()
    run(["-m", "icl.study", "readme=null"], cwd=tmp_path)  # default paths, relative to the temporary folder
    assert repo_state() == before                                                # the repository was not written
    # the page holds no wall-clock line (its Cost line sums the cells' committed seconds): compared whole
    page = (tmp_path / "docs" / "RESULTS_STUDY.md").read_text()
    assert page == (REPO / "docs" / "RESULTS_STUDY.md").read_text(), (
        "docs/RESULTS_STUDY.md is stale: regenerate it with `python -m icl.study` and commit it")
    for name in TABLES:
        assert (tmp_path / "docs" / "study" / name).read_text() == (REPO / "docs" / "study" / name).read_text(), name
