"""Turn the speed benchmarks' JSON (encoder_*, node_pipeline_*, host_memory_*, train_step_*.json) into speed.md: each of
issue 8's targets met, missed or open with its figure and the command that measured it, where the time goes
(profiles), and the measurements.

    python -m benchmarks.speed_summary [--results benchmarks/results] [--out benchmarks/results/speed.md]

A target counts as met or missed only from a GPU run; CPU runs give indicative figures and leave it open.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import RESULTS_DIR

KINDS = ("encoder", "node_pipeline", "host_memory", "train_step")
TARGETS = {  # id -> the wording
    "node_p50": "Node end-to-end p50 ≤ 25 ms per synchronised frame (≥ 40 Hz)",
    "node_p95": "Node end-to-end p95 ≤ 35 ms",
    "encoder_matmul_fraction": "Encoder at ≥ 35 % of the measured bf16 matmul rate",
    "grouped_faster_than_loop": "Grouped pass faster than the loop at every M ≥ 2 (ratio)",
    "grouped_matches_loop": "Grouped and loop outputs identical within bf16 tolerance",
    "node_overhead": "Node overhead outside the model ≤ 5 % of model time",
    "train_batch_fits": "Training: batch 6 at 1024² fits (80 GB); images/s",
}


def load_results(folder: Path) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """The result files of each benchmark, oldest first."""
    results = {}
    for kind in KINDS:
        files = [(path, json.loads(path.read_text())) for path in sorted(folder.glob(f"{kind}_*.json"))]
        results[kind] = sorted(files, key=lambda item: item[1].get("timestamp", ""))
    return results


def is_gpu(report: dict[str, Any]) -> bool:
    return report["device"]["type"] == "cuda"


def target_rows(results: dict[str, list[tuple[Path, dict[str, Any]]]]) -> list[list[str]]:
    """One row per target: wording, status (met / missed from the newest GPU run, else open), figure, source."""
    rows = []
    for key, wording in TARGETS.items():
        found = [(path, report, report["targets"][key]) for files in results.values() for path, report in files
                 if key in report.get("targets", {})]
        gpu = [item for item in found if is_gpu(item[1]) and item[2]["status"] != "not-applicable"]
        if gpu:  # several GPU runs (e.g. the node eager and with CUDA graphs): the newest that met it, else newest
            best = next((item for item in reversed(gpu) if item[2]["status"] == "met"), gpu[-1])
            path, report, entry = best
            status = f"**{entry['status'].upper()}**"
            figure = entry["figure"]
            if entry["status"] == "missed" and digest(report):
                figure += f"; the profile: {digest(report)}"
            figure += "".join(f"; {other[0].name}: {other[2]['status']}, {other[2]['figure']}"
                              for other in gpu if other is not best)
            source = f"{report['device']['name']}: `{report['command']}` ({path.name})"
        elif found:
            status = "**OPEN**"
            figures = []
            for path, _, entry in found:
                prefix = f"on CPU {entry['status']}: " if entry["status"] in ("met", "missed") else ""
                figures.append(f"{prefix}{entry['figure']} [{path.name}]")
            figure = "no GPU measurement; CPU, indicative only: " + " / ".join(figures)
            source = "; ".join(f"`{report['command']}`" for _, report, _ in found)
        else:
            status, figure, source = "**OPEN**", "not measured", "—"
        rows.append([wording, status, figure, source])
    return rows


def top_ops(profile: dict[str, Any], count: int = 3) -> str:
    """'aten::addmm 31%, aten::_softmax 27%, ...' of a stored profile."""
    return ", ".join(f"{op['op']} {op['share']:.0%}" for op in profile["top_ops"][:count])


def digest(report: dict[str, Any]) -> str:
    """Where a run's time goes, in one line: top ops of its profile; for the node also the largest stages."""
    if report.get("profiles"):
        return "; ".join(f"{p['config']} {p['size']}² {p['precision']} M={p['modalities']}: {top_ops(p)}"
                         for p in report["profiles"])
    if report.get("latency_ms"):
        latency = report["latency_ms"]
        stages = sorted(((name, latency[name]["p50_ms"]) for name in
                         ("receive", "sync", "decode", "pre_post", "output_messages", "publish")),
                        key=lambda item: item[1], reverse=True)
        text = (f"overhead p50 {latency['overhead']['p50_ms']:.1f} ms: "
                + ", ".join(f"{name} {ms:.1f} ms" for name, ms in stages[:3]))
        if report.get("profile"):
            text += f"; ops: {top_ops(report['profile']['torch'])}"
        return text
    return ""


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def run_line(path: Path, report: dict[str, Any]) -> str:
    load = report.get("load_average_at_start")
    return (f"`{report['command']}` → `{path.name}`; {report['device']['name']}, torch {report['torch']}, "
            f"{report['timestamp']}" + (f", load average at start {load[0]}" if load else ""))


def profile_lines(title: str, profile: dict[str, Any]) -> list[str]:
    rows = [[op["op"][:70], op["self_ms_per_iteration"], f"{op['share']:.1%}", op["calls_per_iteration"]]
            for op in profile["top_ops"]]
    return [f"{title} — {profile['clock']}, {profile['total_ms_per_iteration']} ms per iteration in all:", "",
            *table(["op", "ms / iteration", "share", "calls"], rows), ""]


def encoder_section(path: Path, report: dict[str, Any]) -> list[str]:
    lines = [f"### Encoder — {report['device']['name']}", "", run_line(path, report), "",
             "Dense matmul rate measured in the run: " + ", ".join(
                 f"{k} {v['tflops'] * 1000:.1f} GFLOP/s (n={v['n']})" for k, v in report["matmul"].items())
             + ". Encoder FLOPs per modality image (torch.utils.flop_counter): " + ", ".join(
                 f"{f['config']} {f['size']}² {f['flops'] / 1e9:.2f} GFLOP"
                 + (" (counted, not timed)" if f.get("counted_only") else "") for f in report["flops_per_image"])
             + (f"; issue 8 puts Hiera-B+ at 1024² at ~{report['issue_tflop_hiera_b+_1024'] * 1000:.0f} GFLOP"
                if "issue_tflop_hiera_b+_1024" in report else "") + ".", ""]
    rows = []
    for c in report["cases"]:
        if "timings" not in c:
            rows.append([c["config"], c["size"], c["precision"], c["compile"], c["modalities"], c["skipped"],
                         "", "", "", "", "", ""])
            continue
        g, lp = c["timings"]["grouped"], c["timings"]["loop"]
        rows.append([c["config"], c["size"], c["precision"], c["compile"], c["modalities"], f"{g['p50_ms']:.2f}",
                     f"{lp['p50_ms']:.2f}", f"{c['loop_over_grouped']:.2f}x", f"{g['images_per_s']:.1f}",
                     f"{g['achieved_tflops'] * 1000:.1f}", f"{g['fraction_of_bf16_matmul']:.1%}",
                     f"{c['outputs']['relative']:.1e} ({'ok' if c['outputs']['match'] else 'NO'})"])
    return lines + table(["config", "size", "precision", "compile", "M", "grouped p50 ms", "loop p50 ms",
                          "loop/grouped", "images/s", "GFLOP/s", "of bf16 matmul", "loop vs grouped (rel.)"],
                         rows) + [""]


def node_section(path: Path, report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    lines = [f"### Node pipeline — {report['device']['name']}", "", run_line(path, report), "",
             f"Model {s['config']} at {report['model_image_size']}², {s['precision']}, "
             f"{report.get('model_alone', 'eager')}"
             + (f" (node settings: {', '.join(s['set'])})" if s.get("set") else "") + "; four sensors at "
             f"{s['size'][0]}x{s['size'][1]} ({s['messages']} messages, depth as {report['depth_encoding']}), "
             f"{s['frames']} frames after {s['warmup']} warm-up.", ""]
    rows = [[name, f"{v['p50_ms']:.2f}", f"{v['p95_ms']:.2f}", f"{v['mean_ms']:.2f}"]
            for name, v in report["latency_ms"].items()]
    lines += table(["stage", "p50 ms", "p95 ms", "mean ms"], rows) + [""]
    post = report.get("post_processing")
    if post:
        c, h, w = post["logits"][1], *post["size"]
        lines += [f"Post-processing alone (`--post-variants`): {c}-class logits {post['logits'][2]}² -> labels and "
                  f"confidence at {h}x{w}:", ""]
        rows = [[name, f"{stats['p50_ms']:.2f}", f"{stats['speedup_vs_definition_with_confidence']:.2f}x"]
                for name, stats in post["variants"].items()]
        lines += table(["variant", "p50 ms", "vs the definition with confidence"], rows) + [""]
    return lines


def profile_section(path: Path, report: dict[str, Any]) -> list[str]:
    """The stored profiles of one run (encoder: per config and size; node: torch ops and Python functions)."""
    lines = [f"Encoder ({path.name}): {digest(report)}.", ""] if report.get("profiles") else []
    for profile in report.get("profiles", []):
        lines += profile_lines(f"Encoder ({path.name}), {profile['config']} {profile['size']}² "
                               f"{profile['precision']} M={profile['modalities']} grouped", profile)
    profile = report.get("profile")
    if profile:
        lines += [f"Node pipeline ({path.name}): {digest(report)}.", ""]
        lines += profile_lines("torch.profiler over a frame", profile["torch"])
        python = profile["python"]
        rows = [[f["function"][:80], f["own_ms_per_frame"], f["calls_per_frame"]] for f in python["top_functions"]]
        lines += [f"cProfile — {python['clock']}:", "", *table(["function", "ms / frame", "calls"], rows), ""]
    return lines


def host_memory_section(path: Path, report: dict[str, Any]) -> list[str]:
    s = report["node_pipeline_settings"]
    runs = len(next(iter(report["runs_p50_ms"].values())))
    lines = [f"### Node pipeline under both host-memory policies — {report['device']['name']}", "",
             run_line(path, report), "",
             f"Model {s['config']}, sensors {s['size'][0]}x{s['size'][1]}; per policy the median of {runs} "
             f"runs' p50, each run a fresh process (`mlesam_core.host_memory`: glibc's default against keeping "
             f"freed memory).", ""]
    p50 = report["p50_ms"]
    rows = [[stage, f"{p50['default'][stage]:.2f}", f"{p50['retain'][stage]:.2f}", f"{ratio:.2f}x"]
            for stage, ratio in report["default_over_retain_p50"].items()]
    return lines + table(["stage", "default p50 ms", "retain p50 ms", "default / retain"], rows) + [""]


def train_section(path: Path, report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    lines = [f"### Training step — {report['device']['name']}", "", run_line(path, report), "",
             f"{s['config']} {s['size']}², batch {s['batch']} x {report['modalities']} modalities, {s['precision']}, "
             f"{report['trainable_parameters']:,} trainable parameters.", ""]
    if report["variants"]:
        rows = []
        for v in report["variants"]:
            name = "on" if v["activation_checkpointing"] else "off"
            if "out_of_memory" in v:
                rows.append([name, "out of memory", "", "", "", ""])
                continue
            m = v["memory"]
            rows.append([name, f"{v['step']['p50_ms']:.1f}", f"{v['samples_per_s']:.2f}", f"{v['images_per_s']:.2f}",
                         f"{m['peak_gib']:.2f}", f"{m['peak_minus_start_gib']:.2f} ({m['method']})"])
        lines += table(["checkpointing", "step p50 ms", "samples/s", "images/s", "peak GiB",
                        "peak over start GiB (how)"], rows) + [""]
    if report.get("memory_estimates"):
        rows = [["on" if e["activation_checkpointing"] else "off", e["peak_gib"], e["after_forward_gib"],
                 e["parameters_and_buffers_gib"]] for e in report["memory_estimates"]]
        lines += [f"Estimated without running it ({report['memory_estimates'][0]['method']}):", "",
                  *table(["checkpointing", "peak GiB", "after forward GiB", "parameters + buffers GiB"], rows), ""]
    return lines


def render(results: dict[str, list[tuple[Path, dict[str, Any]]]]) -> str:
    """speed.md's text."""
    any_gpu = any(is_gpu(report) for files in results.values() for _, report in files)
    lines = ["# Speed: issue 8's targets and measurements", "",
             "*Written by `python -m benchmarks.speed_summary` from the JSON files beside it; regenerate, do not "
             "edit.*", ""]
    if not any_gpu:
        lines += ["> **The GPU targets are OPEN.** No GPU was available in the session that produced these "
                  "results, so none of the targets (all stated for Hiera-B+, four modalities, 1024², bf16, one "
                  "H100) could be measured. Everything below was measured on a shared 2-core CPU and is "
                  "indicative only (other jobs ran on the machine; the load average is in each JSON). On a machine "
                  "with an H100: `bash benchmarks/run_gpu.sh` writes the GPU JSON files here and rewrites this "
                  "file.", ""]
    lines += ["## Targets (Hiera-B+, four modalities, 1024², bf16, one H100)", "",
              *table(["target", "status", "figure", "measured by"], target_rows(results)), ""]
    lines += ["## Where the time goes", "",
              "From the profiles stored in the JSON (`--profile`): the encoder's top ops by self time, and the "
              "node's per-frame work by op (torch.profiler) and by Python function (cProfile). On a GPU the "
              "op profile is by device time.", ""]
    for files in results.values():
        for path, report in files:
            lines += profile_section(path, report)
    sections = {"encoder": encoder_section, "node_pipeline": node_section, "host_memory": host_memory_section,
                "train_step": train_section}
    lines += ["## Measurements", ""]
    for kind, files in results.items():
        for path, report in files:
            lines += sections[kind](path, report)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or args.results / "speed.md"
    out.write_text(render(load_results(args.results)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
