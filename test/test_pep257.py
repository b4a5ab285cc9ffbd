"""ament_pep257 over the package: ament's convention plus the project's docstring style, as `colcon test` runs it.

The project writes the summary on the opening line and lets it run over several lines, not always in the imperative,
and starts summaries with identifiers (HxW, mIoU, SegmentConfig): D205, D209, D213, D400, D401, D402, D403, D415 are
off; every other ament_pep257 check applies.
"""

from pathlib import Path

import pytest
from ament_pep257.main import main

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
EXCLUDED = [".venv", ".venv-ros-tools", "build", "install", "log"]
PROJECT_IGNORES = ["D205", "D209", "D213", "D400", "D401", "D402", "D403", "D415"]


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257_finds_no_errors(monkeypatch, capsys):
    monkeypatch.chdir(PACKAGE_ROOT)
    rc = main(argv=[".", "--add-ignore", *PROJECT_IGNORES, "--exclude", *EXCLUDED])
    report = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("checking ")]
    assert rc == 0, "\n".join(report)
