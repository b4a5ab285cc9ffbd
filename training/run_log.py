"""What a run records: `metrics.jsonl` (one JSON object per line) and TensorBoard scalars, rank 0 only.

On resume, records after the resumed step (written after the checkpoint, then lost with the run) are dropped
from `metrics.jsonl` and purged from TensorBoard, so both read as one uninterrupted run. A torn last line (the run
died mid-write, or the disk filled up) is dropped with a warning, and the file rewritten whole; a broken line
before the last is an error naming the file and line.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from training.reporting import json_ready

log = logging.getLogger(__name__)


def _read_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of every non-empty line; a torn last line is dropped with a warning."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    parsed = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not a JSON record ({exc}); the file is damaged "
                                 f"before its end: repair or remove that line") from None
            log.warning("%s: dropping its torn last line %d (%d characters: the run stopped mid-write or the disk "
                        "was full)", path, number, len(line))
            break
        parsed.append((line, record))
    return parsed


class RunLog:
    """Appends metric records to `<out>/metrics.jsonl` and mirrors numeric ones to TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int | None = None):
        self.path = out_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [line for line, record in _read_lines(self.path) if record.get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Record `values` of `kind` ('train', 'val', ...) at optimiser step `step`."""
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **json_ready(values)}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        self.writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` file (a torn last line left out, with a warning)."""
    return [record for _, record in _read_lines(Path(path))]
