"""What a run records: `metrics.jsonl` (one JSON object per line) and TensorBoard scalars, rank 0 only.

On resume, records after the resumed step (written after the checkpoint, then lost with the run) are dropped
from `metrics.jsonl` and purged from TensorBoard, so both read as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from training.reporting import json_ready


class RunLog:
    """Appends metric records to `<out>/metrics.jsonl` and mirrors numeric ones to TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int | None = None):
        self.path = out_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
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
    """The records of a `metrics.jsonl` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
