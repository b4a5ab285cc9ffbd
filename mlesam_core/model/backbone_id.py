"""Identities of frozen SAM2 weights, recorded in adapter files: adapters only work on the backbone they were
trained on (a checkpoint file, or a seeded random init)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def random_backbone_id(seed: int) -> str:
    """The identity recorded for a backbone that has random frozen weights."""
    return f"random-init seed {seed}"


def checkpoint_backbone_id(path: str | Path) -> str:
    """The identity recorded for a backbone loaded from a checkpoint file: name + sha256 prefix."""
    return f"{Path(path).name} sha256:{file_sha256(path)[:16]}"


def same_backbone(a: str, b: str) -> bool:
    """Whether two backbone identities name the same weights (file names may differ, hashes may not)."""
    if "sha256:" in a and "sha256:" in b:
        return a.split("sha256:")[1] == b.split("sha256:")[1]
    return a == b


__all__ = ["file_sha256", "random_backbone_id", "checkpoint_backbone_id", "same_backbone"]
