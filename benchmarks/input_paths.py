"""Per-frame host cost of each input path of the node and the replay (the same decoding code), on this CPU:
JPEG/PNG camera decode, compressedDepth decode, evt3 decode + render of a frame's window, PointCloud2 ->
projected LiDAR image (64- and 128-beam Ouster layouts), one sensor at a time and all four per frame, at each
size. evt3 decode rate on one core: the node's path (EventStream over driver-sized packets), the evt3 package alone
on the same packets, and the next decoder candidate (faery's, reading the same stream from a file) in the same run.

    python -m benchmarks.input_paths [--sizes 1080x1920 1024x1024] [--events 2000000] [--runs 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import RESULTS_DIR
from benchmarks.speed_common import report_header, write_report
from mlesam_core.sensors import lidar_image_to_uint8, project_points, project_points_uint8, render_event_frame
from mlesam_ros.bag_io import typestore
from mlesam_ros.compressed import compressed_to_array, encode_compressed, encode_compressed_depth
from mlesam_ros.events import EventStream, encode_evt3
from mlesam_ros.image_conversion import depth_to_metres, to_rgb8
from mlesam_ros.messages import MessageKit
from mlesam_ros.params import LIDAR_TO_OPTICAL
from mlesam_ros.pointcloud import pointcloud_to_lidar_image, pointcloud_xyz_intensity

EVENT_SENSOR = (720, 1280)  # Prophesee IMX636 (H, W)
PACKET_BYTES = 16384  # metavision_driver publishes raw SDK buffers of about this size


def best_of(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def camera_image(size, rng):
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    base = np.stack([xx * 255 // size[1], yy * 255 // size[0], (xx ^ yy) & 255], axis=2)
    return np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)


def ouster_cloud(kit, beams, columns, rng):
    dtype = np.dtype({"names": ["x", "y", "z", "intensity", "t", "reflectivity", "ring", "ambient", "range"],
                      "formats": ["<f4", "<f4", "<f4", "<f4", "<u4", "<u2", "<u2", "<u2", "<u4"],
                      "offsets": [0, 4, 8, 16, 20, 24, 26, 28, 32], "itemsize": 48})
    points = np.zeros(beams * columns, dtype=dtype)
    azimuth = np.repeat(np.linspace(-np.pi, np.pi, columns, endpoint=False)[None], beams, 0).ravel()
    elevation = np.repeat(np.radians(np.linspace(-22.5, 22.5, beams))[:, None], columns, 1).ravel()
    distance = rng.uniform(2, 80, points.size)
    points["x"] = distance * np.cos(elevation) * np.cos(azimuth)
    points["y"] = distance * np.cos(elevation) * np.sin(azimuth)
    points["z"] = distance * np.sin(elevation)
    points["intensity"] = rng.uniform(0, 255, points.size)
    points[rng.random(points.size) < 0.1][["x", "y", "z"]] = 0  # no returns
    msg = kit.pointcloud(points, kit.header(0, "os_lidar"))
    msg.height, msg.width, msg.row_step, msg.is_dense = beams, columns, 48 * columns, False
    return msg


def evt3_stream(n_events, rng):
    t = np.sort(rng.integers(1_000_000, 1_030_000, n_events)).astype(np.uint64)  # a 30 ms window
    x = rng.integers(0, EVENT_SENSOR[1], n_events).astype(np.uint16)
    y = rng.integers(0, EVENT_SENSOR[0], n_events).astype(np.uint16)
    return encode_evt3(t, x, y, rng.integers(0, 2, n_events), EVENT_SENSOR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1080x1920", "1024x1024"])
    parser.add_argument("--events", type=int, default=2_000_000, help="events in the 30 ms window")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "input_paths.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    kit = MessageKit.rosbags(typestore())
    report = report_header(torch.device("cpu"), {"sizes": args.sizes, "events": args.events, "runs": args.runs,
                                                 "cores": os.cpu_count()})
    # evt3 on one core: our path (EventStream over driver-sized packets) vs faery's decoder on the same bytes
    stream = evt3_stream(args.events, rng)
    packets = [kit.event_packet("evt3", stream[i:i + PACKET_BYTES], EVENT_SENSOR, kit.header(10**18, "ev"))
               for i in range(0, len(stream), PACKET_BYTES)]

    def decode_ours() -> EventStream:
        events = EventStream(window=0.03, retain=1.0)
        for msg in packets:
            events.add(msg)
        return events

    chunks = [bytes(msg.events) for msg in packets]

    def decode_library() -> int:  # the evt3 package alone on the same packets: what the library costs
        import evt3

        decoder = evt3.Decoder(sensor_width=EVENT_SENSOR[1], sensor_height=EVENT_SENSOR[0])
        return sum(len(decoder.feed(chunk)) for chunk in chunks)

    def decode_faery() -> int:
        import faery

        with faery.evt.Decoder(raw, None, None) as decoder:
            return sum(len(p["events"]) for p in decoder)

    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "s.raw"
        raw.write_bytes(b"%% evt 3.0\n%% format EVT3;width=%d;height=%d\n%% geometry %dx%d\n" % (
            EVENT_SENSOR[1], EVENT_SENSOR[0], EVENT_SENSOR[1], EVENT_SENSOR[0]) + stream)
        ours = best_of(decode_ours, args.runs)
        library = best_of(decode_library, args.runs)
        theirs = best_of(decode_faery, args.runs)
    decoded = decode_ours()
    window = decoded.window(decoded.newest_ns)
    render = best_of(lambda: render_event_frame(window.x, window.y, window.polarity, EVENT_SENSOR, 32.0),
                     args.runs)
    report["evt3"] = {"events": args.events, "bytes": len(stream), "packets": len(packets),
                      "decode_ms": round(ours * 1e3, 2), "decode_m_events_per_s": round(args.events / ours / 1e6, 1),
                      "evt3_library_ms": round(library * 1e3, 2),
                      "evt3_library_m_events_per_s": round(args.events / library / 1e6, 1),
                      "faery_decode_ms": round(theirs * 1e3, 2),
                      "faery_m_events_per_s": round(args.events / theirs / 1e6, 1),
                      "library_ratio_vs_faery": round(theirs / library, 2),
                      "path_ratio_vs_faery": round(theirs / ours, 2),
                      "render_ms": round(render * 1e3, 2),
                      "render_m_events_per_s": round(window.x.size / render / 1e6, 1)}
    extrinsic = np.asarray(LIDAR_TO_OPTICAL).reshape(4, 4)
    clouds = {"ouster_64x1024": ouster_cloud(kit, 64, 1024, rng), "ouster_128x2048": ouster_cloud(kit, 128, 2048, rng)}
    report["sizes"] = {}
    for text in args.sizes:
        size = tuple(int(v) for v in text.split("x"))
        k = np.array([[size[1] / 2, 0, size[1] / 2], [0, size[1] / 2, size[0] / 2], [0, 0, 1.0]])
        image = camera_image(size, rng)
        jpeg = kit.compressed_image(*encode_compressed(image, "rgb8", "jpeg"), kit.header(0, "c"))
        png = kit.compressed_image(*encode_compressed(image, "rgb8", "png"), kit.header(0, "c"))
        depth = rng.uniform(0.5, 9.0, size).astype(np.float32)
        depth16 = kit.compressed_image(*encode_compressed_depth(np.rint(depth * 1000).astype(np.uint16), "16UC1"),
                                       kit.header(0, "d"))
        depth32 = kit.compressed_image(*encode_compressed_depth(depth, "32FC1"), kit.header(0, "d"))
        paths = {
            "camera_jpeg": lambda m=jpeg: to_rgb8(*compressed_to_array(m)),
            "camera_png": lambda m=png: to_rgb8(*compressed_to_array(m)),
            "depth_compressedDepth_16UC1": lambda m=depth16: depth_to_metres(*compressed_to_array(m)),
            "depth_compressedDepth_32FC1": lambda m=depth32: depth_to_metres(*compressed_to_array(m)),
            "event_window_render": lambda s=size: render_event_frame(window.x, window.y, window.polarity,
                                                                     EVENT_SENSOR, 32.0),
            **{f"lidar_{name}": (lambda m=msg, s=size, kk=k: pointcloud_to_lidar_image(m, extrinsic, kk, s))
               for name, msg in clouds.items()},
        }
        for name, msg in clouds.items():  # the projection alone (transform, z-buffer, encoding), as points/s
            xyz, intensity = pointcloud_xyz_intensity(msg)
            paths[f"projection_only_{name}"] = (lambda p=xyz, i=intensity, s=size, kk=k:
                                                project_points_uint8(p, i, extrinsic, kk, s))
            # the float image + encoding the node ran before (same uint8 image), for the ratio
            paths[f"projection_float_image_{name}"] = (lambda p=xyz, i=intensity, s=size, kk=k:
                                                       lidar_image_to_uint8(project_points(p, i, extrinsic, kk, s)))
        results = {name: round(best_of(fn, args.runs) * 1e3, 2) for name, fn in paths.items()}
        points = {f"{kind}_{name}": round(msg.width * msg.height / (results[f"{kind}_{name}"] / 1e3) / 1e6, 1)
                  for name, msg in clouds.items() for kind in ("lidar", "projection_only", "projection_float_image")}
        all_four = (results["camera_jpeg"] + results["depth_compressedDepth_16UC1"] + report["evt3"]["decode_ms"]
                    + results["event_window_render"] + results["lidar_ouster_128x2048"])
        report["sizes"][text] = {"ms_per_frame": results, "lidar_m_points_per_s": points,
                                 "all_four_ms": round(all_four, 2)}
        print(text, results, points, f"all four {all_four:.1f} ms")
    evt3_rate = report["evt3"]["decode_m_events_per_s"]
    worst_points = min(p for s in report["sizes"].values() for k, p in s["lidar_m_points_per_s"].items()
                       if k.startswith("projection_only"))
    report["targets"] = {
        "evt3_decode_20M_events_per_s": {"status": "met" if evt3_rate >= 20 else "missed",
                                         "figure": f"{evt3_rate} M events/s on one core"},
        "cloud_projection_20M_points_per_s": {"status": "met" if worst_points >= 20 else "missed",
                                              "figure": f"{worst_points} M points/s, projection alone (slowest cloud "
                                                                        f"and size; lidar_* are the whole path)"}}
    print(report["evt3"])
    write_report(report, args.out)


if __name__ == "__main__":
    main()
