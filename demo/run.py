"""The demo, end to end on the embedded procedural scenes (`make demo`, or `python -m demo` from the repo root).

procedural scenes -> a small MLE-SAM trained on this CPU -> a ROS 2 bag of four sensors in which depth drops
out for a stretch and LiDAR sends corrupt messages -> the node's pipeline replayed on that bag (and on a clean
copy of it) -> demo_out/: frames.png, frames.gif, timeline.png, summary.md, summary.json, the output bag.

Every step is one of the project's own commands, printed before it runs, so each can be rerun by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RANDOM_INIT_NOTE = (
    "No SAM2 checkpoint was given, so the frozen SAM2 image encoder is RANDOMLY INITIALISED (seeded) and only the "
    "LoRA experts, router and heads were trained, for a few minutes on this CPU. The numbers show that the whole "
    "pipeline works and learns; they say nothing about the accuracy of MLE-SAM with real SAM2 weights. To run "
    "with the official weights: download sam2.1_hiera_tiny.pt from Meta's SAM 2.1 release and run "
    "`make demo SAM2_CHECKPOINT=/path/to/sam2.1_hiera_tiny.pt` (Hiera-T at 256 px: much slower on a CPU).")
STANDIN_NOTE = (
    "The frozen SAM2 image encoder is the project's STAND-IN (--standin): the tiny Hiera pretrained on procedural "
    "RGB scenes of this generator with these 25 classes (other scenes than the demo's), shipped as "
    "training/assets/ (benchmarks/results/standin_backbone.md). It is an RGB-pretrained encoder, the regime the "
    "paper adapts, but not SAM2: it learnt this generator's classes, where SAM2 learnt class-agnostic masks on "
    "real images, so the numbers say nothing about MLE-SAM with real SAM2 weights either.")


@dataclass
class DemoPlan:
    """What the demo does, derived from its command line."""

    out: Path
    size: int = 128
    train_scenes: int = 600
    val_scenes: int = 100
    seed: int = 0
    train_config: str = "config/train/synthetic_cpu.yaml"
    train_overrides: list[str] = field(default_factory=list)
    train_steps: int | None = None
    # None: the train config's every-subset recipe (chosen by benchmarks/subset_robustness, docs/training.md
    # section 8), which scores highest on the demo's bag. A probability: the paper's recipe (whatever the train
    # config adds) plus plain modality dropout, so that the model learns to do without any one sensor; it trains
    # several times faster and scores lower (docs/training.md, "The demo's training recipe")
    modality_dropout: float | None = None
    sam2_checkpoint: Path | None = None
    standin: bool = False  # the shipped stand-in encoder instead of a random one (tiny config, 128 px)
    retrain: bool = False
    rate: float = 10.0
    drop: str = "depth@3.0-6.0"
    corrupt: str = "lidar@0.1"

    @property
    def recipe(self) -> str:
        """The training recipe in words (for the summary)."""
        if self.modality_dropout is None:
            return f"the every-subset recipe of {self.train_config}"
        return f"the paper's recipe plus modality dropout p = {self.modality_dropout:g}"

    @property
    def standin_checkpoint(self) -> Path:
        """Where the demo writes the official-format checkpoint of the shipped stand-in encoder."""
        return self.out / "standin_tiny_supervised.pt"

    @property
    def backbone(self) -> Path | None:
        """The SAM2 checkpoint that training and replay load (None: the seeded random backbone)."""
        return self.standin_checkpoint if self.standin else self.sam2_checkpoint

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def train_dir(self) -> Path:
        return self.out / "train"


@dataclass
class StepLog:
    """Wall time of each step and the command that ran it."""

    steps: list[dict] = field(default_factory=list)

    def run(self, index: int, total: int, name: str, command: Sequence[str]) -> None:
        """Print the step and its command, run it (output streams through), record its wall time."""
        shown = " ".join(shlex.quote(part) for part in command).replace(sys.executable, "python")
        print(f"\n[{index}/{total}] {name}\n      $ {shown}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO_ROOT, env=_child_env())
        seconds = time.perf_counter() - start
        print(f"      done in {seconds:.0f} s", flush=True)
        self.steps.append({"name": name, "command": shown, "seconds": round(seconds, 1)})

    def skip(self, index: int, total: int, name: str, reason: str) -> None:
        """Report a step that is not needed (its output is already there)."""
        print(f"\n[{index}/{total}] {name}: {reason}", flush=True)
        self.steps.append({"name": name, "command": f"skipped: {reason}", "seconds": 0.0})


def _child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Idle OpenMP threads sleep instead of spinning: on a small, shared CPU spinning threads stall each other.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def scenes_stamp(plan: DemoPlan) -> dict:
    """What identifies a generated scene set (regenerated when any of it changes)."""
    return {"size": plan.size, "train": plan.train_scenes, "val": plan.val_scenes, "seed": plan.seed}


def run_demo(plan: DemoPlan) -> dict:
    """Run every step; returns the summary written to summary.json."""
    from demo import report
    from mlesam_core.data import DeliverDataset
    from mlesam_core.data.classes import get_class_table
    from training.config import paper_recipe_overrides

    total = 8
    log = StepLog()
    plan.out.mkdir(parents=True, exist_ok=True)
    random_init = plan.backbone is None
    print("MLE-SAM demo: procedural scenes -> training -> ROS 2 bag with a dropped and a corrupt sensor -> "
          f"replay through the node's pipeline -> {plan.out}/")
    if random_init:
        print(f"\nNOTE: {RANDOM_INIT_NOTE}")
    if plan.standin:
        from training.pretrain_backbone import SHIPPED_ENCODER, expand_encoder

        print(f"\nNOTE: {STANDIN_NOTE}")
        if not plan.standin_checkpoint.is_file():
            expand_encoder(REPO_ROOT / SHIPPED_ENCODER, plan.standin_checkpoint)

    stamp_file = plan.data / "demo_scenes.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == scenes_stamp(plan):
        log.skip(1, total, "procedural scenes", f"already in {plan.data}")
    else:
        shutil.rmtree(plan.data, ignore_errors=True)
        log.run(1, total, "procedural scenes (DELIVER layout)", _python(
            "mlesam_core.data.synthetic", "--out", str(plan.data), "--size", str(plan.size), "--train",
            str(plan.train_scenes), "--val", str(plan.val_scenes), "--test", "0", "--seed", str(plan.seed)))
        stamp_file.write_text(json.dumps(scenes_stamp(plan)))

    adapters = plan.train_dir / "adapters.safetensors"
    model_config = plan.train_dir / "model.yaml"
    overrides = [f"data.root={plan.data}", *plan.train_overrides]
    if plan.modality_dropout is not None:
        overrides += [*paper_recipe_overrides(), f"data.modality_dropout.p={plan.modality_dropout:g}"]
    if plan.train_steps is not None:
        overrides.append(f"optim.max_steps={plan.train_steps}")
    if plan.sam2_checkpoint is not None:  # Meta's Hiera-T; the stand-in is the train config's own tiny Hiera
        overrides += ["model.config=config/model/mlesam_hiera_t.yaml", "model.image_size=256"]
    if plan.backbone is not None:
        overrides += [f"sam2_checkpoint={plan.backbone}", "allow_random_init=false"]
    train_command = _python("training.train", "--config", plan.train_config, "--out", str(plan.train_dir),
                            *overrides)
    train_stamp = plan.train_dir / "demo_training.json"
    trained_the_same_way = (train_stamp.exists() and json.loads(train_stamp.read_text()) == train_command[1:]
                            and adapters.exists() and model_config.exists())
    if trained_the_same_way and not plan.retrain:
        log.skip(2, total, "training", f"adapters already in {plan.train_dir} (--retrain to train again)")
    else:
        shutil.rmtree(plan.train_dir, ignore_errors=True)
        log.run(2, total, "training a small MLE-SAM on this CPU", train_command)
        train_stamp.write_text(json.dumps(train_command[1:]))

    bags = {"dropout": plan.out / "bag_dropout", "clean": plan.out / "bag_clean"}
    for bag in bags.values():
        shutil.rmtree(bag, ignore_errors=True)
    to_bag = ["mlesam_ros.dataset_to_bag", "--format", "deliver", "--root", str(plan.data), "--split", "val",
              "--rate", f"{plan.rate:g}"]
    log.run(3, total, "ROS 2 bag of four sensors: depth dropout and corrupt LiDAR messages", _python(
        *to_bag, "--out", str(bags["dropout"]), "--drop", plan.drop, "--corrupt", plan.corrupt))
    log.run(4, total, "the same frames as a clean bag (for a like-for-like comparison)", _python(
        *to_bag, "--out", str(bags["clean"])))

    replays = {"dropout": plan.out / "replay", "clean": plan.out / "replay_clean"}
    replay_args = ["--set", f"model.config={model_config}", "--set", f"model.adapters={adapters}"]
    replay_args += (["--allow-random-init"] if random_init else
                    ["--set", f"model.sam2_checkpoint={plan.backbone}"])
    for index, (name, title) in enumerate((("dropout", "replay through the node's pipeline"),
                                           ("clean", "replay of the clean bag")), start=5):
        shutil.rmtree(replays[name], ignore_errors=True)
        log.run(index, total, title, _python("mlesam_ros.replay", "--bag", str(bags[name]), "--out",
                                             str(replays[name]), *replay_args))

    # the same frames as a robot's drivers record them, replayed with the drivers' topics (types from the bag)
    from mlesam_ros.dataset_to_bag import RECORDED_TOPICS

    recorded_bag, replay_recorded = plan.out / "bag_recorded", plan.out / "replay_recorded"
    shutil.rmtree(recorded_bag, ignore_errors=True)
    shutil.rmtree(replay_recorded, ignore_errors=True)
    log.run(7, total, "the same frames as a robot records them: CompressedImage png, compressedDepth, evt3 "
                      "EventPackets, PointCloud2 + /tf_static (MCAP)",
            _python(*to_bag, "--out", str(recorded_bag), "--as-recorded", "--depth-encoding", "16UC1"))
    topics = [arg for m in ("rgb", "depth", "event", "lidar")
              for arg in ("--set", f"sensors.{m}.topic={RECORDED_TOPICS[m]}")]
    log.run(8, total, "replay of the recorded-style bag", _python(
        "mlesam_ros.replay", "--bag", str(recorded_bag), "--out", str(replay_recorded), *replay_args, *topics))

    print("\n[report] frames, timeline and summary", flush=True)
    table = get_class_table("deliver")
    dropout, clean = report.Replayed.load(replays["dropout"]), report.Replayed.load(replays["clean"])
    record = report.bag_record(bags["dropout"])
    val = DeliverDataset(plan.data, "val", ("rgb",))
    conditions = [_condition_name(val.load(i)["meta"]) for i in range(len(dropout.frames))]
    strip, gif = report.write_frames(dropout, record, bags["dropout"], replays["dropout"] / "bag", conditions,
                                     table, plan.out)
    timeline = report.write_timeline(dropout, record, conditions, plan.out)
    summary = {
        "backbone": {"random_init": random_init, "standin": plan.standin,
                     "sam2_checkpoint": str(plan.backbone or ""),
                     "note": (RANDOM_INIT_NOTE if random_init else STANDIN_NOTE if plan.standin
                              else "official SAM2 weights")},
        "groups": report.comparisons(dropout, clean, record, table),
        "replay": dropout.summary,
        "bag": record,
        "recorded_style": report.recorded_comparison(clean, report.Replayed.load(replay_recorded),
                                                     replays["clean"] / "bag", replay_recorded / "bag", table),
        "training": _training_summary(plan.train_dir, plan.recipe),
        "steps": log.steps,
        "total_seconds": round(sum(s["seconds"] for s in log.steps), 1),
    }
    (plan.out / "summary.json").write_text(json.dumps(summary, indent=2))
    markdown = report.write_markdown(summary, plan.out)
    _print_ending(summary, [markdown, strip, gif, timeline, replays["dropout"] / "bag"])
    return summary


def _condition_name(meta: dict) -> str:
    case = meta.get("case")
    return f"{meta['condition']}/{case}" if case else str(meta["condition"])


def _training_summary(train_dir: Path, recipe: str) -> dict | None:
    metrics = train_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    val = [r for r in records if r.get("kind") == "val"]
    train = [r for r in records if r.get("kind") == "train"]
    return {"recipe": recipe,
            "steps": train[-1]["step"] if train else None,
            "best_val_miou": max((r["miou"] for r in val), default=None),
            "final_val_miou": val[-1]["miou"] if val else None}


def _print_ending(summary: dict, paths: Sequence[Path]) -> None:
    groups = summary["groups"]
    print(f"\nDemo finished in {summary['total_seconds']:.0f} s.")
    print(f"  mIoU all frames: {groups['all_frames']['miou']['all_classes']:.3f}"
          f"   latency p50 {summary['replay']['latency_ms']['p50']:.0f} ms")
    for key, group in groups.items():
        if "_dropout_" in key and group["during_dropout"].get("frames"):
            print(f"  {key}: {group['during_dropout']['miou']['all_classes']:.3f} during the dropout vs "
                  f"{group['same_frames_all_sensors']['miou']['all_classes']:.3f} on the same frames with all sensors")
    if summary["backbone"]["random_init"]:
        print("  (random SAM2 backbone: see the note at the top of summary.md)")
    elif summary["backbone"].get("standin"):
        print("  (the stand-in backbone, not SAM2: see the note at the top of summary.md)")
    print("Look at:")
    for path in paths:
        print(f"  {path}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `python -m demo [--out demo_out] [--sam2-checkpoint F] [--retrain] ...`."""
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="results folder")
    parser.add_argument("--sam2-checkpoint", type=Path, default=os.environ.get("SAM2_CHECKPOINT") or None,
                        help="official sam2.1_hiera_tiny.pt (default: $SAM2_CHECKPOINT; none = random backbone)")
    parser.add_argument("--standin", action="store_true",
                        help="freeze the shipped stand-in encoder (RGB-pretrained on procedural scenes, "
                             "benchmarks/results/standin_backbone.md) instead of a random one")
    parser.add_argument("--retrain", action="store_true", help="train again even if adapters exist in --out")
    parser.add_argument("--train-steps", type=int, help="optimiser steps (default: the train config's)")
    recipe = parser.add_mutually_exclusive_group()
    recipe.add_argument("--every-subset", dest="modality_dropout", action="store_const", const=None,
                        default=DemoPlan.modality_dropout,
                        help="train with the train config's every-subset recipe (the default)")
    recipe.add_argument("--modality-dropout", type=float, metavar="P",
                        help="train with the paper's recipe plus plain modality dropout of probability P instead "
                             "(e.g. 0.25: several times faster, lower mIoU)")
    parser.add_argument("--train-scenes", type=int, default=600)
    parser.add_argument("--val-scenes", type=int, default=100)
    parser.add_argument("--set", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra training override, e.g. --set optim.lr=5e-4 (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.sam2_checkpoint is not None and not args.sam2_checkpoint.is_file():
        parser.error(f"--sam2-checkpoint: no such file: {args.sam2_checkpoint}")
    if args.standin and args.sam2_checkpoint is not None:
        parser.error("--standin and --sam2-checkpoint (or $SAM2_CHECKPOINT) name two backbones: give one")
    plan = DemoPlan(out=args.out.resolve(), sam2_checkpoint=args.sam2_checkpoint, standin=args.standin,
                    retrain=args.retrain,
                    train_steps=args.train_steps, modality_dropout=args.modality_dropout,
                    train_scenes=args.train_scenes, val_scenes=args.val_scenes,
                    train_overrides=args.train_overrides)
    try:
        run_demo(plan)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"demo step failed (exit {exc.returncode}): {' '.join(map(str, exc.cmd))}") from None


__all__ = ["DemoPlan", "run_demo", "main"]
