"""Evaluation reports: JSON, Markdown tables and PNG plots (per-class IoU bars, subset heat map, overlays)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlesam_core.data.classes import ClassTable
from mlesam_core.evaluation import EvaluationResult, subset_name
from mlesam_core.metrics import PROTOCOL_DESCRIPTIONS, SegmentationScores


def json_ready(value: Any) -> Any:
    """`value` with NaN/inf floats replaced by None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def scores_row(name: str, scores: SegmentationScores) -> list[str]:
    """Name, mIoU (all classes), mIoU (present classes), pixel accuracy, in percent."""
    return [name, _pct(scores.miou["all_classes"]), _pct(scores.miou["present_classes"]),
            _pct(scores.pixel_accuracy)]


SCORE_HEADER = ["", "mIoU % (absent = 0)", "mIoU % (absent left out)", "pixel acc %"]


def result_to_json(result: EvaluationResult) -> dict[str, Any]:
    """JSON-ready summary: all-modality scores, the subset matrix with its means, groups."""
    subsets = result.subset_scores()
    full = subsets[result.modalities]
    data: dict[str, Any] = {
        "modalities": list(result.modalities),
        "samples": result.samples,
        "protocols": PROTOCOL_DESCRIPTIONS,
        "all_modalities": full.to_dict(),
    }
    if len(subsets) > 1:
        data["subsets"] = {subset_name(s): sc.to_dict() for s, sc in subsets.items()}
        data["subset_mean_miou"] = {p: float(np.mean([sc.miou[p] for sc in subsets.values()]))
                                    for p in PROTOCOL_DESCRIPTIONS}
    for kind, groups in result.group_scores().items():
        data[f"by_{kind}"] = {value: sc.to_dict() for value, sc in groups.items()}
    if result.routing:
        data["mean_routing"] = result.mean_routing()
    return data


def result_to_markdown(result: EvaluationResult, title: str) -> str:
    """Markdown tables of one evaluation (both mIoU protocols labelled)."""
    subsets = result.subset_scores()
    full = subsets[result.modalities]
    parts = [f"# {title}", "",
             f"{result.samples} samples, modalities {subset_name(result.modalities)}. mIoU protocols: "
             f"'absent = 0' = {PROTOCOL_DESCRIPTIONS['all_classes']}; 'absent left out' = "
             f"{PROTOCOL_DESCRIPTIONS['present_classes']}.", "",
             markdown_table(SCORE_HEADER, [scores_row(subset_name(result.modalities), full)])]
    if len(subsets) > 1:
        rows = [scores_row(subset_name(s), sc) for s, sc in subsets.items()]
        rows.append(["mean over subsets"] + [_pct(float(np.mean([sc.miou[p] for sc in subsets.values()])))
                                             for p in PROTOCOL_DESCRIPTIONS] + [""])
        parts += ["", "## Missing modalities (present mask)", "", markdown_table(SCORE_HEADER, rows)]
    for kind, groups in result.group_scores().items():
        parts += ["", f"## By {kind} (all modalities)", "",
                  markdown_table(SCORE_HEADER, [scores_row(v, sc) for v, sc in groups.items()])]
    routing = result.mean_routing()
    if routing:
        rows = [[group, level, *[f"{w:.2f}" for w in weights.values()]]
                for group, levels in routing.items() if group == "all" or group.startswith("condition=")
                for level, weights in levels.items()]
        parts += ["", "## Mean routing weight per fusion level (all modalities present)", "",
                  markdown_table(["samples", "level", *result.modalities], rows)]
    parts += ["", "## Per-class IoU % (all modalities; '-' = class absent from ground truth and prediction)", "",
              markdown_table(["class", "IoU %"], [[n, "-" if math.isnan(v) else f"{100 * v:.2f}"]
                                                  for n, v in zip(full.class_names, full.iou, strict=True)])]
    return "\n".join(parts) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class_iou(scores: SegmentationScores, path: Path, title: str) -> None:
    """Horizontal bars of IoU per class (absent classes hatched at 0)."""
    plt = _pyplot()
    names = scores.class_names
    values = [0.0 if math.isnan(v) else 100 * v for v in scores.iou]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    bars = ax.barh(range(len(names)), values, color="tab:blue")
    for bar, present in zip(bars, scores.present, strict=True):
        if not present:
            bar.set_hatch("//")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU %")
    ax.set_title(f"{title}: mIoU {_pct(scores.miou['all_classes'])} % (absent = 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_subset_heatmap(result: EvaluationResult, path: Path) -> None:
    """Heat map: modality subsets (rows) x classes (columns) IoU, with the subset mIoU in the row label."""
    plt = _pyplot()
    subsets = result.subset_scores()
    matrix = np.array([[np.nan if math.isnan(v) else 100 * v for v in sc.iou] for sc in subsets.values()])
    labels = [f"{subset_name(s)} ({_pct(sc.miou['all_classes'])})" for s, sc in subsets.items()]
    fig, ax = plt.subplots(figsize=(0.32 * len(result.class_names) + 3.5, 0.3 * len(labels) + 2))
    image = ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(range(len(result.class_names)), result.class_names, rotation=90, fontsize=7)
    ax.set_title("IoU % per modality subset (row label: mIoU %, absent = 0)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_overlays(result: EvaluationResult, classes: ClassTable, path: Path) -> None:
    """A grid of kept examples: input | ground truth | prediction (coloured with the class palette)."""
    plt = _pyplot()
    examples = result.examples
    fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.5 * len(examples)), squeeze=False)
    for row, example in zip(axes, examples, strict=True):
        label = classes.colorize(example.label)
        pred = classes.colorize(example.prediction)
        blend = (0.5 * example.image + 0.5 * pred).astype(np.uint8)
        caption = "/".join(str(example.meta.get(k)) for k in ("condition", "case") if example.meta.get(k))
        for ax, image, name in zip(row, (example.image, label, blend), ("input " + caption, "ground truth",
                                                                       "prediction (over input)"), strict=True):
            ax.imshow(image)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(result: EvaluationResult, classes: ClassTable, out_dir: Path, title: str,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write evaluation.json, evaluation.md and the PNG plots to `out_dir`; returns the JSON data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = json_ready({**(extra or {}), **result_to_json(result)})
    (out_dir / "evaluation.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    (out_dir / "evaluation.md").write_text(result_to_markdown(result, title))
    plot_per_class_iou(result.subset_scores()[result.modalities], out_dir / "per_class_iou.png", title)
    if len(result.subsets) > 1:
        plot_subset_heatmap(result, out_dir / "subsets.png")
    if result.examples:
        save_overlays(result, classes, out_dir / "overlays.png")
    return data
