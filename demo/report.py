"""The demo's results from two replays of the same frames (one with a depth dropout and corrupt LiDAR, one clean).

Writes into the demo folder: `frames.png` (RGB | depth | prediction | ground truth for chosen frames),
`frames.gif` (every frame), `timeline.png` (routing weights, per-sensor availability and per-frame mIoU over
time) and `summary.json` / `summary.md` (mIoU with all sensors vs during the dropout, latency, frames in/out).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from mlesam_core.data.classes import ClassTable
from mlesam_core.metrics import PROTOCOL_DESCRIPTIONS, scores_from_confusion
from mlesam_ros.bag_io import read_bag
from mlesam_ros.image_conversion import depth_to_metres, image_msg_to_array, to_rgb8
from mlesam_ros.messages import stamp_to_ns

log = logging.getLogger(__name__)

BAG_RECORD_KEY = "mlesam.dataset_to_bag"
CAMERA_TOPIC, DEPTH_TOPIC, TRUTH_TOPIC = "/camera/image_raw", "/depth/image_raw", "/ground_truth/labels"
LABELS_COLOR_TOPIC = "/mlesam/labels_color"
LABELS_TOPIC = "/mlesam/labels"
STATUS_COLORS = {"ok": "#2e9e44", "stale": "#e0b000", "missing": "#d62728", "invalid": "#8e44ad"}
PANEL_SCALE = 2  # 128 px scenes are shown at 256 px


@dataclass
class Replayed:
    """One replay's outputs: its frames.jsonl records (by stamp) and summary.json."""

    frames: list[dict]
    summary: dict

    @classmethod
    def load(cls, folder: Path) -> Replayed:
        """Read `frames.jsonl` and `summary.json` of a replay output folder."""
        frames = [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines() if line.strip()]
        return cls(frames=frames, summary=json.loads((folder / "summary.json").read_text()))

    def by_stamp(self) -> dict[int, dict]:
        """Frame records keyed by header stamp (ns)."""
        return {f["stamp_ns"]: f for f in self.frames}


def bag_record(bag: Path) -> dict:
    """What dataset_to_bag recorded in the bag metadata (rate, start, drop windows, corrupted stamps)."""
    metadata = yaml.safe_load((bag / "metadata.yaml").read_text())
    custom = metadata["rosbag2_bagfile_information"].get("custom_data") or {}
    if BAG_RECORD_KEY not in custom:
        raise ValueError(f"{bag}: no {BAG_RECORD_KEY} record in metadata.yaml (not made by dataset_to_bag)")
    return json.loads(custom[BAG_RECORD_KEY])


def confusion_of(frames: Sequence[dict], num_classes: int) -> np.ndarray:
    """Sum the frames' confusion entries ([gt, pred, count]) into a [C, C] matrix."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for frame in frames:
        for gt, pred, count in frame.get("confusion", []):
            matrix[gt, pred] += count
    return matrix


def scores_of(frames: Sequence[dict], table: ClassTable) -> dict[str, Any]:
    """mIoU (both protocols) and pixel accuracy over `frames`, with the frame count."""
    if not frames:
        return {"frames": 0}
    scores = scores_from_confusion(confusion_of(frames, table.num_classes), table.names).to_dict()
    return {"frames": len(frames), "miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"]}


def in_window(frame: dict, start_s: float, window: dict) -> bool:
    """Whether a frame's stamp lies in a drop window (seconds from the bag's first frame)."""
    t = frame["stamp"] - start_s
    return window["start"] <= t < window["end"]


def comparisons(dropout: Replayed, clean: Replayed, record: dict, table: ClassTable) -> dict[str, Any]:
    """mIoU of the groups of frames the demo compares (same frames with and without the dropped sensor)."""
    start = record["start"]
    clean_by_stamp = clean.by_stamp()
    groups: dict[str, Any] = {
        "all_frames": scores_of(dropout.frames, table),
        "all_frames_clean_bag": scores_of(clean.frames, table),
        "frames_with_every_sensor_ok": scores_of(
            [f for f in dropout.frames if all(s == "ok" for s in f["status"].values())], table),
    }
    for window in record.get("drops", []):
        inside = [f for f in dropout.frames if in_window(f, start, window)]
        same = [clean_by_stamp[f["stamp_ns"]] for f in inside if f["stamp_ns"] in clean_by_stamp]
        key = f"{window['sensor']}_dropout_{window['start']:g}-{window['end']:g}s"
        groups[key] = {"during_dropout": scores_of(inside, table), "same_frames_all_sensors": scores_of(same, table)}
    for sensor, items in record.get("corrupted", {}).items():
        stamps = {item["stamp_ns"] for item in items}
        hit = [f for f in dropout.frames if f["stamp_ns"] in stamps]
        same = [clean_by_stamp[s] for s in sorted(stamps) if s in clean_by_stamp]
        groups[f"{sensor}_corrupted_frames"] = {"with_corrupt_message": scores_of(hit, table),
                                                "same_frames_clean": scores_of(same, table)}
    return groups


def recorded_comparison(clean: Replayed, recorded: Replayed, clean_bag: Path, recorded_bag: Path,
                        table: ClassTable) -> dict[str, Any]:
    """The recorded-style bag's replay against the clean bag's (the same frames): mIoU of both, and how many frames
    got identical labels (the camera, depth and events decode to exactly the clean bag's inputs; the LiDAR cloud is
    the stored image back-projected, whose re-projection quantises range and height differently)."""
    labels = {}
    for name, bag in (("clean", clean_bag), ("recorded", recorded_bag)):
        labels[name] = {stamp_to_ns(m.header.stamp): image_msg_to_array(m)
                        for _, _, m in read_bag(bag, {LABELS_TOPIC})}
    common = sorted(set(labels["clean"]) & set(labels["recorded"]))
    agreement = [float((labels["clean"][s] == labels["recorded"][s]).mean()) for s in common]
    return {"all_frames": scores_of(recorded.frames, table), "all_frames_clean_bag": scores_of(clean.frames, table),
            "frames": len(recorded.frames), "frames_out": recorded.summary["frames_out"],
            "frames_compared": len(common), "frames_with_identical_labels": sum(a == 1.0 for a in agreement),
            "mean_pixel_agreement": float(np.mean(agreement)) if agreement else None,
            "availability": recorded.summary["availability"]}


def _colorize_depth(depth_m: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """Inverse-depth turbo colouring (near = warm); a dark panel saying 'no depth' when absent."""
    if depth_m is None:
        panel = np.full((*size, 3), 40, np.uint8)
        cv2.putText(panel, "no depth", (8, size[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (230, 230, 230), 1,
                    cv2.LINE_AA)
        return panel
    valid = np.isfinite(depth_m) & (depth_m > 0)
    inverse = np.where(valid, 1.0 / np.maximum(depth_m, 1e-3), 0.0)
    scale = np.percentile(inverse[valid], 98) if valid.any() else 1.0
    gray = np.clip(inverse / max(scale, 1e-6) * 255, 0, 255).astype(np.uint8)
    colored = cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    colored[~valid] = 0
    return colored


def collect_images(input_bag: Path, output_bag: Path, stamps: set[int]) -> dict[int, dict[str, np.ndarray]]:
    """RGB, depth (metres), ground truth and coloured prediction of the frames with these header stamps."""
    images: dict[int, dict[str, np.ndarray]] = {s: {} for s in stamps}
    for bag, topics in ((input_bag, {CAMERA_TOPIC, DEPTH_TOPIC, TRUTH_TOPIC}), (output_bag, {LABELS_COLOR_TOPIC})):
        for topic, _, msg in read_bag(bag, topics):
            stamp = stamp_to_ns(msg.header.stamp)
            if stamp not in images:
                continue
            array = image_msg_to_array(msg)
            if topic == DEPTH_TOPIC:
                images[stamp]["depth"] = depth_to_metres(array, msg.encoding)
            elif topic == TRUTH_TOPIC:
                images[stamp]["truth"] = array.reshape(array.shape[:2])
            else:
                images[stamp]["rgb" if topic == CAMERA_TOPIC else "prediction"] = to_rgb8(array, msg.encoding)
    return images


def _caption(frame: dict, t: float, condition: str) -> str:
    missing = [m for m, s in frame["status"].items() if s != "ok"]
    state = "all sensors" if not missing else ", ".join(f"{m} {frame['status'][m]}" for m in missing)
    miou = frame.get("miou_present_classes")
    return f"t={t:4.1f}s  {condition}  {state}" + (f"  mIoU {miou:.2f}" if miou is not None else "")


def frame_row(images: dict[str, np.ndarray], frame: dict, t: float, condition: str, table: ClassTable) -> np.ndarray:
    """One strip row: [RGB | depth | prediction | ground truth] with a caption bar above."""
    rgb = images["rgb"]
    size = rgb.shape[:2]
    prediction = images.get("prediction", np.zeros_like(rgb))
    panels = [rgb, _colorize_depth(images.get("depth"), size), prediction, table.colorize(images["truth"])]
    row = np.concatenate([cv2.resize(p, (size[1] * PANEL_SCALE, size[0] * PANEL_SCALE),
                                     interpolation=cv2.INTER_NEAREST) for p in panels], axis=1)
    bar = np.full((22, row.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, _caption(frame, t, condition), (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([bar, row], axis=0)


def header_row(width: int) -> np.ndarray:
    """Column titles of the strip."""
    bar = np.full((26, width, 3), 235, np.uint8)
    for i, title in enumerate(("RGB", "depth (input)", "MLE-SAM labels", "ground truth")):
        cv2.putText(bar, title, (i * width // 4 + 8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def choose_strip_frames(frames: Sequence[dict], record: dict, count: int = 8) -> list[dict]:
    """Frames for the strip: spread over the bag, at least two inside each drop window and one corrupt frame."""
    start = record["start"]
    chosen = {round(i * (len(frames) - 1) / max(count - 1, 1)) for i in range(count)}
    for window in record.get("drops", []):
        inside = [i for i, f in enumerate(frames) if in_window(f, start, window)]
        chosen.update(inside[len(inside) // 3::max(len(inside) // 3, 1)][:2])
    corrupt = {item["stamp_ns"] for items in record.get("corrupted", {}).values() for item in items}
    hits = [i for i, f in enumerate(frames) if f["stamp_ns"] in corrupt]
    chosen.update(hits[:1])
    return [frames[i] for i in sorted(chosen)]


def write_frames(dropout: Replayed, record: dict, input_bag: Path, output_bag: Path, conditions: Sequence[str],
                 table: ClassTable, out: Path) -> tuple[Path, Path]:
    """frames.png (chosen frames) and frames.gif (every frame)."""
    from PIL import Image  # pillow writes the GIF

    frames = dropout.frames
    images = collect_images(input_bag, output_bag, {f["stamp_ns"] for f in frames})
    start = record["start"]
    rows = {f["stamp_ns"]: frame_row(images[f["stamp_ns"]], f, f["stamp"] - start, conditions[i], table)
            for i, f in enumerate(frames) if "rgb" in images[f["stamp_ns"]] and "truth" in images[f["stamp_ns"]]}
    strip = [rows[f["stamp_ns"]] for f in choose_strip_frames(frames, record) if f["stamp_ns"] in rows]
    width = strip[0].shape[1]
    png = out / "frames.png"
    cv2.imwrite(str(png), cv2.cvtColor(np.concatenate([header_row(width), *strip], axis=0), cv2.COLOR_RGB2BGR))
    gif = out / "frames.gif"
    movie = [Image.fromarray(np.concatenate([header_row(width), row], axis=0)).quantize(colors=128)
             for row in rows.values()]
    movie[0].save(gif, save_all=True, append_images=movie[1:], duration=int(1000 / record["rate"]), loop=0)
    return png, gif


def write_timeline(dropout: Replayed, record: dict, conditions: Sequence[str], out: Path) -> Path:
    """timeline.png: routing weights per level, sensor status and per-frame mIoU against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = dropout.frames
    start = record["start"]
    t = np.array([f["stamp"] - start for f in frames])
    modalities = list(frames[0]["status"])
    levels = list(frames[0]["routing"])
    fig, axes = plt.subplots(len(levels) + 2, 1, figsize=(11, 2.0 * (len(levels) + 2)), sharex=True)
    for ax, level in zip(axes, levels, strict=False):
        for m in modalities:
            ax.plot(t, [f["routing"][level].get(m, 0.0) for f in frames], label=m, lw=1.4)
        ax.set_ylabel(f"{level}\nweight")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(loc="upper right", ncol=len(modalities), fontsize=8)
    axes[0].set_title("router weights per feature level (0 = not chosen or absent)")
    status_ax = axes[len(levels)]
    dt = 1.0 / record["rate"]
    for row, m in enumerate(modalities):
        for ti, f in zip(t, frames, strict=True):
            status_ax.barh(row, dt, left=ti - dt / 2, color=STATUS_COLORS.get(f["status"][m], "grey"), height=0.8)
    status_ax.set_yticks(range(len(modalities)), modalities)
    status_ax.set_title("sensor status per frame: " + ", ".join(f"{k} = {v}" for k, v in
                                                               {"ok": "green", "stale": "yellow",
                                                                "missing": "red", "invalid": "purple"}.items()),
                        fontsize=9)
    miou_ax = axes[-1]
    miou_ax.plot(t, [f.get("miou_present_classes", np.nan) for f in frames], color="black", lw=1.2)
    miou_ax.set_ylabel("frame mIoU\n(present classes)")
    miou_ax.set_xlabel("bag time (s)")
    for ax in axes:
        for window in record.get("drops", []):
            ax.axvspan(window["start"], window["end"], color="red", alpha=0.08)
    weather = [c.split("/")[0] for c in conditions]  # failure cases change every frame: label weather only
    boundaries = [i for i in range(1, len(weather)) if weather[i] != weather[i - 1]]
    for i in [0, *boundaries]:
        miou_ax.text(t[i], 1.02, weather[i], fontsize=8, transform=miou_ax.get_xaxis_transform())
        for ax in axes:
            ax.axvline(t[i] - dt / 2, color="grey", lw=0.5, ls=":")
    fig.tight_layout()
    path = out / "timeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def _miou_cells(scores: dict) -> str:
    if not scores.get("frames"):
        return "– | – | 0"
    return f"{_fmt(scores['miou']['all_classes'])} | {_fmt(scores['miou']['present_classes'])} | {scores['frames']}"


def write_markdown(summary: dict, out: Path) -> Path:
    """summary.md: the numbers a reader wants first, then where everything is."""
    lines = ["# MLE-SAM demo results", ""]
    lines += [f"> **{summary['backbone']['note']}**", ""]
    replay, groups = summary["replay"], summary["groups"]
    lines += ["## Segmentation quality (procedural validation scenes)", "",
              "| frames | mIoU (absent classes = 0) | mIoU (present classes) | frames |", "|---|---|---|---|",
              f"| all frames (depth dropout + corrupt LiDAR bag) | {_miou_cells(groups['all_frames'])} |",
              f"| all frames, clean bag | {_miou_cells(groups['all_frames_clean_bag'])} |",
              f"| frames with every sensor ok | {_miou_cells(groups['frames_with_every_sensor_ok'])} |"]
    for key, group in groups.items():
        if "_dropout_" in key:
            lines += [f"| {key}: during the dropout | {_miou_cells(group['during_dropout'])} |",
                      f"| {key}: same frames, all sensors | {_miou_cells(group['same_frames_all_sensors'])} |"]
        if key.endswith("_corrupted_frames"):
            lines += [f"| {key}: with the corrupt message | {_miou_cells(group['with_corrupt_message'])} |",
                      f"| {key}: same frames, clean | {_miou_cells(group['same_frames_clean'])} |"]
    lines += ["", "Protocols: " + "; ".join(f"`{k}`: {v}" for k, v in PROTOCOL_DESCRIPTIONS.items()), "",
              "## Replay", "",
              f"- frames in: {replay['frames']}, frames with outputs: {replay['frames_out']} "
              f"(driver: {replay['drivers']})",
              f"- latency per frame (decode + sync + model + outputs): p50 {replay['latency_ms']['p50']:.1f} ms, "
              f"p95 {replay['latency_ms']['p95']:.1f} ms",
              "- per-sensor availability (fraction of frames):", "",
              "| sensor | ok | stale | missing | invalid | used |", "|---|---|---|---|---|---|"]
    for sensor, shares in replay["availability"].items():
        lines.append(f"| {sensor} | " + " | ".join(f"{shares[k]:.2f}" for k in
                                                   ("ok", "stale", "missing", "invalid", "used")) + " |")
    recorded = summary.get("recorded_style")
    if recorded:
        lines += ["", "## Recorded-style bag (what robot drivers publish)", "",
                  "The same frames as CompressedImage (png), compressedDepth (16UC1), evt3 EventPackets and a "
                  "PointCloud2 with /tf_static, replayed with the drivers' topics:", "",
                  "| bag | mIoU (absent classes = 0) | mIoU (present classes) | frames |", "|---|---|---|---|",
                  f"| recorded-style | {_miou_cells(recorded['all_frames'])} |",
                  f"| clean (raw Images) | {_miou_cells(recorded['all_frames_clean_bag'])} |", "",
                  f"- frames with outputs: {recorded['frames_out']} of {recorded['frames']}; identical labels to the "
                  f"clean bag: {recorded['frames_with_identical_labels']} of {recorded['frames_compared']} frames "
                  f"(mean pixel agreement {_fmt(recorded['mean_pixel_agreement'])}; the LiDAR cloud is the stored "
                  f"image back-projected, so its re-projection differs slightly)"]
    lines += ["", "## How it was made", ""]
    for step in summary["steps"]:
        lines.append(f"- {step['name']} ({step['seconds']:.0f} s): `{step['command']}`")
    train = summary["training"]
    lines += ["", f"Adapters ({train['source']}): `{train['command']}`, {train['steps']} steps, validation mIoU "
                  f"{_fmt(train['final_val_miou'])} at the end, best {_fmt(train['best_val_miou'])} (absent classes "
                  f"= 0, procedural val split)."]
    lines += ["", "## Files", "", "- `frames.png`: RGB | depth | prediction | ground truth for chosen frames",
              "- `frames.gif`: every frame", "- `timeline.png`: router weights, sensor status and frame mIoU over time",
              "- `replay/bag`: the node's output topics (version-8 bag, sqlite3)", "- `summary.json`: everything above"]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


__all__ = ["Replayed", "bag_record", "comparisons", "recorded_comparison", "write_frames", "write_timeline",
           "write_markdown"]
