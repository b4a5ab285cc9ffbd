"""The README is a user's guide that stays true: its Python example runs as written, its first commands are the
two a newcomer needs, and CI runs exactly the test command it names."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"


def _code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_example_runs(monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)  # the example's paths are relative to the repository, as a user runs it
    namespace: dict = {}
    exec(compile(_code_blocks("python")[0], str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "(128, 128) uint8"  # what the example says it prints
    segmenter, prediction = namespace["segmenter"], namespace["prediction"]
    assert printed[1].split()[0] in segmenter.class_table.names
    # the last call gave two sensors of four: still a label and a confidence for every pixel
    assert prediction.labels.shape == (128, 128) and prediction.labels.dtype == np.uint8
    assert int(prediction.labels.max()) < segmenter.config.num_classes
    assert prediction.confidence is not None and bool(((prediction.confidence > 0)
                                                       & (prediction.confidence <= 1)).all())


def test_readme_opens_with_the_two_commands_and_stays_short():
    text = README.read_text()
    first_block = _code_blocks("bash")[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]
    assert len(text.splitlines()) < 150


def test_ci_runs_the_readme_test_command():
    ci = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-2:] == ["make lint", "make test"]
