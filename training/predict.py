"""Test-split predictions for benchmark servers: `python -m training.evaluate --config CFG --adapters FILE
--predict-only [--split test] [--out DIR] [--subsets ...] [--noise ... --noise-on ...]`.

No label file is read, so a split whose labels are withheld works. Each input gets one prediction file in its
data set's benchmark layout (`prediction_path` / `encode_prediction` of the loader): MUSES
`labelTrainIds/<sequence>_frame_<frame>.png` (trainIds, zipped into `muses_semantic_submission.zip` for upload),
DELIVER `semantic/.../<id>_semantic_front.png` and MCubeS `GT/<name>.png` (encoded as their labels; neither has a
server). Predictions are at the input file's full size: the logits are resized bilinearly to the region of the
source image the sample covers (`meta["region"]`) and pasted into a source-size canvas of 255 (nothing
predicted). A few inputs also get a colour overlay (`overlays/`, outside the archive's folder).

Resumable: files already there are skipped; each file is written to a temporary name and renamed, so an
interrupted run never leaves a half-written prediction. `--subsets` writes each subset into its own folder
(`<out>/<subset>/...`, e.g. `rgb+lidar`); with the default (full set) the files go to `<out>` itself.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from mlesam_core.data.base import MultiModalDataset
from mlesam_core.data.classes import IGNORE_INDEX, get_class_table
from mlesam_core.data.collate import ModalityCollate
from mlesam_core.data.image_io import encode_png
from mlesam_core.evaluation import autocast, subset_name
from training.checkpoint import TEMPORARY_MARK, atomic_path, remove_stale_temporaries
from training.config import TrainConfig
from training.data import build_dataset, unwrap_dataset
from training.eval_request import EvalRequest, requested_subsets

log = logging.getLogger(__name__)

OVERLAY_FOLDER = "overlays"
SUMMARY_FILE = "predictions.json"


@dataclass
class PredictionSummary:
    """What a prediction run left in its folder."""

    out_dir: Path
    total: int  # prediction files the split needs (all subsets)
    written: int  # written by this run
    skipped: int  # there already
    archives: list[Path]


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def full_size_prediction(logits: torch.Tensor, meta: dict[str, Any]) -> np.ndarray:
    """[C, h, w] logits of one sample -> HxW uint8 class ids at the source file's size (255 outside the region)."""
    top, left, height, width = meta["region"]
    resized = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)
    canvas = np.full(meta["source_size"], IGNORE_INDEX, np.uint8)
    canvas[top:top + height, left:left + width] = resized[0].argmax(dim=0).to(torch.uint8).cpu().numpy()
    return canvas


def overlay_image(source: MultiModalDataset, index: int, modality: str, prediction: np.ndarray) -> np.ndarray:
    """The input image of `modality` under the prediction's class colours (half and half), at the prediction's size."""
    import cv2

    sample = source.load(index)
    top, left, height, width = sample["meta"]["region"]
    image = np.clip(np.asarray(sample["images"][modality], np.float32), 0, 255)
    canvas = np.zeros((*prediction.shape, 3), np.float32)
    canvas[top:top + height, left:left + width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    colours = get_class_table(source.dataset).colorize(prediction).astype(np.float32)
    return (0.5 * canvas + 0.5 * colours).astype(np.uint8)


def _archive(out_dir: Path, folder: str, name: str) -> Path:
    """Zip `out_dir/folder` (that folder at the archive's top) to `out_dir/name`, atomically."""
    archive = out_dir / name
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as handle:
        for path in sorted((out_dir / folder).rglob("*.png")):
            if TEMPORARY_MARK not in path.name:
                handle.write(path, path.relative_to(out_dir).as_posix())
    return archive


def predict_split(config: TrainConfig, request: EvalRequest, loaded: tuple[Any, torch.nn.Module, torch.device],
                  out_dir: Path) -> PredictionSummary:
    """Write the predictions of `request.adapters` on `request.split` of `config.data` into `out_dir`; `loaded`:
    (model config, model, device) as `training.evaluate.load_evaluated_model` gives them."""
    from mlesam_core.data.transforms import eval_transform

    model_config, model, device = loaded
    modalities = model_config.modalities
    size = (model_config.image_size, model_config.image_size)
    transform = eval_transform(size, modalities, noise=request.noise, noise_on=request.noise_on, seed=request.seed)
    dataset = build_dataset(config.data, request.split, modalities, transform, request.max_samples,
                            with_labels=False)
    source, indices = unwrap_dataset(dataset)
    extra = requested_subsets(request, modalities)
    subsets = [modalities] if extra is None else [modalities] + [s for s in extra if s != modalities]
    folders = {s: out_dir if extra is None else out_dir / subset_name(s) for s in subsets}
    relative = [source.prediction_path(i) for i in indices]
    duplicates = sorted(str(r) for r, n in Counter(relative).items() if n > 1)
    if duplicates:
        raise ValueError(f"{config.data.format} {request.split}: several inputs map to one prediction file "
                         f"({', '.join(duplicates[:3])}); the benchmark needs one file per input")
    for folder in {p.parent for f in folders.values() if f.is_dir() for p in f.rglob(f".*{TEMPORARY_MARK}*")}:
        remove_stale_temporaries(folder)
    missing = {s: {pos for pos, r in enumerate(relative) if not (folders[s] / r).is_file()} for s in subsets}
    pending = sorted(set().union(*missing.values()))
    total = len(relative) * len(subsets)
    done_before = total - sum(map(len, missing.values()))
    log.info("%s %s: %d inputs x %d subsets, %d prediction files there already, %d to write", config.data.format,
             request.split, len(relative), len(subsets), done_before, total - done_before)
    overlay_positions = set(np.linspace(0, len(relative) - 1, min(request.examples, len(relative))).round()
                            .astype(int).tolist()) if request.examples > 0 else set()
    loader = DataLoader(Subset(dataset, pending), batch_size=request.batch_size, shuffle=False,
                        num_workers=config.data.workers, collate_fn=ModalityCollate(modalities),
                        pin_memory=device.type == "cuda")
    masks = {s: torch.tensor([m in s for m in modalities], device=device) for s in subsets}
    written, position = 0, 0
    bar = tqdm(total=len(pending), desc=f"predict {request.split}", unit="image", disable=not request.progress)
    with torch.inference_mode():
        for batch in loader:
            images = batch["images"].to(device, non_blocking=True)
            present = batch["present"].to(device, non_blocking=True)
            positions = pending[position:position + images.shape[0]]
            position += images.shape[0]
            for subset, mask in masks.items():
                todo = [i for i, pos in enumerate(positions) if pos in missing[subset]]
                if not todo:
                    continue
                rows = torch.tensor(todo, device=device)
                with autocast(device, config.optim.precision):
                    logits = model(images[rows], present[rows] & mask).logits
                if not bool(torch.isfinite(logits).all()):
                    raise FloatingPointError(f"the model's output on {batch['meta'][todo[0]]['path']} (subset "
                                             f"{subset_name(subset)}) holds NaN or infinite values; are the "
                                             f"adapters and the SAM2 checkpoint the ones trained together?")
                for row, i in enumerate(todo):
                    prediction = full_size_prediction(logits[row], batch["meta"][i])
                    path = folders[subset] / relative[positions[i]]
                    _write_atomic(path, encode_png(source.encode_prediction(prediction)))
                    written += 1
                    if positions[i] in overlay_positions:
                        shown = next(m for m in modalities if m in subset)
                        overlay = overlay_image(source, indices[positions[i]], shown, prediction)
                        name = relative[positions[i]].with_suffix(".png").name
                        _write_atomic(folders[subset] / OVERLAY_FOLDER / name, encode_png(overlay))
            bar.update(len(positions))
    bar.close()
    archives = []
    if source.submission_archive is not None:
        top = relative[0].parts[0]
        archives = [_archive(folder, top, source.submission_archive) for folder in folders.values()]
    summary = {"dataset": config.data.format, "split": request.split, "adapters": str(request.adapters),
               "inputs": len(relative), "subsets": [subset_name(s) for s in subsets],
               "noise": {"kind": request.noise, "modality": request.noise_on} if request.noise else None,
               "folders": {subset_name(s): str(f) for s, f in folders.items()},
               "archives": [str(a) for a in archives]}
    _write_atomic(out_dir / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    return PredictionSummary(out_dir, total, written, done_before, archives)


__all__ = ["PredictionSummary", "predict_split", "full_size_prediction", "overlay_image"]
