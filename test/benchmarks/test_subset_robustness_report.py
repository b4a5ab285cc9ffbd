"""benchmarks/subset_robustness.py on a fresh clone: --restore writes the committed report's runs back, so the
report can be grown with --resume; runs already present and variants whose overrides changed are left alone;
the summary and the Markdown built from restored runs give back the committed figures, and a rebuilt stand-in's
digest is named per run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures import REPO_ROOT

from benchmarks import subset_robustness as bench

COMMITTED = REPO_ROOT / "benchmarks" / "results" / "subset_robustness.json"


def _report_with(tmp_path: Path, edit) -> Path:
    report = json.loads(COMMITTED.read_text())
    edit(report)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def _todays(variants: dict) -> dict:
    """The committed variants that are today's, with today's overrides (the others are history: their options
    were removed or spelled otherwise)."""
    return {n: v for n, v in variants.items() if n in bench.VARIANTS and bench.VARIANTS[n][1] == v["overrides"]}


def test_restored_runs_give_back_the_committed_summary(tmp_path):
    runs = tmp_path / "runs"
    committed = json.loads(COMMITTED.read_text())
    todays = {b: _todays(block["variants"]) for b, block in committed["backbones"].items()}
    assert all("mlesam" in variants and "sam_lora" in variants for variants in todays.values())
    count = sum(len(v["per_seed"]) for variants in todays.values() for v in variants.values())
    assert bench.restore_runs(COMMITTED, runs) == count
    assert bench.restore_runs(COMMITTED, runs) == 0  # nothing is overwritten
    assert not (runs / "random" / "partial_head_shared_detached").exists()  # a removed variant
    backbone, name = "random", "sam_lora"
    record = json.loads((runs / backbone / name / "seed1" / "result.json").read_text())
    assert record["overrides"] == bench.VARIANTS[name][1]
    results = {b: {n: {int(s): json.loads((runs / b / n / f"seed{s}" / "result.json").read_text())
                       for s in v["seeds"]} for n, v in variants.items()}
               for b, variants in todays.items()}
    summary = bench.summarise(results, {"random": None, "standin": Path("standin.pt")})
    for b, variants in todays.items():
        for n, variant in variants.items():
            assert summary[b]["variants"][n]["summary"] == variant["summary"], (b, n)
            assert summary[b]["variants"][n].get("targets") == variant.get("targets"), (b, n)


def test_a_variant_whose_overrides_changed_is_not_restored(tmp_path):
    def change(report):
        report["backbones"]["random"]["variants"]["mlesam"]["overrides"] = ["model.fusion=avg"]

    runs = tmp_path / "runs"
    bench.restore_runs(_report_with(tmp_path, change), runs)
    assert not (runs / "random" / "mlesam").exists()
    assert (runs / "random" / "sam_lora" / "seed1" / "result.json").is_file()


def test_the_markdown_names_the_standin_checkpoint_of_each_run_that_recorded_it(tmp_path):
    def rebuilt(report):
        for block in report["backbones"].values():  # as if only this run had recorded its checkpoint
            for variant in block["variants"].values():
                for figures in variant["per_seed"].values():
                    figures.pop("checkpoint_sha256", None)
        report["backbones"]["standin"]["variants"]["mlesam"]["per_seed"]["0"]["checkpoint_sha256"] = "ab" * 32

    report = json.loads(_report_with(tmp_path, rebuilt).read_text())
    markdown = bench.to_markdown(report)
    standin = markdown.split("## Backbone: standin")[1]
    unrecorded = sum(len(v["per_seed"]) for v in report["backbones"]["standin"]["variants"].values()) - 1
    assert (f"Checkpoint per run (sha256): `{'ab' * 6}`: mlesam/seed0; the other {unrecorded} runs used the file "
            "of an earlier report") in standin
    assert "Checkpoint per run" not in markdown.split("## Backbone: standin")[0]


def test_finished_only_reports_the_standin_runs_without_the_checkpoint_file(tmp_path):
    # a fresh clone has the committed runs but not the stand-in checkpoint they were trained on: reporting them
    # trains nothing, so it must not need the file; training does, and says which file is missing
    missing = tmp_path / "standin_tiny_supervised.pt"
    common = ["--backbones", "random,standin", "--standin", str(missing), "--variants", "mlesam", "--seeds", "0",
              "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"), "--train", "2", "--val", "2",
              "--size", "32", "--threads", "1"]
    with pytest.raises(SystemExit) as refused:
        bench.main(common)
    assert refused.value.code == 2
    assert bench.main([*common, "--restore", str(COMMITTED), "--resume", "--finished-only",
                       "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "subset_robustness.json").read_text())
    committed = json.loads(COMMITTED.read_text())
    for backbone in ("random", "standin"):
        assert report["backbones"][backbone]["variants"]["mlesam"]["per_seed"]["0"] == \
            committed["backbones"][backbone]["variants"]["mlesam"]["per_seed"]["0"]
    assert report["backbones"]["standin"]["checkpoint"] == str(missing)
