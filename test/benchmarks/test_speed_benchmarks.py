"""The speed benchmarks (benchmarks/encoder.py, node_pipeline.py, train_step.py, input_paths.py, speed_summary.py)
run on a CPU at their smallest settings and write complete JSON; the summary leaves GPU targets open without a GPU
run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import REPO_ROOT

HEADER_KEYS = {"command", "device", "torch", "timestamp", "settings", "targets"}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("speed_results")


def run_benchmark(script: str, out: Path, *args: str) -> dict:
    """Run `python -m benchmarks.<script>` on the CPU in a subprocess; its JSON report."""
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert set(report) >= HEADER_KEYS, sorted(report)
    assert report["command"].startswith(f"python -m benchmarks.{script} ")
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    return report


@pytest.fixture(scope="module")
def encoder_report(results_dir) -> dict:
    return run_benchmark("encoder", results_dir / "encoder_cpu.json", "--device", "cpu", "--configs", "tiny",
                         "--sizes", "64", "--modalities", "1", "2", "--precisions", "fp32", "bf16", "--warmup", "1",
                         "--repeats", "1", "--matmul-size", "128", "--threads", "2", "--profile")


@pytest.fixture(scope="module")
def node_report(results_dir) -> dict:
    return run_benchmark("node_pipeline", results_dir / "node_pipeline_cpu.json", "--device", "cpu",
                         "--config", "tiny", "--size", "96", "128", "--frames", "2", "--warmup", "1",
                         "--threads", "2", "--profile", "--post-variants")


@pytest.fixture(scope="module")
def train_report(results_dir) -> dict:
    return run_benchmark("train_step", results_dir / "train_step_cpu.json", "--device", "cpu", "--config", "tiny",
                         "--size", "64", "--batch", "1", "--warmup", "0", "--steps", "1", "--threads", "2",
                         "--estimate-memory")


def test_encoder_reports_matmul_rate_flops_timings_and_matching_loop_and_grouped_outputs(encoder_report):
    assert set(encoder_report["matmul"]) == {"fp32", "bf16"}
    assert all(rate["tflops"] > 0 for rate in encoder_report["matmul"].values())
    assert encoder_report["flops_per_image"][0]["flops"] > 0
    cases = encoder_report["cases"]
    assert [(c["precision"], c["modalities"]) for c in cases] == [("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
    for case in cases:
        assert case["flops"] == case["modalities"] * encoder_report["flops_per_image"][0]["flops"]
        for path in ("grouped", "loop"):
            stats = case["timings"][path]
            assert stats["p50_ms"] > 0 and stats["images_per_s"] > 0 and stats["achieved_tflops"] > 0
            assert stats["fraction_of_bf16_matmul"] > 0
        assert case["loop_over_grouped"] > 0
        outputs = case["outputs"]
        assert outputs["match"] and outputs["relative"] <= outputs["tolerance"], case
        assert outputs["output_scale"] > 0
    profile = encoder_report["profiles"][0]
    assert len(profile["top_ops"]) == 10 and profile["top_ops"][0]["self_ms_per_iteration"] > 0
    targets = encoder_report["targets"]
    assert targets["encoder_matmul_fraction"]["status"] == "not-applicable"
    assert targets["grouped_faster_than_loop"]["status"] == "not-applicable"
    assert targets["grouped_matches_loop"]["status"] == "met"


def test_node_pipeline_splits_per_frame_overhead_from_model_time(node_report):
    latency = node_report["latency_ms"]
    assert set(latency) == {"receive", "sync", "decode", "predict", "output_messages", "publish", "total", "model",
                            "pre_post", "overhead"}
    for stage in ("receive", "decode", "predict", "output_messages", "publish", "total", "model"):
        assert latency[stage]["p50_ms"] > 0 and latency[stage]["n"] == 2, stage
    assert latency["total"]["p50_ms"] >= latency["predict"]["p50_ms"]
    assert node_report["modalities"] == ["rgb", "depth", "event", "lidar"]
    assert node_report["profile"]["torch"]["top_ops"] and node_report["profile"]["python"]["top_functions"]
    assert {t["status"] for t in node_report["targets"].values()} == {"not-applicable"}
    assert set(node_report["targets"]) == {"node_p50", "node_p95", "node_overhead"}
    post = node_report["post_processing"]
    assert post["size"] == [96, 128] and post["logits"] == [1, 25, 32, 32]  # the tiny model's 128² / 4
    assert set(post["variants"]) == {f"{how}, {w} confidence" for w in ("with", "without") for how in
                                     ("channels-first definition", "channels-last (the Segmenter's)")}
    for name, stats in post["variants"].items():
        assert stats["p50_ms"] > 0 and stats["n"] == 2 and stats["speedup_vs_definition_with_confidence"] > 0, name
    base = post["variants"]["channels-first definition, with confidence"]
    assert base["speedup_vs_definition_with_confidence"] == 1.0


def test_host_memory_compares_both_policies_in_fresh_processes(results_dir):
    report = run_benchmark("host_memory", results_dir / "host_memory_cpu.json", "--repeats", "2", "--device", "cpu",
                           "--config", "tiny", "--size", "64", "96", "--frames", "2", "--warmup", "1", "--threads", "1")
    assert set(report["p50_ms"]) == {"retain", "default"}
    for policy, runs in report["runs_p50_ms"].items():
        assert len(runs) == 2
        assert report["p50_ms"][policy]["total"] == pytest.approx((runs[0]["total"] + runs[1]["total"]) / 2, rel=1e-3)
    for stage, ratio in report["default_over_retain_p50"].items():
        assert ratio == pytest.approx(report["p50_ms"]["default"][stage] / report["p50_ms"]["retain"][stage],
                                      rel=1e-2), stage
    assert report["node_pipeline_settings"]["host_memory"] == "retain"


def test_inference_thread_times_the_three_thread_layouts(results_dir):
    report = run_benchmark("inference_thread", results_dir / "inference_thread_cpu.json", "--size", "64", "--runs",
                           "2", "--threads", "1")
    assert len(report["forward_p50_ms"]) == 3 and all(ms > 0 for ms in report["forward_p50_ms"].values())
    assert report["relative_to_one_thread"]["built and run on the main thread"] == 1.0


def test_hha_speed_compares_numpy_torch_and_compiled(results_dir):
    report = run_benchmark("hha_speed", results_dir / "hha_speed_cpu.json", "--sizes", "48x64", "--runs", "2",
                           "--threads", "1")
    [case] = report["cases"]
    assert case["size"] == [48, 64]
    assert set(case["variants"]) == {"numpy", "torch eager", "torch.compile (CompiledHHA)"}
    for name, stats in case["variants"].items():
        assert stats["p50_ms"] > 0 and stats["max_level_difference"] <= 1, name
    assert case["variants"]["numpy"]["max_level_difference"] == 0


def test_train_step_measures_and_estimates_both_checkpointing_variants(train_report):
    variants = train_report["variants"]
    assert [v["activation_checkpointing"] for v in variants] == [True, False]
    for variant in variants:
        assert variant["step"]["p50_ms"] > 0 and variant["images_per_s"] > 0
        assert variant["memory"]["peak_bytes"] > 0 and variant["memory"]["method"]
    on, off = train_report["memory_estimates"]
    assert 0 < on["after_forward_gib"] <= off["after_forward_gib"] and off["peak_gib"] > 0
    assert train_report["targets"]["train_batch_fits"]["status"] == "not-applicable"


def test_summary_leaves_gpu_targets_open_after_cpu_runs(results_dir, encoder_report, node_report, train_report):
    subprocess.run([sys.executable, "-m", "benchmarks.speed_summary", "--results", str(results_dir)],
                   check=True, capture_output=True, timeout=60, cwd=REPO_ROOT)
    text = (results_dir / "speed.md").read_text()
    assert "The GPU targets are OPEN" in text and "benchmarks/run_gpu.sh" in text
    target_rows = [line for line in text.splitlines() if "| **" in line]
    assert len(target_rows) == 7 and all("**OPEN**" in row for row in target_rows)


def test_summary_reports_a_missed_gpu_target_with_its_profile(results_dir, encoder_report, tmp_path):
    gpu = dict(encoder_report, device={**encoder_report["device"], "type": "cuda", "name": "NVIDIA H100"})
    gpu["targets"] = {**gpu["targets"], "encoder_matmul_fraction": {
        **gpu["targets"]["encoder_matmul_fraction"], "status": "missed"}}
    (tmp_path / "encoder_nvidia_h100.json").write_text(json.dumps(gpu))
    subprocess.run([sys.executable, "-m", "benchmarks.speed_summary", "--results", str(tmp_path)],
                   check=True, capture_output=True, timeout=60, cwd=REPO_ROOT)
    text = (tmp_path / "speed.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| Encoder at"))
    assert "**MISSED**" in row and "the profile:" in row and encoder_report["profiles"][0]["top_ops"][0]["op"] in row
    assert "The GPU targets are OPEN" not in text


def test_input_paths_times_every_decoding_path_and_the_evt3_decoders(results_dir):
    report = run_benchmark("input_paths", results_dir / "input_paths.json", "--sizes", "48x64", "--events", "20000",
                           "--runs", "1")
    paths = report["sizes"]["48x64"]["ms_per_frame"]
    assert {"camera_jpeg", "camera_png", "depth_compressedDepth_16UC1", "event_window_render",
            "lidar_ouster_128x2048", "projection_only_ouster_64x1024"} <= set(paths)
    assert all(ms > 0 for ms in paths.values())
    assert report["evt3"]["events"] == 20000 and report["evt3"]["library_ratio_vs_faery"] > 0
    assert set(report["targets"]) == {"evt3_decode_20M_events_per_s", "cloud_projection_20M_points_per_s"}
