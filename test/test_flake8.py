"""ament_flake8 over the package with the project's flake8 settings (setup.cfg [flake8]), as `colcon test` runs it."""

from pathlib import Path

import pytest
from ament_flake8.main import main_with_errors

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# virtual environments and colcon's build/install/log folders are not package sources
EXCLUDED = [".venv", ".venv-ros-tools", "build", "install", "log"]


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8_finds_no_errors(monkeypatch):
    monkeypatch.chdir(PACKAGE_ROOT)
    rc, errors = main_with_errors(argv=["--config", "setup.cfg", "--exclude", *EXCLUDED])
    assert rc == 0, f"{len(errors)} flake8 errors:\n" + "\n".join(errors)
