"""Evaluate a segmentation model over a data set: the missing-modality matrix, per condition / case groups.

The model runs batched on collated samples (`collate_modalities`: images [B, M, 3, H, W] normalised, present
[B, M]); a modality subset is evaluated by masking `present`, exactly as a robot that lost a sensor would
run, so one pass over the data serves every subset. Inputs are prepared as `Segmenter` prepares them (eval
transform: resize per modality kind, then `normalize`); logits of another size than the label are resized
bilinearly to the label before the argmax, as `Segmenter` resizes them to the input.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mlesam_core.config_io import ConfigError
from mlesam_core.metrics import ConfusionMatrix, SegmentationScores
from mlesam_core.precision import autocast
from mlesam_core.preprocess import normalization

if TYPE_CHECKING:
    from mlesam_core.model.router import Routing
    from mlesam_core.predictor import Segmenter

log = logging.getLogger(__name__)

Subset = tuple[str, ...]


def subset_name(subset: Sequence[str]) -> str:
    """Display name of a modality subset, e.g. 'rgb+depth'."""
    return "+".join(subset)


def all_subsets(modalities: Sequence[str]) -> list[Subset]:
    """Every non-empty subset of `modalities`, smallest first, each in the given order (Tables VI/VII)."""
    modalities = tuple(modalities)
    return [s for k in range(1, len(modalities) + 1) for s in itertools.combinations(modalities, k)]


def parse_subsets(text: str, modalities: Sequence[str]) -> list[Subset]:
    """'all' (every non-empty subset) or comma-separated '+'-joined subsets ('rgb,rgb+depth'), each in the order
    of `modalities`, repeats dropped; ConfigError naming --subsets otherwise (the option of evaluation and
    export)."""
    if text == "all":
        return all_subsets(modalities)
    subsets: list[Subset] = []
    for part in text.split(","):
        names = [n for n in part.split("+") if n]
        if not names:
            raise ConfigError(f"--subsets: empty subset in {text!r} (expected e.g. 'all' or 'rgb,rgb+depth')")
        unknown = [n for n in names if n not in modalities]
        if unknown:
            raise ConfigError(f"--subsets: {unknown[0]!r} is not a modality of the model ({', '.join(modalities)})")
        subset = tuple(m for m in modalities if m in names)
        if subset not in subsets:
            subsets.append(subset)
    return subsets


@dataclass
class Example:
    """One evaluated sample kept for overlays: an image to show (HxWx3 uint8), its label and prediction."""

    image: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    meta: dict


@dataclass
class EvaluationResult:
    """Confusion matrices per modality subset and per group (condition, case) of the full-modality run."""

    modalities: Subset
    class_names: tuple[str, ...]
    subsets: dict[Subset, ConfusionMatrix]
    groups: dict[str, dict[str, ConfusionMatrix]] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)
    samples: int = 0
    # group ('all', or e.g. 'condition=night') -> fusion level -> routing weights [M] summed over its samples
    routing: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    routed_samples: dict[str, int] = field(default_factory=dict)

    def subset_scores(self) -> dict[Subset, SegmentationScores]:
        """Scores of every evaluated subset."""
        return {s: cm.scores(self.class_names) for s, cm in self.subsets.items()}

    def mean_routing(self) -> dict[str, dict[str, dict[str, float]]]:
        """group -> level -> {modality: mean routing weight} of the all-modality run (the router's trust)."""
        return {group: {level: dict(zip(self.modalities, (total / self.routed_samples[group]).tolist(), strict=True))
                        for level, total in levels.items()}
                for group, levels in self.routing.items()}

    def _add_routing(self, group: str, routing: Routing, rows: slice = slice(None)) -> None:
        levels = self.routing.setdefault(group, {})
        weights = routing.weights[rows].float()
        for index, level in enumerate(routing.levels):
            levels[level] = levels.get(level, 0) + weights[:, index].sum(dim=0).cpu()
        self.routed_samples[group] = self.routed_samples.get(group, 0) + weights.shape[0]

    def group_scores(self) -> dict[str, dict[str, SegmentationScores]]:
        """Scores per group kind ('condition', 'case') and value."""
        return {kind: {value: cm.scores(self.class_names) for value, cm in sorted(groups.items())}
                for kind, groups in self.groups.items()}


def _display_image(images: torch.Tensor, present: torch.Tensor, modalities: Subset) -> np.ndarray:
    """The first present modality of one sample, un-normalised to HxWx3 uint8."""
    index = int(torch.nonzero(present)[0])
    mean, std = normalization([modalities[index]], device=images.device, dtype=images.dtype)
    values = (images[index:index + 1] * std + mean)[0] * 255.0
    return values.clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()


@torch.inference_mode()
def evaluate(model: torch.nn.Module | Segmenter, batches: Iterable[dict[str, Any]], modalities: Sequence[str],
             class_names: Sequence[str], subsets: Sequence[Sequence[str]] | None = None,
             group_by: Sequence[str] = (), device: torch.device | str = "cpu", precision: str = "auto",
             ignore_index: int = 255, max_examples: int = 0, progress: bool = True,
             description: str = "evaluate") -> EvaluationResult:
    """Run `model` (a module taking (images, present), or a `Segmenter`, whose model, device and precision are
    then used) over collated `batches` once, scoring every modality subset (all modalities always).

    `group_by` names meta keys (e.g. 'condition', 'case') whose values get their own confusion matrix,
    computed with all modalities, as are the kept examples. Samples for which a subset leaves no modality
    present are skipped for it.
    """
    if not isinstance(model, torch.nn.Module):  # a Segmenter: its model, device and precision
        device, precision = model.device, model.precision
        model = model.model
    modalities = tuple(modalities)
    device = torch.device(device)
    wanted = [modalities] + [tuple(s) for s in subsets or () if tuple(s) != modalities]
    for subset in wanted:
        unknown = [m for m in subset if m not in modalities]
        if unknown or not subset:
            raise ValueError(f"subset {list(subset)}: must be a non-empty subset of the model's modalities "
                             f"{list(modalities)}")
    masks = {s: torch.tensor([m in s for m in modalities], device=device) for s in wanted}
    num_classes = len(class_names)
    result = EvaluationResult(modalities, tuple(class_names),
                              {s: ConfusionMatrix(num_classes, ignore_index, device) for s in wanted},
                              {kind: {} for kind in group_by})
    # examples evenly spread over the data (a DataLoader knows its data set's length), not all from its start
    total = len(batches.dataset) if hasattr(batches, "dataset") else 0
    stride = max(1, total // max_examples) if max_examples else 1
    model.eval()
    for batch in tqdm(batches, desc=description, unit="batch", disable=not progress, leave=False):
        images = batch["images"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        present = batch["present"].to(device, non_blocking=True)
        first = result.samples
        result.samples += images.shape[0]
        for subset, mask in masks.items():
            subset_present = present & mask
            rows = subset_present.any(dim=1)
            if not bool(rows.any()):
                continue
            with autocast(device, precision):
                output = model(images[rows], subset_present[rows])
            logits = output.logits
            if not bool(torch.isfinite(logits).all()):  # argmax would turn NaN into a silent class
                raise FloatingPointError(f"the model's output for the batch of {batch['meta'][0].get('path', '?')} "
                                         f"(subset {subset_name(subset)}) holds NaN or infinite values")
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            prediction = logits.argmax(dim=1)
            result.subsets[subset].update(prediction, labels[rows])
            if subset != modalities:
                continue
            positions = [first + i for i, keep in enumerate(rows.tolist()) if keep]
            kept_meta = [batch["meta"][p - first] for p in positions]
            kept_images, kept_present, kept_labels = images[rows], subset_present[rows], labels[rows]
            result._add_routing("all", output.routing)
            for kind in group_by:
                for i, meta in enumerate(kept_meta):
                    value = str(meta.get(kind) or "none")
                    cm = result.groups[kind].setdefault(value, ConfusionMatrix(num_classes, ignore_index, device))
                    cm.update(prediction[i], kept_labels[i])
                    result._add_routing(f"{kind}={value}", output.routing, slice(i, i + 1))
            for i, position in enumerate(positions):
                if position % stride or len(result.examples) >= max_examples:
                    continue
                result.examples.append(Example(_display_image(kept_images[i], kept_present[i], modalities),
                                               kept_labels[i].cpu().numpy().astype(np.uint8),
                                               prediction[i].cpu().numpy().astype(np.uint8), kept_meta[i]))
    return result


__all__ = ["Subset", "subset_name", "all_subsets", "parse_subsets", "Example", "EvaluationResult", "evaluate"]
