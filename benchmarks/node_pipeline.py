"""Per-frame cost of the segmentation node's work, without ROS executors or DDS: receiving (deserialising) four
sensor messages, synchronisation, conversion to model inputs, Segmenter pre/post-processing, the model, building
and serialising the outputs, against the model's own time.

    python -m benchmarks.node_pipeline [--device cuda|cpu] [--config hiera_b+|PATH] [--precision bf16]
        [--sam2-checkpoint PATH] [--params config/segment.yaml] [--set KEY=VALUE ...] [--size 1024 1024]
        [--frames N] [--warmup N] [--rate HZ] [--messages rclpy|rosbags] [--threads N] [--profile] [--post-variants]
        [--out PATH]

Four sensors (rgb8 camera, 32FC1 depth turned into HHA, 8UC2 event frame, rgb8 projected LiDAR) at --size with a
camera_info go through the same SegmentationPipeline and output code as the node. Per frame: `receive` (rclpy
deserialize_message of the four inputs, what a subscription does), `sync` (pipeline.add), `decode`
(pipeline.process minus Segmenter.predict), `predict` (Segmenter.predict), `output_messages`, `publish`
(serialize_message of each output: what publishing costs the node's thread; no DDS), `total` (all of these), and,
after each frame, `model` (the Segmenter's model alone on device-resident inputs, at the Segmenter's precision, run
as the node's `model.compile` / `model.cuda_graphs` settings run it). `pre_post` = predict - model and
`overhead` = total - model, per frame, and the process's resident set after each frame (`rss_mib`: it levels
off once the synchroniser holds its `stale_after` of messages, at --rate, the sensors' stamp rate). Node
settings go through --set (e.g. --set model.cuda_graphs=true). As in the node, one worker thread loads the model
and runs the frames, under the node's host-memory policy
(`mlesam_core.host_memory`; MLESAM_HOST_MEMORY=default keeps glibc's own: benchmarks/host_memory.py compares).
Defaults: on CUDA Hiera-B+, bf16, 1024², 200 frames; on a CPU the tiny config (its 128² model: the overhead part
at full size, the model small), fp32, 1024², 20 frames. Random frozen weights unless --sam2-checkpoint (timings do
not depend on the weights). `--post-variants` also times the Segmenter's sensor-size post-processing alone
(upsample the logits, softmax, max; channels-last) against its channels-first definition, with and without the
confidence output, as ratios to the definition with confidence in the same run.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import REPO_ROOT, RESULTS_DIR
from benchmarks.speed_common import (
    GPU_TARGET_NOTE,
    config_label,
    config_path,
    default_device,
    device_slug,
    milliseconds,
    parse_args_for_device,
    report_header,
    start_run,
    synchronize,
    target,
    timed,
    torch_profile,
    write_report,
)
from mlesam_core.host_memory import retain_freed_memory
from mlesam_core.predictor import Segmenter, labels_and_confidence
from mlesam_ros.messages import MessageKit
from mlesam_ros.outputs import output_messages
from mlesam_ros.params import load_segment_config
from mlesam_ros.pipeline import SegmentationPipeline, load_segmenter

P50_MS, P95_MS, OVERHEAD_FRACTION = 25.0, 35.0, 0.05
FRAME_STAGES = ("receive", "sync", "decode", "predict", "output_messages", "publish")
CUDA_DEFAULTS = {"config": "hiera_b+", "precision": "bf16", "frames": 200, "warmup": 20}
CPU_DEFAULTS = {"config": "tiny", "precision": "fp32", "frames": 20, "warmup": 3}


class Wire:
    """Serialisation as rclpy (or rosbags' CDR) does it: what a publisher and a subscription cost in-process."""

    def __init__(self, kind: str) -> None:
        if kind == "rclpy":
            from rclpy.serialization import deserialize_message, serialize_message

            self.kit = MessageKit.rclpy()
            self.serialize = serialize_message
            self._deserialize = deserialize_message
        else:
            from rosbags.typesys import Stores, get_typestore

            store = get_typestore(Stores.ROS2_HUMBLE)
            self.kit = MessageKit.rosbags(store)
            self.serialize = lambda msg: store.serialize_cdr(msg, msg.__msgtype__)
            self._deserialize = lambda raw, cls: store.deserialize_cdr(raw, cls.__msgtype__)

    def deserialize(self, raw: Any, like: Any) -> Any:
        """The message `raw` holds, of the type of `like`."""
        return self._deserialize(raw, type(like))

    @staticmethod
    def available(kind: str) -> bool:
        """Whether rclpy's message packages can be imported (rosbags always can)."""
        if kind != "rclpy":
            return True
        try:
            import rclpy.serialization  # noqa: F401
            import sensor_msgs.msg  # noqa: F401
        except ImportError:
            return False
        return True


def sensor_arrays(size: tuple[int, int], rng: np.random.Generator) -> dict[str, tuple[np.ndarray, str]]:
    """One DELIVER-like frame of the four sensors at `size`: (array, encoding) per modality."""
    height, width = size
    lidar = np.zeros((height, width, 3), np.uint8)
    lidar[::8] = rng.integers(1, 256, lidar[::8].shape, dtype=np.uint8)  # scan lines
    return {"rgb": (rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "rgb8"),
            "depth": (rng.uniform(1, 80, size).astype(np.float32), "32FC1"),
            "event": (rng.integers(0, 3, (height, width, 2), dtype=np.uint8), "8UC2"),
            "lidar": (lidar, "rgb8")}


def build_pipeline(args: argparse.Namespace) -> SegmentationPipeline:
    """The node's pipeline around a Segmenter for --config on --device at --precision."""
    sets = [f"model.config={config_path(args.config)}", f"model.device={args.device}",
            f"model.precision={args.precision}", *args.set]
    sets.append(f"model.sam2_checkpoint={args.sam2_checkpoint}" if args.sam2_checkpoint
                else "model.allow_random_init=true")
    config = load_segment_config(args.params, sets)
    return SegmentationPipeline(config, load_segmenter(config), clock=time.monotonic)


def model_call(segmenter: Segmenter) -> tuple[Callable[[], Any], str]:
    """The Segmenter's model alone on its staged input buffer (every modality present, model size), run as
    `predict` runs it (`Segmenter.run_model`: compiled / CUDA graph per the node's settings); the call and how it
    runs."""
    inputs = {m: np.zeros((*segmenter.size, 3), np.uint8) for m in segmenter.modalities}
    staged = segmenter.stage(inputs)
    segmenter.run_model(staged)  # compiles or captures here (falling back to eager as the node would)
    how = "torch.compile" if segmenter.compile else "eager"
    return partial(segmenter.run_model, staged), how + (" + CUDA graph" if segmenter.cuda_graphs else "")


class FrameLoop:
    """Feeds synchronised four-sensor frames through the pipeline like the node's callbacks and worker do."""

    def __init__(self, pipeline: SegmentationPipeline, wire: Wire, size: tuple[int, int], rate: float) -> None:
        self.pipeline = pipeline
        self.wire = wire
        self.device = pipeline.segmenter.device
        self.model_alone, self.model_alone_mode = model_call(pipeline.segmenter)
        rng = np.random.default_rng(0)
        self.variants = [sensor_arrays(size, rng) for _ in range(2)]  # alternate content, no RNG per frame
        self.sent = 0
        self.rate = rate

    def run(self, count: int, stages: dict[str, list[float]] | None = None,
            rss: list[float] | None = None) -> None:
        """Push `count` frames; append per-stage seconds to `stages` and the resident set (MiB) after each frame
        to `rss` if given."""
        for _ in range(count):
            self.frame(stages)
            if rss is not None:
                rss.append(resident_mib())

    def frame(self, stages: dict[str, list[float]] | None) -> None:
        pipeline, wire = self.pipeline, self.wire
        header = wire.kit.header(1_000_000_000 + round(self.sent * 1e9 / self.rate), "camera_optical_frame")
        sent = {s: wire.kit.image(array, encoding, header)
                for s, (array, encoding) in self.variants[self.sent % 2].items() if s in pipeline.config.modalities}
        raw = {s: wire.serialize(msg) for s, msg in sent.items()}  # the sensor drivers' work, not timed
        self.sent += 1
        marks = [time.perf_counter()]
        received = {s: wire.deserialize(raw[s], sent[s]) for s in sent}
        marks.append(time.perf_counter())
        frames = [f for sensor in pipeline.config.modalities for f in pipeline.add(sensor, received[sensor])]
        if not frames:
            raise RuntimeError("the synchroniser released no frame for a complete set of sensor messages")
        marks.append(time.perf_counter())
        result = pipeline.process(frames[0])
        marks.append(time.perf_counter())
        if result.latency is None:
            raise RuntimeError(f"the pipeline produced no prediction: {result.errors}")
        outputs = output_messages(wire.kit, pipeline, result)
        marks.append(time.perf_counter())
        for msg in outputs.values():
            wire.serialize(msg)
        marks.append(time.perf_counter())
        synchronize(self.device)
        model_s, _ = timed(self.model_alone, self.device)
        if stages is None:
            return
        receive, sync, process, build, publish = np.diff(marks)
        total = marks[-1] - marks[0]
        for name, value in (("receive", receive), ("sync", sync), ("decode", process - result.latency),
                            ("predict", result.latency), ("output_messages", build), ("publish", publish),
                            ("total", total), ("model", model_s), ("pre_post", result.latency - model_s),
                            ("overhead", total - model_s)):
            stages[name].append(value)


def resident_mib() -> float:
    """This process's resident set now (MiB; Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def profiles(loop: FrameLoop) -> dict[str, Any]:
    """torch.profiler top ops and cProfile's top Python functions (by own time) over 3 frames each."""
    result = {"torch": torch_profile(lambda: loop.run(1), loop.device)}
    profiler = cProfile.Profile()
    profiler.enable()
    loop.run(3)
    profiler.disable()
    rows = sorted(pstats.Stats(profiler).stats.items(), key=lambda item: item[1][2], reverse=True)[:10]
    result["python"] = {"clock": "cProfile own time (tottime), per frame", "frames": 3, "top_functions": [
        {"function": name if file == "~" else f"{Path(file).name}:{line} {name}",
         "own_ms_per_frame": round(tottime * 1000 / 3, 3), "calls_per_frame": calls // 3}
        for (file, line, name), (_, calls, tottime, _, _) in rows]}
    return result


def channels_first_labels_and_confidence(logits: torch.Tensor, size: tuple[int, int],
                                         confidence: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plain definition the Segmenter's `labels_and_confidence` is measured against: upsample [1, C, H, W],
    softmax and max over the class dimension."""
    logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    if not confidence:
        return logits.max(dim=1).indices, None
    probability, labels = torch.softmax(logits, dim=1).max(dim=1)
    return labels, probability


def post_processing_variants(segmenter: Any, size: tuple[int, int], runs: int) -> dict[str, Any]:
    """The Segmenter's post-processing alone (model logits [1, C, S/4, S/4] -> labels and confidence at the sensor
    `size`) against the channels-first definition, with and without the confidence output; p50 ms and
    (definition with confidence) / variant."""
    device = segmenter.device
    side = segmenter.config.image_size // 4
    logits = torch.randn(1, segmenter.config.num_classes, side, side, generator=torch.Generator().manual_seed(0))
    logits = logits.to(device)
    functions = {"channels-first definition": channels_first_labels_and_confidence,
                 "channels-last (the Segmenter's)": labels_and_confidence}
    variants = {}
    with torch.inference_mode():
        for how, function in functions.items():
            for confidence in (True, False):
                seconds = []
                for i in range(runs + 2):  # two warm-up calls
                    elapsed, _ = timed(partial(function, logits, size, confidence), device)
                    if i >= 2:
                        seconds.append(elapsed)
                variants[f"{how}, {'with' if confidence else 'without'} confidence"] = milliseconds(seconds)
    base = variants["channels-first definition, with confidence"]["p50_ms"]
    for stats in variants.values():
        stats["speedup_vs_definition_with_confidence"] = round(base / stats["p50_ms"], 3)
    return {"logits": [1, segmenter.config.num_classes, side, side], "size": list(size), "variants": variants}


def evaluate_targets(report: dict[str, Any], device: torch.device) -> dict[str, dict[str, str]]:
    """The issue's node targets: Hiera-B+, four sensors, 1024², bf16, on one H100."""
    latency = report["latency_ms"]
    s = report["settings"]
    applicable = (device.type == "cuda" and s["config"] == "hiera_b+" and s["precision"] == "bf16"
                  and list(s["size"]) == [1024, 1024] and len(report["modalities"]) == 4)
    note = "" if applicable else GPU_TARGET_NOTE.format(device=device.type)

    def status(ok: bool) -> str:
        return ("met" if ok else "missed") if applicable else "not-applicable"

    total, model, overhead = latency["total"], latency["model"], latency["overhead"]
    ratio = overhead["p50_ms"] / model["p50_ms"]
    return {
        "node_p50": target(f"node end-to-end p50 <= {P50_MS:g} ms per synchronised frame (>= 40 Hz)",
                           status(total["p50_ms"] <= P50_MS),
                           f"p50 {total['p50_ms']:.1f} ms ({1000 / total['p50_ms']:.1f} Hz)", note),
        "node_p95": target(f"node end-to-end p95 <= {P95_MS:g} ms", status(total["p95_ms"] <= P95_MS),
                           f"p95 {total['p95_ms']:.1f} ms", note),
        "node_overhead": target(f"node overhead outside the model <= {OVERHEAD_FRACTION:.0%} of model time",
                                status(ratio <= OVERHEAD_FRACTION),
                                f"overhead p50 {overhead['p50_ms']:.1f} ms = {ratio:.1%} of model p50 "
                                f"{model['p50_ms']:.1f} ms (receive {latency['receive']['p50_ms']:.1f}, sync "
                                f"{latency['sync']['p50_ms']:.2f}, decode {latency['decode']['p50_ms']:.1f}, "
                                f"pre/post {latency['pre_post']['p50_ms']:.1f}, outputs "
                                f"{latency['output_messages']['p50_ms']:.1f}, publish "
                                f"{latency['publish']['p50_ms']:.1f} ms)", note),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--config", help="model config: tiny, hiera_t, hiera_b+ or a path")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--sam2-checkpoint", default="", help="official SAM2 weights (default: random init)")
    parser.add_argument("--params", default=str(REPO_ROOT / "config/segment.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="segment.yaml override")
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 1024], metavar=("H", "W"), help="sensor size")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--rate", type=float, default=20.0, help="the sensors' stamp rate in Hz (default 20)")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--messages", choices=["rclpy", "rosbags"], default="rclpy",
                        help="message library (rclpy falls back to rosbags when not installed)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler and cProfile top-10 over 3 frames")
    parser.add_argument("--post-variants", action="store_true",
                        help="time the post-processing alone: channels-last/first, with/without confidence")
    parser.add_argument("--out", type=Path)
    return parse_args_for_device(parser, argv, CPU_DEFAULTS, CUDA_DEFAULTS)


def on_worker_thread(function: Callable[[], None]) -> None:
    """Run `function` on a new thread, as the node runs its model (its own malloc arena unless the host-memory
    policy puts every thread on the main one), re-raising what it raises."""
    failures: list[BaseException] = []

    def target() -> None:
        try:
            function()
        except BaseException as exc:  # noqa: BLE001 -- handed to the calling thread
            failures.append(exc)

    worker = threading.Thread(target=target, name="mlesam_inference")
    worker.start()
    worker.join()
    if failures:
        raise failures[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host_memory = "retain" if retain_freed_memory() else "default"  # as the node does, before threads start
    on_worker_thread(lambda: measure(args, host_memory))
    return 0


def measure(args: argparse.Namespace, host_memory: str) -> None:
    """Build the pipeline and time it: all on one thread, as the node's inference thread loads its model and runs
    every frame (torch's CPU thread count and OpenMP thread team are per calling thread)."""
    logging.basicConfig(level=logging.ERROR)  # "no adapters given" is expected here
    device, settings = start_run(args)
    messages = args.messages if Wire.available(args.messages) else "rosbags"
    wire = Wire(messages)
    pipeline = build_pipeline(args)
    settings["config"] = config_label(args.config)
    settings["messages"] = messages
    settings["host_memory"] = host_memory
    report = report_header(device, settings)
    height, width = args.size
    k = np.array([[width / 2, 0, width / 2], [0, width / 2, height / 2], [0, 0, 1]])
    pipeline.set_camera_info(wire.kit.camera_info(k, (height, width), wire.kit.header(0, "camera_optical_frame")))
    report.update(modalities=list(pipeline.config.modalities), depth_encoding=pipeline.config.depth.encoding,
                  model_image_size=pipeline.segmenter.config.image_size)
    loop = FrameLoop(pipeline, wire, (height, width), args.rate)
    report["model_alone"] = loop.model_alone_mode
    loop.run(args.warmup)
    stages: dict[str, list[float]] = {name: [] for name in (*FRAME_STAGES, "total", "model", "pre_post", "overhead")}
    rss: list[float] = []
    loop.run(args.frames, stages, rss)
    report["latency_ms"] = {name: milliseconds(values) for name, values in stages.items()}
    report["rss_mib"] = {"per_frame": [round(value, 1) for value in rss],
                         "first_frame": round(rss[0], 1), "last_frame": round(rss[-1], 1),
                         "min": round(min(rss), 1), "max": round(max(rss), 1)}
    if args.profile:
        report["profile"] = profiles(loop)
    if args.post_variants:
        report["post_processing"] = post_processing_variants(pipeline.segmenter, (height, width), args.frames)
    report["targets"] = evaluate_targets(report, device)
    print(f"device: {report['device']['name']}; model {settings['config']} at {report['model_image_size']}², "
          f"{args.precision}, {report['model_alone']}; sensors {height}x{width} ({messages} messages), "
          f"{args.frames} frames")
    print(f"{'stage':16} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9}")
    for name, stats in report["latency_ms"].items():
        print(f"{name:16} {stats['p50_ms']:9.2f} {stats['p95_ms']:9.2f} {stats['mean_ms']:9.2f}")
    for name, stats in report.get("post_processing", {}).get("variants", {}).items():
        print(f"post-processing {name}: p50 {stats['p50_ms']:.2f} ms, "
              f"{stats['speedup_vs_definition_with_confidence']:.2f}x")
    write_report(report, args.out or RESULTS_DIR / f"node_pipeline_{device_slug(device)}.json")


if __name__ == "__main__":
    raise SystemExit(main())
