"""Training checkpoints: trainable tensors + optimiser + scheduler + RNG states + progress, written atomically.

A checkpoint holds only what training changes (the model's `adapter_state_dict`: trainable parameters and
the buffers of their modules), so it stays adapter-sized; the frozen SAM2 weights come from the SAM2
checkpoint (or the seeded random init) again on resume. Files are written to a temporary name in the same folder,
flushed and fsync'ed, then renamed over the target with `os.replace`, so a crash mid-write never leaves a truncated
`last.pt`; the temporaries of writers killed mid-write (`.<name>.tmp-<pid>` of a process that no longer exists)
are removed by `remove_stale_temporaries` when a run starts.

Each checkpoint stores the sha256 of its content (`mlesam_core.content_hash`: every tensor's bytes, every value)
under `content_sha256`; `load_checkpoint` recomputes it and refuses a file whose content changed after it was
written (`verify=False`, `--no-verify` on the command line, for files made elsewhere).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlesam_core.content_hash import content_sha256

log = logging.getLogger(__name__)

FORMAT = "mlesam-train-checkpoint"
VERSION = 1
HASH_KEY = "content_sha256"
TEMPORARY_MARK = ".tmp-"  # temporaries are ".<target name>.tmp-<pid>"


class CheckpointCorrupt(ValueError):
    """A checkpoint's content does not match the hash written with it (or it has none); the message names it."""


@dataclass
class Progress:
    """Where training stands: optimiser steps done, the epoch and the batches of it already consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the atomic-write temporaries in `folder` whose writer process is gone; returns what was removed.

    A temporary of a live process (a running save, or a reused pid) is left alone.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f".*{TEMPORARY_MARK}*"):
        pid = tmp.name.rsplit(TEMPORARY_MARK, 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_exists(int(pid)):
            continue
        size = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
        log.warning("removed %s (%.1f MB), left by process %s that died while writing it", tmp, size / 1e6, pid)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes (the model's `adapter_state_dict`), detached on CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.adapter_state_dict().items()}


def load_trainable_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `trainable_state_dict` output; error naming `source` and the keys if it does not fit the model."""
    own = model.adapter_state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{source}: checkpoint does not fit this model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, other shapes {wrong[:5]}); was it written with another model config?")
    not_finite = [k for k in own if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
    if not_finite:
        raise ValueError(f"{source}: checkpoint holds NaN or infinite values in {not_finite[:5]} (written after "
                         f"training diverged?); resume from an earlier checkpoint")
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(state[key])


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, progress: Progress, config: dict, rng: list[dict[str, Any]]) -> None:
    """Write a resumable training checkpoint atomically; `rng` holds one `rng_state()` per process."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "trainable": trainable_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "progress": asdict(progress),
        "config": config,
    }
    payload[HASH_KEY] = content_sha256(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def verify_content(payload: dict[str, Any], path: str | Path) -> None:
    """Recompute the content hash of a loaded checkpoint; CheckpointCorrupt if it differs or is missing."""
    stored = payload.get(HASH_KEY)
    if stored is None:
        raise CheckpointCorrupt(f"{path}: no content hash (not written by this version of training.checkpoint); "
                                f"pass --no-verify (verify=False) to use it unchecked")
    actual = content_sha256({k: v for k, v in payload.items() if k != HASH_KEY})
    if actual != stored:
        raise CheckpointCorrupt(f"{path}: content does not match the sha256 written with it (stored {stored[:16]}..., "
                                f"now {actual[:16]}...): the file changed after it was saved (disk or copy error?); "
                                f"resume from another checkpoint, or pass --no-verify to use it anyway")


def load_checkpoint(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (its content hash checked unless `verify` is False);
    clear errors for missing, foreign or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/garbage files
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an MLE-SAM training checkpoint")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')}, this code reads {VERSION}")
    if verify:
        verify_content(payload, path)
    return payload


def restore(payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            source: str) -> Progress:
    """Put model, optimiser and scheduler back as they were when the checkpoint was written (RNGs: caller)."""
    load_trainable_state_dict(model, payload["trainable"], source)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return Progress(**payload["progress"])
