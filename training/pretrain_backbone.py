"""Pretrain a stand-in for SAM2's image encoder on procedural RGB scenes, written as an official SAM2 checkpoint.

    python -m training.pretrain_backbone --objective mim --out checkpoints/standin_tiny_mim.pt \
        [--model config/model/mlesam_tiny.yaml] [--data data/pretrain_rgb] [--steps 3000] [--batch-size 16] ...
        [--probe-data data/synthetic_quality --probe-modalities rgb,depth]

MLE-SAM adapts an RGB-pretrained SAM2 encoder with LoRA experts for the other sensors. On machines without the
official weights, or for a model config no official checkpoint has (the tiny Hiera of the CPU runs), the frozen
encoder is random, which is not the regime the paper is in. This command trains the whole image encoder (Hiera
trunk + FPN neck) of `--model`'s SAM2 config on RGB only, on procedural scenes from their own generator seed
(never the benchmark's scenes), with one of two objectives:

- `mim`: masked image modelling as SimMIM (Xie et al., CVPR 2022): a random `--mask-ratio` of
  `--mask-unit`-pixel squares is replaced after the patch embedding by a learned mask token, and a light head
  on the three FPN maps regresses the normalised pixels, L1 on the masked ones only. Hiera itself was pretrained
  by masked autoencoding (Ryali et al., ICML 2023) before SAM2's mask training.
- `supervised`: per-pixel cross-entropy on the scenes' semantic labels through an all-MLP head on the FPN maps.

Everything else of SAM2 (prompt encoder, mask decoder, memory modules) keeps the seeded random initialisation
of `model.random_init_seed`, exactly what a random-backbone run builds, so comparing the two backbones compares
the encoders alone. The output is `{"model": state_dict, "pretraining": {...}}`: `load_sam2_weights` and
`sam2.build_sam.build_sam2(config, ckpt_path=...)` read its `model` entry as they read Meta's files. Beside it
goes `NAME.encoder.pt`, the image encoder alone (a tenth of the size): `--from-encoder NAME.encoder.pt --out F`
writes the official checkpoint from it again, byte for byte, which is how the repository ships its stand-in
(`training/assets/`, benchmarks/results/standin_backbone.md):

    python -m training.pretrain_backbone --from-encoder training/assets/standin_tiny_supervised.encoder.pt \
        --out runs/standin/standin_tiny_supervised.pt

`--probe-modalities` then measures the frozen features: a linear classifier (1x1 conv on the three FPN maps,
upsampled to stride 4 and concatenated) trained on `--probe-data`'s train split and scored on its val split
(mIoU, absent classes = 0), for this checkpoint and for the random encoder, per modality. A JSON report goes
next to the checkpoint. This is a stand-in, trained on a few thousand procedural images: it says nothing about
SAM2's real weights.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mlesam_core.data.classes import DELIVER, IGNORE_INDEX
from mlesam_core.data.collate import ModalityCollate
from mlesam_core.metrics import ConfusionMatrix
from mlesam_core.model.aux_head import AuxHead
from mlesam_core.model.config import load_model_config
from mlesam_core.model.sam2_checkpoint import read_sam2_state_dict
from mlesam_core.model.sam2_parts import UnusedPositionEncoding, build_sam2_model
from training.checkpoint import atomic_path
from training.config import resolve_path
from training.schedule import warmup_poly_scheduler

log = logging.getLogger("training.pretrain_backbone")

Objective = Literal["mim", "supervised"]
DEFAULT_MODEL = "config/model/mlesam_tiny.yaml"
ENCODER_KEY = "image_encoder"  # the entry of an encoder-only file
# the shipped stand-in: the encoder of benchmarks/results/standin_backbone.md's supervised build
SHIPPED_ENCODER = "training/assets/standin_tiny_supervised.encoder.pt"


@dataclass
class PretrainSettings:
    """What one pretraining run does (the command-line options)."""

    objective: Objective = "mim"
    model: str = DEFAULT_MODEL
    data: str = "data/pretrain_rgb"
    scenes: int = 2000
    data_seed: int = 1  # the procedural generator's seed: other scenes than the benchmark's (seed 0)
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    mask_ratio: float = 0.6
    mask_unit: int = 32  # pixels; a multiple of the patch stride (4)
    head_dim: int = 64
    seed: int = 0
    threads: int = 2
    workers: int = 1

    def __post_init__(self) -> None:
        if self.objective not in ("mim", "supervised"):
            raise ValueError(f"--objective: must be mim or supervised, got {self.objective!r}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"--mask-ratio: must lie in (0, 1), got {self.mask_ratio}")
        if self.mask_unit % 4:
            raise ValueError(f"--mask-unit: must be a multiple of the patch stride 4, got {self.mask_unit}")
        for name in ("scenes", "steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")


def encoder_features(image_encoder: nn.Module, images: torch.Tensor, masked: torch.Tensor | None = None,
                     mask_token: torch.Tensor | None = None) -> list[torch.Tensor]:
    """SAM2's image encoder (trunk + FPN neck, scalp applied) on images [B, 3, H, W] -> FPN maps, finest first.
    With `masked` bool [B, H/4, W/4], those patch embeddings are replaced by `mask_token` [C] first."""
    trunk = image_encoder.trunk
    x = trunk.patch_embed(images)  # [B, H/4, W/4, C]
    if masked is not None:
        x = torch.where(masked[..., None], mask_token.to(x.dtype), x)
    x = x + trunk._get_pos_embed(x.shape[1:3])
    stages = []
    for i, block in enumerate(trunk.blocks):
        x = block(x)
        if i in trunk.stage_ends:
            stages.append(x.permute(0, 3, 1, 2))
    features, _ = image_encoder.neck(stages)
    return features[: -image_encoder.scalp] if image_encoder.scalp else features


def random_unit_mask(batch: int, size: tuple[int, int], unit: int, ratio: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """bool [B, H/4, W/4]: exactly round(ratio x units) of the unit x unit squares of each image masked."""
    rows, cols = size[0] // unit, size[1] // unit
    count = rows * cols
    ranks = torch.rand(batch, count, generator=generator).argsort(dim=1).argsort(dim=1)
    units = (ranks < round(ratio * count)).view(batch, rows, cols)
    per_unit = unit // 4
    return units.repeat_interleave(per_unit, dim=1).repeat_interleave(per_unit, dim=2)


class PretrainHead(nn.Module):
    """The objective's head on the FPN maps: class logits (supervised) or 4x4 pixel patches (mim), at input size."""

    def __init__(self, objective: Objective, channels: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.objective = objective
        outputs = num_classes if objective == "supervised" else 3 * 16
        self.head = AuxHead(channels, dim, outputs, dropout=0.1 if objective == "supervised" else 0.0)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.head(features)  # stride 4
        if self.objective == "mim":
            return F.pixel_shuffle(out, 4)
        return F.interpolate(out, scale_factor=4, mode="bilinear", align_corners=False)


def mim_loss(prediction: torch.Tensor, images: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean L1 between predicted and true (normalised) pixels over the masked pixels only (SimMIM)."""
    pixels = masked.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)[:, None].float()  # [B, 1, H, W]
    return ((prediction - images).abs() * pixels).sum() / (pixels.sum() * images.shape[1]).clamp_min(1)


def _rgb_loader(root: Path, split: str, size: int, modality: str, batch_size: int, augment: bool, shuffle: bool,
                workers: int, seed: int) -> DataLoader:
    from mlesam_core.data.deliver import DeliverDataset
    from mlesam_core.data.transforms import eval_transform, train_transform

    transform = (train_transform((size, size), [modality], augment=True) if augment
                 else eval_transform((size, size), [modality]))
    dataset = DeliverDataset(root, split, [modality], transform=transform)
    if shuffle and len(dataset) < batch_size:
        raise ValueError(f"{root}: the {split} split has {len(dataset)} samples, fewer than a batch of {batch_size}")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, num_workers=workers,
                      collate_fn=ModalityCollate([modality]), generator=torch.Generator().manual_seed(seed),
                      persistent_workers=workers > 0 and shuffle)


def ensure_pretrain_data(root: Path, size: int, scenes: int, seed: int, workers: int) -> None:
    """Generate `scenes` procedural training scenes under `root` unless it holds the same ones already."""
    from mlesam_core.data.synthetic.generate import generate_dataset

    counts = {"train": scenes, "val": 0, "test": 0}
    info = root / "generator.json"
    if info.exists():
        made = json.loads(info.read_text())
        if made.get("size") == [size, size] and made.get("seed") == seed and made.get("counts") == counts:
            return
        raise SystemExit(f"{root} holds procedural data made with other settings; remove it or pick --data")
    generate_dataset(root, size, counts, seed, workers)


def pretrain(settings: PretrainSettings, out: Path) -> dict[str, Any]:
    """Train the encoder of `settings.model` and write the checkpoint to `out`; returns the run's record."""
    torch.manual_seed(settings.seed)
    config = load_model_config(resolve_path(settings.model))
    size = config.image_size
    if size % settings.mask_unit:
        raise ValueError(f"--mask-unit: {settings.mask_unit} does not divide the image size {size}")
    data = resolve_path(settings.data)
    ensure_pretrain_data(data, size, settings.scenes, settings.data_seed, max(1, settings.workers))
    sam = build_sam2_model(config)
    encoder = sam.image_encoder
    encoder.neck.position_encoding = UnusedPositionEncoding()
    encoder.train().requires_grad_(True)
    head = PretrainHead(settings.objective, encoder.neck.d_model, settings.head_dim, DELIVER.num_classes)
    mask_token = nn.Parameter(torch.zeros(encoder.trunk.patch_embed.proj.out_channels))
    nn.init.trunc_normal_(mask_token, std=0.02)
    params = [*encoder.parameters(), *head.parameters()] + ([mask_token] if settings.objective == "mim" else [])
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = warmup_poly_scheduler(optimizer, settings.steps, settings.warmup_steps, 0.1, 0.9)
    loader = _rgb_loader(data, "train", size, "rgb", settings.batch_size, augment=True, shuffle=True,
                         workers=settings.workers, seed=settings.seed)
    mask_generator = torch.Generator().manual_seed(settings.seed + 1)
    started, step, curve, window = time.perf_counter(), 0, [], []
    while step < settings.steps:
        for batch in loader:
            images, labels = batch["images"][:, 0], batch["labels"]
            if settings.objective == "mim":
                masked = random_unit_mask(images.shape[0], (size, size), settings.mask_unit, settings.mask_ratio,
                                          mask_generator)
                loss = mim_loss(head(encoder_features(encoder, images, masked, mask_token)), images, masked)
            else:
                loss = F.cross_entropy(head(encoder_features(encoder, images)), labels, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            window.append(float(loss.detach()))
            if step % 100 == 0 or step == settings.steps:
                curve.append({"step": step, "loss": sum(window) / len(window)})
                log.info("step %d/%d: %s loss %.4f (%.1f img/s)", step, settings.steps, settings.objective,
                         curve[-1]["loss"], step * settings.batch_size / (time.perf_counter() - started))
                window = []
                if not math.isfinite(curve[-1]["loss"]):
                    raise FloatingPointError(f"step {step}: pretraining loss is {curve[-1]['loss']}; lower --lr")
            if step >= settings.steps:
                break
    seconds = time.perf_counter() - started
    record = {"settings": asdict(settings), "train_seconds": round(seconds, 1), "loss_curve": curve,
              "encoder_parameters": sum(p.numel() for p in encoder.parameters())}
    encoder.eval()
    metadata = {k: v for k, v in record.items() if k not in ("loss_curve", "train_seconds")}
    _write_reproducibly({"model": sam.state_dict(), "pretraining": metadata}, out)
    encoder_file = encoder_path(out)
    _write_reproducibly({ENCODER_KEY: encoder.state_dict(), "pretraining": metadata}, encoder_file)
    log.info("wrote %s (%.1f MB; the encoder alone: %s, %.1f MB) after %.1f min", out, out.stat().st_size / 2**20,
             encoder_file, encoder_file.stat().st_size / 2**20, seconds / 60)
    return record


def encoder_path(checkpoint: Path) -> Path:
    """Where `pretrain` writes the encoder-only file of `checkpoint`: beside it, `NAME.encoder.pt`."""
    return checkpoint.with_name(checkpoint.stem + ".encoder.pt")


def _write_reproducibly(payload: dict[str, Any], out: Path) -> None:
    # a stand-in file's bytes are its backbone identity (adapters and benchmark runs record its sha256), so
    # they hold nothing that changes from build to build: no wall time, and torch.save writes into a buffer,
    # not into the temporary file, whose name (it holds the process id) would become the archive's folder
    # and pickle shares one memo entry among equal strings that are one object, so the keys are interned: a
    # payload read back from a file then pickles as the one that was built
    buffer = io.BytesIO()
    torch.save(_interned_keys(payload), buffer)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _interned_keys(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, OrderedDict):  # a state dict keeps its class
        return {sys.intern(k) if isinstance(k, str) else k: _interned_keys(v) for k, v in value.items()}
    return value


def expand_encoder(encoder_file: Path, out: Path) -> None:
    """Write the official-format SAM2 checkpoint of a `NAME.encoder.pt` file: the seeded random SAM2 of the
    model config it was trained with, its image encoder replaced. Byte for byte the checkpoint `pretrain` wrote
    beside that file, so the small file is enough to ship (the rest of SAM2 is the seeded initialisation)."""
    payload = torch.load(encoder_file, map_location="cpu", weights_only=True)
    keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
    if keys != sorted([ENCODER_KEY, "pretraining"]) or "settings" not in payload["pretraining"]:
        raise ValueError(f"{encoder_file}: not an encoder file of python -m training.pretrain_backbone "
                         f"(holds {keys}; expected {ENCODER_KEY!r} and 'pretraining')")
    model = payload["pretraining"]["settings"]["model"]
    sam = build_sam2_model(load_model_config(resolve_path(model)))
    missing, unexpected = sam.image_encoder.load_state_dict(payload[ENCODER_KEY], strict=False)
    if missing or unexpected:
        raise ValueError(f"{encoder_file}: its encoder does not fit {model}'s SAM2 image encoder "
                         f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    _write_reproducibly({"model": sam.state_dict(), "pretraining": payload["pretraining"]}, out)
    log.info("wrote %s from %s", out, encoder_file)


def probe_frozen_features(model: str, checkpoint: Path | None, data: Path, modality: str, steps: int = 400,
                          batch_size: int = 16, lr: float = 3e-3, seed: int = 0, workers: int = 1
                          ) -> dict[str, float]:
    """Linear-probe mIoU (both protocols) of the frozen encoder (`checkpoint`, or the seeded random one) on
    `modality` of a DELIVER-layout data set: trained on train, scored on val. As MAE's linear probing (He et al.,
    CVPR 2022), a BatchNorm without affine parameters normalises the features before the linear layer, so that
    encoders whose features differ in scale are compared at the same learning rate."""
    torch.manual_seed(seed)
    config = load_model_config(resolve_path(model))
    sam = build_sam2_model(config)
    if checkpoint is not None:
        sam.load_state_dict(read_sam2_state_dict(checkpoint))
    encoder = sam.image_encoder.eval().requires_grad_(False)
    encoder.neck.position_encoding = UnusedPositionEncoding()
    channels, size = encoder.neck.d_model, config.image_size
    classifier = nn.Sequential(nn.BatchNorm2d(3 * channels, affine=False),
                               nn.Conv2d(3 * channels, DELIVER.num_classes, kernel_size=1))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)

    def logits(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            levels = encoder_features(encoder, images)
            stacked = torch.cat([F.interpolate(x, size=levels[0].shape[-2:], mode="bilinear", align_corners=False)
                                 for x in levels], dim=1)
        return F.interpolate(classifier(stacked), size=images.shape[-2:], mode="bilinear", align_corners=False)

    from mlesam_core.data.deliver import DeliverDataset

    batch_size = min(batch_size, len(DeliverDataset(data, "train", [modality])))
    train = _rgb_loader(data, "train", size, modality, batch_size, augment=False, shuffle=True, workers=workers,
                        seed=seed)
    step = 0
    while step < steps:
        for batch in train:
            loss = F.cross_entropy(logits(batch["images"][:, 0]), batch["labels"], ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step >= steps:
                break
    matrix = ConfusionMatrix(DELIVER.num_classes, IGNORE_INDEX)
    classifier.eval()
    with torch.no_grad():
        for batch in _rgb_loader(data, "val", size, modality, 32, augment=False, shuffle=False, workers=workers,
                                 seed=seed):
            matrix.update(logits(batch["images"][:, 0]).argmax(dim=1), batch["labels"])
    scores = matrix.scores(DELIVER.names)
    return {"miou": scores.miou["all_classes"], "miou_present_classes": scores.miou["present_classes"],
            "pixel_accuracy": scores.pixel_accuracy}


def probe_report(model: str, checkpoints: Sequence[Path], data: Path, modalities: Sequence[str], steps: int,
                 workers: int, random_encoder: bool = True) -> dict[str, dict[str, float]]:
    """`probe_frozen_features` mIoU per modality, for each checkpoint (by file name) and (`random_encoder`) for
    the seeded random encoder ('random')."""
    report: dict[str, dict[str, float]] = {}
    candidates = ([("random", None)] if random_encoder else []) + [(Path(c).name, Path(c)) for c in checkpoints]
    for name, ckpt in candidates:
        for modality in modalities:
            started = time.perf_counter()
            report.setdefault(name, {})[modality] = probe_frozen_features(model, ckpt, data, modality, steps,
                                                                          workers=workers)["miou"]
            log.info("linear probe, %s encoder, %s: mIoU %.4f (%.0f s)", name, modality,
                     report[name][modality], time.perf_counter() - started)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pretrain_backbone", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = PretrainSettings()
    parser.add_argument("--out", required=True, help="checkpoint to write (official SAM2 format); with "
                        "--probe-checkpoints, the JSON report to write")
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(value), default=value,
                            choices=("mim", "supervised") if name == "objective" else None)
    parser.add_argument("--probe-data", help="DELIVER-layout data whose train/val splits score the frozen features")
    parser.add_argument("--probe-modalities", default="rgb", help="comma list, e.g. rgb,depth")
    parser.add_argument("--probe-steps", type=int, default=400)
    parser.add_argument("--probe-random", action=argparse.BooleanOptionalAction, default=True,
                        help="also probe the seeded random encoder, the baseline (default: yes)")
    parser.add_argument("--probe-checkpoints", help="comma list of checkpoints to probe instead of pretraining")
    parser.add_argument("--from-encoder", metavar="ENCODER_FILE",
                        help="instead of pretraining, write --out (official format) from an encoder-only file that "
                        f"pretraining wrote beside its checkpoint, e.g. the shipped {SHIPPED_ENCODER}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.from_encoder:
        source = Path(args.from_encoder)
        if not source.is_file():
            parser.error(f"--from-encoder: no such file: {source}")
        try:
            expand_encoder(source, Path(args.out))
        except ValueError as exc:
            parser.error(str(exc))
        return 0
    try:
        settings = PretrainSettings(**{k: getattr(args, k) for k in asdict(defaults)})
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(settings.threads)
    out = Path(args.out)
    command = "python -m training.pretrain_backbone " + " ".join(argv if argv is not None else sys.argv[1:])
    modalities = [m for m in args.probe_modalities.split(",") if m]
    if args.probe_checkpoints:
        if not args.probe_data:
            parser.error("--probe-checkpoints needs --probe-data")
        checkpoints = [Path(c) for c in args.probe_checkpoints.split(",") if c]
        record: dict[str, Any] = {"command": command, "probe_steps": args.probe_steps,
                                  "probe_data": args.probe_data, "model": settings.model,
                                  "checkpoints": {c.name: json.loads(c.with_suffix(".json").read_text())
                                                  .get("settings") if c.with_suffix(".json").exists() else None
                                                  for c in checkpoints}}
        record["linear_probe_miou"] = probe_report(settings.model, checkpoints, resolve_path(args.probe_data),
                                                   modalities, args.probe_steps, settings.workers, args.probe_random)
        report_path = out
    else:
        record = pretrain(settings, out)
        record["command"] = command
        if args.probe_data:
            record["linear_probe_miou"] = probe_report(settings.model, [out], resolve_path(args.probe_data),
                                                       modalities, args.probe_steps, settings.workers,
                                                       args.probe_random)
        report_path = out.with_suffix(".json")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(record, indent=2) + "\n")
    log.info("report in %s", report_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
