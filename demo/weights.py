"""The demo's shipped weights: `make demo-weights` trains them, `make demo` checks them before it replays.

The weights are adapters (LoRA experts, routers, heads) for the stand-in encoder the repository ships
(`training/assets/`), trained with `config/train/synthetic_cpu.yaml` on the demo's procedural training scenes.
`demo/assets/demo_weights.json` records how: the command, the adapters' sha256, the train config and overrides,
steps, seed, the stand-in's sha256 and the validation scores. The demo refuses adapters whose sha256 differs from
the record, that were made for another model config than the train config gives today, or on another encoder,
each with a message that says to run `make demo-weights`.

    python -m demo.weights [--steps N] [--out demo/assets] [--work runs/demo_weights]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlesam_core.model.config import MLESAMConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT / "demo" / "assets"
ADAPTERS_NAME = "demo_adapters.safetensors"
RECORD_NAME = "demo_weights.json"
TRAIN_CONFIG = "config/train/synthetic_cpu.yaml"
COMMAND = "make demo-weights"


class DemoWeightsError(ValueError):
    """The demo's weights are missing, changed or stale; the message names the file and says what to run."""


@dataclass(frozen=True)
class Scenes:
    """A procedural scene set in the DELIVER layout (the generator draws each scene from (seed, split, index),
    so the validation scenes are the same whatever the number of training scenes)."""

    train: int = 600
    val: int = 100
    size: int = 128
    seed: int = 0

    def command(self, out: Path) -> list[str]:
        """The generator's command line that writes this set to `out`."""
        return [sys.executable, "-m", "mlesam_core.data.synthetic", "--out", str(out), "--size", str(self.size),
                "--train", str(self.train), "--val", str(self.val), "--test", "0", "--seed", str(self.seed)]

    def stamp(self) -> dict:
        """What identifies the set (a folder holding another set is regenerated)."""
        return {"size": self.size, "train": self.train, "val": self.val, "seed": self.seed}


@dataclass
class Recipe:
    """How the demo's adapters are trained: the train config on the stand-in encoder, plus overrides."""

    train_config: str = TRAIN_CONFIG
    overrides: list[str] = field(default_factory=list)  # e.g. optim.max_steps=5 (user's, after the demo's own)

    def train_overrides(self, data: Path, backbone: Path) -> list[str]:
        """Every override of the training command: the data, the frozen backbone, then the user's."""
        return [f"data.root={data}", f"sam2_checkpoint={backbone}", "allow_random_init=false", *self.overrides]

    def train_command(self, data: Path, backbone: Path, out: Path) -> list[str]:
        """`python -m training.train ...` writing its run (adapters.safetensors, model.yaml, metrics) to `out`."""
        return [sys.executable, "-m", "training.train", "--config", self.train_config, "--out", str(out),
                *self.train_overrides(data, backbone)]

    def model_config(self, data: Path, backbone: Path) -> MLESAMConfig:
        """The model config this recipe trains, as the code reads the train config today."""
        from training.config import load_train_config

        return load_train_config(REPO_ROOT / self.train_config, self.train_overrides(data, backbone)).model


def standin_checkpoint(out: Path) -> Path:
    """The shipped stand-in encoder expanded to an official-format SAM2 checkpoint at `out` (byte for byte the
    same file on every run, so adapters trained on it match it anywhere)."""
    from training.pretrain_backbone import SHIPPED_ENCODER, expand_encoder

    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        expand_encoder(REPO_ROOT / SHIPPED_ENCODER, out)
    return out


def validation_scores(train_dir: Path) -> dict:
    """The validation records of a training run (metrics.jsonl): final and best mIoU and the steps trained."""
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [r for r in records if r.get("kind") == "val"]
    best = max(val, key=lambda r: r["miou"], default=None)
    return {"steps": max((r["step"] for r in records), default=None),
            "final_val_miou": val[-1]["miou"] if val else None,
            "best_val_miou": best["miou"] if best else None,
            "best_step": best["step"] if best else None}


def half_precision_copy(adapters: Path, out: Path) -> Path:
    """Write `adapters` to `out` with its float32 tensors stored as float16, the content hash recomputed.

    The file lives in the repository: float16 halves it (the 25 class tokens' hypernetworks of five heads are
    most of it) and every tensor is cast back to the model's float32 on load, so the demo measures exactly what
    is shipped."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mlesam_core.model.adapters import HASH_KEY, adapter_content_sha256

    with safe_open(str(adapters), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
    tensors = {key: t.to(torch.float16) if t.dtype == torch.float32 else t for key, t in tensors.items()}
    metadata["stored_dtype"] = "float16"
    metadata.pop(HASH_KEY, None)
    metadata[HASH_KEY] = adapter_content_sha256(metadata, tensors)
    save_file(tensors, str(out), metadata=metadata)
    return out


def write_record(out_dir: Path, adapters: Path, *, command: str, recipe: Recipe, scenes: Scenes,
                 resolved_config: dict, scores: dict, backbone: Path, train_seconds: float) -> Path:
    """Write `adapters` to `out_dir`/demo_adapters.safetensors (float16, `half_precision_copy`) and
    demo_weights.json beside it."""
    import torch

    from mlesam_core.model.backbone_id import file_sha256
    from training.pretrain_backbone import SHIPPED_ENCODER

    out_dir.mkdir(parents=True, exist_ok=True)
    shipped = half_precision_copy(adapters, out_dir / ADAPTERS_NAME)
    record = {
        "command": command,
        "adapters": ADAPTERS_NAME,
        "sha256": file_sha256(shipped),
        "train_config": recipe.train_config,
        "overrides": recipe.overrides,
        "steps": scores["steps"],
        "seed": resolved_config.get("seed"),
        "scenes": scenes.stamp(),
        "backbone": {"encoder": SHIPPED_ENCODER, "encoder_sha256": file_sha256(REPO_ROOT / SHIPPED_ENCODER),
                     "checkpoint_sha256": file_sha256(backbone)},
        "validation": {k: v for k, v in scores.items() if k != "steps"},
        "config": resolved_config,
        "train_seconds": round(train_seconds, 1),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
    path = out_dir / RECORD_NAME
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def verify(assets: Path, expected_config: MLESAMConfig, backbone: Path) -> dict:
    """Check the shipped weights in `assets` before the demo uses them; returns their record.

    Refused (DemoWeightsError): a missing or unreadable record or adapter file, an adapter file whose sha256 is
    not the recorded one, adapters made for another model config than `expected_config` (the train config as the
    code reads it today) or on other frozen weights than `backbone`."""
    from mlesam_core.config_io import ConfigError
    from mlesam_core.model.adapters import AdapterError, adapter_config, read_adapter_metadata
    from mlesam_core.model.backbone_id import checkpoint_backbone_id, file_sha256, same_backbone
    from mlesam_core.model.config import config_differences

    again = f"run `{COMMAND}` to train them again (about 20 minutes on 2 cores), or `make demo TRAIN=1`"
    record_path = assets / RECORD_NAME
    try:
        record = json.loads(record_path.read_text())
        adapters = assets / record["adapters"]
        recorded = record["sha256"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DemoWeightsError(f"{record_path}: no readable record of the demo weights ({exc}); {again}") from None
    if not adapters.is_file():
        raise DemoWeightsError(f"{adapters}: the demo weights are missing; {again}")
    actual = file_sha256(adapters)
    if actual != recorded:
        raise DemoWeightsError(f"{adapters}: sha256 {actual[:16]}... is not the {recorded[:16]}... recorded in "
                               f"{record_path} (the file was changed or replaced); {again}")
    try:
        differences = config_differences(expected_config, adapter_config(adapters))
    except (AdapterError, ConfigError) as exc:
        raise DemoWeightsError(f"{adapters}: stale demo weights ({exc}); {again}") from None
    if differences:
        raise DemoWeightsError(f"{adapters}: stale demo weights, made for another model config than "
                               f"{record.get('train_config', TRAIN_CONFIG)} gives today ("
                               + "; ".join(differences) + f"); {again}")
    trained_on = read_adapter_metadata(adapters).get("backbone", "<unknown>")
    if not same_backbone(trained_on, checkpoint_backbone_id(backbone)):
        raise DemoWeightsError(f"{adapters}: stale demo weights, trained on backbone '{trained_on}', not on the "
                               f"shipped stand-in encoder ({checkpoint_backbone_id(backbone)}); {again}")
    return record


def train(scenes: Scenes, recipe: Recipe, work: Path, out_dir: Path, command: str = COMMAND) -> Path:
    """Generate the scenes, train the adapters on the stand-in encoder, write them and their record to `out_dir`
    (`command`: how this run was started, for the record); returns the record's path."""
    import yaml

    data, train_dir = work / "data", work / "train"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(train_dir, ignore_errors=True)
    backbone = standin_checkpoint(work / "standin_tiny_supervised.pt")
    _run_step(1, "procedural scenes", scenes.command(data))
    train_seconds = _run_step(2, "training on the stand-in encoder", recipe.train_command(data, backbone, train_dir))
    resolved = yaml.safe_load((train_dir / "config.yaml").read_text())
    for machine_path in ("out_dir", "sam2_checkpoint"):  # paths on this machine: the record names what they held
        resolved.pop(machine_path, None)
    resolved.get("data", {}).pop("root", None)
    record = write_record(out_dir, train_dir / "adapters.safetensors", command=command, recipe=recipe,
                          scenes=scenes, resolved_config=resolved, scores=validation_scores(train_dir),
                          backbone=backbone, train_seconds=train_seconds)
    print(f"\n[3/3] wrote {out_dir / ADAPTERS_NAME} and {record}", flush=True)
    return record


def _run_step(index: int, name: str, command: Sequence[str]) -> float:
    print(f"\n[{index}/3] {name}\n      $ {_shown(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    print(f"      done in {seconds:.0f} s", flush=True)
    return seconds


def _shown(command: Sequence[str]) -> str:
    import shlex

    return " ".join(shlex.quote(str(part)) for part in command).replace(sys.executable, "python")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (`make demo-weights`); returns the exit status (1: a step failed; bad arguments: 2)."""
    parser = argparse.ArgumentParser(prog="python -m demo.weights", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help=f"where the adapters and record go ({ASSETS})")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "demo_weights",
                        help="scenes, stand-in checkpoint and training run")
    parser.add_argument("--steps", type=int, help="optimiser steps (default: the train config's optim.max_steps)")
    parser.add_argument("--train-scenes", type=int, default=Scenes.train)
    parser.add_argument("--val-scenes", type=int, default=Scenes.val)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra training override, e.g. --set optim.batch_size=4 (repeatable)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.steps is not None and args.steps <= 0:
        parser.error(f"--steps: must be positive, got {args.steps}")
    overrides = [*([f"optim.max_steps={args.steps}"] if args.steps is not None else []), *args.overrides]
    try:
        train(Scenes(train=args.train_scenes, val=args.val_scenes), Recipe(overrides=overrides),
              args.work.resolve(), args.out.resolve(),
              command=f"python -m demo.weights {_shown(argv)}" if argv else COMMAND)
    except subprocess.CalledProcessError as exc:
        print(f"demo weights: step failed (exit {exc.returncode}): {_shown(exc.cmd)}", file=sys.stderr)
        return 1
    return 0


__all__ = ["DemoWeightsError", "Scenes", "Recipe", "standin_checkpoint", "validation_scores", "write_record",
           "verify", "train", "main"]


if __name__ == "__main__":
    sys.exit(main())
