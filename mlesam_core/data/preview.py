"""A contact sheet of a DELIVER-layout data set: every modality and the coloured labels, a few samples per
condition (`python -m mlesam_core.data.preview DIR --out preview.png`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from mlesam_core.data.classes import DELIVER
from mlesam_core.data.deliver import CONDITIONS, DeliverDataset
from mlesam_core.data.image_io import write_image

log = logging.getLogger(__name__)

COLUMNS = ("rgb", "hha", "raw depth", "event", "lidar (dilated)", "label")
HEADER = 18  # pixels of column titles


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.putText(out, text, (3, out.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(out, text, (3, out.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def preview_rows(root: str | Path, split: str, per_condition: int, tile: int) -> list[np.ndarray]:
    """One row of tiles per chosen sample: rgb, hha, raw depth, event, LiDAR and labels."""
    hha = DeliverDataset(root, split, ["rgb", "depth", "event", "lidar"])
    try:
        raw = DeliverDataset(root, split, ["depth"], depth_source="depth")
    except FileNotFoundError:
        raw = None
    rows = []
    for condition in CONDITIONS:
        chosen = [i for i in range(len(hha)) if hha.items[i].split("/")[1] == condition][:per_condition]
        for i in chosen:
            sample = hha[i]
            images = sample["images"]
            depth = raw.load(i)["images"]["depth"] if raw is not None else np.zeros_like(images["rgb"])
            lidar = cv2.dilate(images["lidar"], np.ones((2, 2), np.uint8))  # single points vanish when shrunk
            tiles = [images["rgb"], images["depth"], depth, images["event"], lidar,
                     DELIVER.colorize(sample["label"])]
            tiles = [cv2.resize(t, (tile, tile), interpolation=cv2.INTER_AREA) for t in tiles]
            meta = sample["meta"]
            tiles[0] = _caption(tiles[0], f"{meta['condition']} {meta['case'] or ''}".strip())
            rows.append(np.concatenate(tiles, axis=1))
    return rows


def make_preview(root: str | Path, out: str | Path, split: str = "val", per_condition: int = 2,
                 tile: int = 160) -> Path:
    """Write the contact sheet of `split` under `root` to `out` (PNG)."""
    rows = preview_rows(root, split, per_condition, tile)
    header = np.full((HEADER, tile * len(COLUMNS), 3), 255, np.uint8)
    for k, name in enumerate(COLUMNS):
        cv2.putText(header, name, (k * tile + 4, HEADER - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    sheet = np.concatenate([header] + rows, axis=0)
    write_image(out, sheet)
    log.info("preview of %d samples written to %s", len(rows), out)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m mlesam_core.data.preview", description=__doc__)
    parser.add_argument("root", help="data set root in the DELIVER layout")
    parser.add_argument("--out", default="preview.png", help="output PNG")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--per-condition", type=int, default=2, help="samples per condition")
    parser.add_argument("--tile", type=int, default=160, help="tile size in pixels")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_preview(args.root, args.out, args.split, args.per_condition, args.tile)


if __name__ == "__main__":
    main()
