"""The demo, end to end on the embedded procedural scenes (`make demo`, or `python -m demo` from the repo root).

procedural scenes -> MLE-SAM on the shipped stand-in encoder with the shipped demo weights (checked against
demo/assets/demo_weights.json; `--train` trains them here instead) -> a ROS 2 bag of four sensors in which depth
drops out for a stretch and LiDAR sends corrupt messages -> the node's pipeline replayed on that bag (and on a clean
copy of it, and on the same frames as robot drivers record them) -> demo_out/: frames.png, frames.gif,
timeline.png, summary.md, summary.json, the output bag.

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
from typing import Any

from demo.weights import ASSETS, REPO_ROOT, DemoWeightsError, Recipe, Scenes, standin_checkpoint, verify
from training.cli_errors import EXIT_BAD_INPUT

STANDIN_NOTE = (
    "The frozen SAM2 image encoder is the project's STAND-IN: the tiny Hiera pretrained on procedural RGB scenes "
    "of this generator with these 25 classes (other scenes than the demo's), shipped in training/assets/ "
    "(benchmarks/results/standin_backbone.md). It is an RGB-pretrained encoder, the regime the method adapts, but "
    "not SAM2: it learnt this generator's classes, where SAM2 learnt class-agnostic masks on real images, so the "
    "numbers show the pipeline working, not the accuracy of MLE-SAM with SAM2's weights on real data.")
SAM2_NOTE = "The frozen image encoder is the official SAM2 checkpoint given with --sam2-checkpoint."


@dataclass
class DemoPlan:
    """What the demo does, derived from its command line."""

    out: Path
    train: bool = False  # train the adapters here (implied by a SAM2 checkpoint) instead of the shipped weights
    weights: Path = ASSETS  # the shipped demo weights and their record
    size: int = Scenes.size
    train_scenes: int = Scenes.train
    val_scenes: int = Scenes.val
    seed: int = Scenes.seed
    recipe: Recipe = field(default_factory=Recipe)
    sam2_checkpoint: Path | None = None  # Meta's Hiera-T instead of the stand-in (trains: no shipped weights fit)
    retrain: bool = False
    rate: float = 10.0
    drop: str = "depth@3.0-6.0"
    corrupt: str = "lidar@0.1"

    @property
    def trains(self) -> bool:
        """Whether the demo trains its adapters (the shipped ones are for the stand-in encoder only)."""
        return self.train or self.sam2_checkpoint is not None

    @property
    def scenes(self) -> Scenes:
        """The scene set: the validation scenes of the bag, and the training scenes when the demo trains."""
        return Scenes(train=self.train_scenes if self.trains else 0, val=self.val_scenes, size=self.size,
                      seed=self.seed)

    @property
    def backbone(self) -> Path:
        """The SAM2 checkpoint that training and replay load: Meta's, or the shipped stand-in expanded."""
        return self.sam2_checkpoint or self.out / "standin_tiny_supervised.pt"

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def train_dir(self) -> Path:
        return self.out / "train"


@dataclass
class StepLog:
    """Wall time of each step and the command that ran it."""

    total: int
    steps: list[dict] = field(default_factory=list)

    def run(self, name: str, command: Sequence[str]) -> None:
        """Print the step and its command, run it (output streams through), record its wall time."""
        shown = " ".join(shlex.quote(str(part)) for part in command).replace(sys.executable, "python")
        print(f"\n[{len(self.steps) + 1}/{self.total}] {name}\n      $ {shown}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO_ROOT, env=_child_env())
        self._done(name, shown, time.perf_counter() - start)

    def call(self, name: str, what: str, function: Any) -> Any:
        """Print the step, run `function()` in this process, record its wall time; returns its result."""
        print(f"\n[{len(self.steps) + 1}/{self.total}] {name}\n      {what}", flush=True)
        start = time.perf_counter()
        result = function()
        self._done(name, what, time.perf_counter() - start)
        return result

    def skip(self, name: str, reason: str) -> None:
        """Report a step that is not needed (its output is already there)."""
        print(f"\n[{len(self.steps) + 1}/{self.total}] {name}: {reason}", flush=True)
        self.steps.append({"name": name, "command": f"skipped: {reason}", "seconds": 0.0})

    def _done(self, name: str, command: str, seconds: float) -> None:
        print(f"      done in {seconds:.0f} s", flush=True)
        self.steps.append({"name": name, "command": command, "seconds": round(seconds, 1)})


def _child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Idle OpenMP threads sleep instead of spinning: on a small, shared CPU spinning threads stall each other.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def run_demo(plan: DemoPlan) -> dict:
    """Run every step; returns the summary written to summary.json. DemoWeightsError (before anything else runs)
    when the shipped weights are missing, changed or stale."""
    from demo import report
    from mlesam_core.data import DeliverDataset
    from mlesam_core.data.classes import get_class_table

    started = time.perf_counter()
    log = StepLog(total=8)
    plan.out.mkdir(parents=True, exist_ok=True)
    print("MLE-SAM demo: procedural scenes -> " + ("training" if plan.trains else "the shipped demo weights")
          + f" -> ROS 2 bag with a dropped and a corrupt sensor -> replay through the node's pipeline -> {plan.out}/")
    note = SAM2_NOTE if plan.sam2_checkpoint is not None else STANDIN_NOTE
    print(f"\nNOTE: {note}")
    if plan.sam2_checkpoint is None:
        standin_checkpoint(plan.backbone)
    if plan.trains:
        model_config, adapters, training = _train(plan, log)
    else:
        model_config, adapters, training = log.call(
            "the shipped demo weights", f"checking {plan.weights} (sha256, model config, encoder)",
            lambda: _shipped_weights(plan))
        _scenes(plan, log)

    bags = {"dropout": plan.out / "bag_dropout", "clean": plan.out / "bag_clean"}
    for bag in bags.values():
        shutil.rmtree(bag, ignore_errors=True)
    to_bag = ["mlesam_ros.dataset_to_bag", "--format", "deliver", "--root", str(plan.data), "--split", "val",
              "--rate", f"{plan.rate:g}"]
    log.run("ROS 2 bag of four sensors: depth dropout and corrupt LiDAR messages", _python(
        *to_bag, "--out", str(bags["dropout"]), "--drop", plan.drop, "--corrupt", plan.corrupt))
    log.run("the same frames as a clean bag (for a like-for-like comparison)", _python(
        *to_bag, "--out", str(bags["clean"])))

    replays = {"dropout": plan.out / "replay", "clean": plan.out / "replay_clean"}
    replay_args = ["--set", f"model.config={model_config}", "--set", f"model.adapters={adapters}",
                   "--set", f"model.sam2_checkpoint={plan.backbone}"]
    for name, title in (("dropout", "replay through the node's pipeline"), ("clean", "replay of the clean bag")):
        shutil.rmtree(replays[name], ignore_errors=True)
        log.run(title, _python("mlesam_ros.replay", "--bag", str(bags[name]), "--out", str(replays[name]),
                               *replay_args))

    # the same frames as a robot's drivers record them, replayed with the drivers' topics (types from the bag)
    from mlesam_ros.dataset_to_bag import RECORDED_TOPICS

    recorded_bag, replay_recorded = plan.out / "bag_recorded", plan.out / "replay_recorded"
    shutil.rmtree(recorded_bag, ignore_errors=True)
    shutil.rmtree(replay_recorded, ignore_errors=True)
    log.run("the same frames as a robot records them: CompressedImage png, compressedDepth, evt3 EventPackets, "
            "PointCloud2 + /tf_static (MCAP)",
            _python(*to_bag, "--out", str(recorded_bag), "--as-recorded", "--depth-encoding", "16UC1"))
    topics = [arg for m in ("rgb", "depth", "event", "lidar")
              for arg in ("--set", f"sensors.{m}.topic={RECORDED_TOPICS[m]}")]
    log.run("replay of the recorded-style bag", _python(
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
        "backbone": {"standin": plan.sam2_checkpoint is None, "sam2_checkpoint": str(plan.backbone), "note": note},
        "groups": report.comparisons(dropout, clean, record, table),
        "replay": dropout.summary,
        "bag": record,
        "recorded_style": report.recorded_comparison(clean, report.Replayed.load(replay_recorded),
                                                     replays["clean"] / "bag", replay_recorded / "bag", table),
        "training": training,
        "steps": log.steps,
        "total_seconds": round(time.perf_counter() - started, 1),  # the steps, the stand-in and the report
    }
    (plan.out / "summary.json").write_text(json.dumps(summary, indent=2))
    markdown = report.write_markdown(summary, plan.out)
    _print_ending(summary, [markdown, strip, gif, timeline, replays["dropout"] / "bag"])
    return summary


def _scenes(plan: DemoPlan, log: StepLog) -> None:
    """Generate the plan's scenes unless the data folder already holds exactly them."""
    stamp_file = plan.data / "demo_scenes.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == plan.scenes.stamp():
        log.skip("procedural scenes", f"already in {plan.data}")
        return
    shutil.rmtree(plan.data, ignore_errors=True)
    what = "training and validation" if plan.trains else "validation"
    log.run(f"procedural scenes ({what}, DELIVER layout)", plan.scenes.command(plan.data))
    stamp_file.write_text(json.dumps(plan.scenes.stamp()))


def _shipped_weights(plan: DemoPlan) -> tuple[Path, Path, dict]:
    """Verify the shipped weights; the model config for the replay is the one embedded in the adapters."""
    import yaml

    from mlesam_core.config_io import to_dict
    from mlesam_core.model.adapters import adapter_config

    record = verify(plan.weights, plan.recipe.model_config(plan.data, plan.backbone), plan.backbone)
    adapters = plan.weights / record["adapters"]
    model_config = plan.out / "model.yaml"
    model_config.write_text(yaml.safe_dump(to_dict(adapter_config(adapters)), sort_keys=False))
    print(f"      {adapters}: sha256 {record['sha256'][:16]}... as recorded; trained by `{record['command']}` "
          f"({record['steps']} steps, validation mIoU {record['validation']['final_val_miou']:.3f})", flush=True)
    training = {"source": f"shipped: {plan.weights / 'demo_weights.json'}", "command": record["command"],
                "steps": record["steps"], "final_val_miou": record["validation"]["final_val_miou"],
                "best_val_miou": record["validation"]["best_val_miou"]}
    return model_config, adapters, training


def _train(plan: DemoPlan, log: StepLog) -> tuple[Path, Path, dict]:
    """Generate the training scenes and train the adapters in the results folder (reused when the same command
    trained them before, unless --retrain)."""
    from demo.weights import validation_scores

    _scenes(plan, log)
    adapters, model_config = plan.train_dir / "adapters.safetensors", plan.train_dir / "model.yaml"
    command = plan.recipe.train_command(plan.data, plan.backbone, plan.train_dir)
    train_stamp = plan.train_dir / "demo_training.json"
    trained_the_same_way = (train_stamp.exists() and json.loads(train_stamp.read_text()) == command[1:]
                            and adapters.exists() and model_config.exists())
    if trained_the_same_way and not plan.retrain:
        log.skip("training", f"adapters already in {plan.train_dir} (--retrain to train again)")
    else:
        shutil.rmtree(plan.train_dir, ignore_errors=True)
        log.run("training the adapters on this CPU", command)
        train_stamp.write_text(json.dumps(command[1:]))
    training = {"source": f"trained here: {plan.train_dir}", "command": " ".join(command[1:]),
                **validation_scores(plan.train_dir)}
    return model_config, adapters, training


def _condition_name(meta: dict) -> str:
    case = meta.get("case")
    return f"{meta['condition']}/{case}" if case else str(meta["condition"])


def _print_ending(summary: dict, paths: Sequence[Path]) -> None:
    groups = summary["groups"]
    print(f"\nDemo finished in {summary['total_seconds']:.0f} s.")
    print(f"  mIoU all frames: {groups['all_frames']['miou']['all_classes']:.3f}"
          f"   latency p50 {summary['replay']['latency_ms']['p50']:.0f} ms")
    for key, group in groups.items():
        if "_dropout_" in key and group["during_dropout"].get("frames"):
            print(f"  {key}: {group['during_dropout']['miou']['all_classes']:.3f} during the dropout vs "
                  f"{group['same_frames_all_sensors']['miou']['all_classes']:.3f} on the same frames with all sensors")
    if summary["backbone"]["standin"]:
        print("  (the stand-in encoder, not SAM2: see the note at the top of summary.md)")
    print("Look at:")
    for path in paths:
        print(f"  {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m demo [--train] [--out demo_out] [--sam2-checkpoint F] ...`; returns the exit
    status (2: bad arguments or refused demo weights; 1: a step failed)."""
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="results folder")
    parser.add_argument("--weights", type=Path, default=ASSETS,
                        help="folder of the demo weights and their record (default: the shipped ones)")
    parser.add_argument("--train", action="store_true",
                        help="train the adapters here (about 20 minutes on 2 cores) instead of using the shipped "
                             f"demo weights ({ASSETS.relative_to(REPO_ROOT)})")
    parser.add_argument("--sam2-checkpoint", type=Path, default=os.environ.get("SAM2_CHECKPOINT") or None,
                        help="official sam2.1_hiera_tiny.pt instead of the stand-in encoder (default: "
                             "$SAM2_CHECKPOINT); trains, as the shipped weights are for the stand-in")
    parser.add_argument("--retrain", action="store_true",
                        help="with --train: train again even if adapters trained the same way are in --out")
    parser.add_argument("--train-steps", type=int, help="with --train: optimiser steps (default: the train "
                                                         "config's)")
    parser.add_argument("--train-scenes", type=int, default=DemoPlan.train_scenes)
    parser.add_argument("--val-scenes", type=int, default=DemoPlan.val_scenes)
    parser.add_argument("--set", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with --train: extra training override, e.g. --set optim.lr=5e-4 (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.sam2_checkpoint is not None and not args.sam2_checkpoint.is_file():
        parser.error(f"--sam2-checkpoint: no such file: {args.sam2_checkpoint}")
    trains = args.train or args.sam2_checkpoint is not None
    if not trains and (args.retrain or args.train_steps is not None or args.train_overrides):
        parser.error("--retrain, --train-steps and --set change the training: add --train (make demo TRAIN=1)")
    overrides = list(args.train_overrides)
    if args.sam2_checkpoint is not None:  # Meta's Hiera-T; the stand-in is the train config's own tiny Hiera
        overrides = ["model.config=config/model/mlesam_hiera_t.yaml", "model.image_size=256", *overrides]
    if args.train_steps is not None:
        overrides.append(f"optim.max_steps={args.train_steps}")
    plan = DemoPlan(out=args.out.resolve(), train=args.train, weights=args.weights.resolve(),
                    sam2_checkpoint=args.sam2_checkpoint,
                    retrain=args.retrain, recipe=Recipe(overrides=overrides), train_scenes=args.train_scenes,
                    val_scenes=args.val_scenes)
    try:
        run_demo(plan)
    except DemoWeightsError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except subprocess.CalledProcessError as exc:
        print(f"demo step failed (exit {exc.returncode}): {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        return 1
    return 0


__all__ = ["DemoPlan", "run_demo", "main"]
