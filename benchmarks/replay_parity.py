"""Outputs of the replay before and after a change: the same bag replayed by two checkouts, labels and confidence
compared frame by frame (the check that a refactoring of the frame path changed no published output).

    python -m benchmarks.replay_parity --before /tmp/old_tree --bag demo_out/bag_dropout

`--before` is a checkout of the earlier commit (`git worktree add /tmp/old_tree <commit>`); both replays run the
tiny model config on the seeded random backbone without adapters (the only model both versions read alike), with
one torch thread. The record goes to benchmarks/results/replay_parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TOPICS = ("/mlesam/labels", "/mlesam/confidence")
REPLAY_SETTINGS = ("model.config=config/model/mlesam_tiny.yaml", "model.allow_random_init=true", "model.threads=1")


def replay(checkout: Path, bag: Path, out: Path) -> None:
    """Replay `bag` with the code of `checkout` (its own packages first on the path) into `out`."""
    command = [sys.executable, "-m", "mlesam_ros.replay", "--bag", str(bag), "--out", str(out)]
    for setting in REPLAY_SETTINGS:
        command += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    subprocess.run(command, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_outputs(bag: Path) -> dict[str, dict[int, np.ndarray]]:
    """{topic: {header stamp ns: image array}} of the compared output topics."""
    from rosbags.highlevel import AnyReader

    from mlesam_ros.image_conversion import image_msg_to_array
    from mlesam_ros.messages import stamp_to_ns

    outputs: dict[str, dict[int, np.ndarray]] = {topic: {} for topic in TOPICS}
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic in TOPICS]
        for connection, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            outputs[connection.topic][stamp_to_ns(msg.header.stamp)] = image_msg_to_array(msg)
    return outputs


def compare(before: dict[str, dict[int, np.ndarray]], after: dict[str, dict[int, np.ndarray]]) -> dict:
    """Frames per topic, stamps in common, frames with equal labels, largest confidence difference."""
    labels_before, labels_after = before["/mlesam/labels"], after["/mlesam/labels"]
    common = sorted(set(labels_before) & set(labels_after))
    conf_before, conf_after = before["/mlesam/confidence"], after["/mlesam/confidence"]
    conf_common = sorted(set(conf_before) & set(conf_after))
    return {
        "frames_before": len(labels_before), "frames_after": len(labels_after), "stamps_in_common": len(common),
        "frames_with_equal_labels": sum(bool(np.array_equal(labels_before[s], labels_after[s])) for s in common),
        "pixels_equal_fraction": float(np.mean([np.mean(labels_before[s] == labels_after[s]) for s in common]))
        if common else None,
        "confidence_max_abs_diff": max((float(np.abs(conf_before[s] - conf_after[s]).max()) for s in conf_common),
                                       default=None),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay_parity", description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the earlier commit")
    parser.add_argument("--bag", type=Path, default=REPO_ROOT / "demo_out" / "bag_dropout",
                        help="the bag to replay (default: the demo's, depth dropping out)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "replay_parity.json")
    args = parser.parse_args(argv)
    bag = args.bag.resolve()
    with tempfile.TemporaryDirectory(prefix="mlesam_parity_") as work:
        replay(args.before.resolve(), bag, Path(work) / "before")
        replay(REPO_ROOT, bag, Path(work) / "after")
        result = compare(read_outputs(Path(work) / "before" / "bag"), read_outputs(Path(work) / "after" / "bag"))
    before_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.before, capture_output=True,
                                   text=True).stdout.strip()
    record = {"command": "python -m benchmarks.replay_parity " + " ".join(argv or sys.argv[1:]),
              "bag": bag.name, "before_commit": before_commit, "settings": list(REPLAY_SETTINGS),
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
