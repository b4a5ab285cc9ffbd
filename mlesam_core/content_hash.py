"""Content hashes of saved training state: sha256 over a canonical walk of nested data and tensors.

A bit flip inside a tensor of a checkpoint or adapter file still loads (the container formats check their
structure, not their values); the hash stored beside the data and compared on load turns that into an error.
The walk is canonical: mapping keys are sorted, lists and tuples hash alike (a torch.save/torch.load round trip
may turn one into the other), tensors hash their dtype, shape and bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

ALGORITHM = "sha256"


def content_sha256(data: Any) -> str:
    """Hex sha256 of `data` (nested dicts, lists, tuples, tensors, Python scalars and strings)."""
    digest = hashlib.sha256()
    _update(digest, data)
    return digest.hexdigest()


def _update(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key in sorted(value, key=repr):
            _update(digest, key)
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}:".encode())
        for item in value:
            _update(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str, bytes)):
        digest.update(f"S{type(value).__name__}{value!r};".encode())
    else:  # anything else a state dict may hold: its type and repr (deterministic for plain values)
        digest.update(f"O{type(value).__qualname__}{value!r};".encode())


__all__ = ["ALGORITHM", "content_sha256"]
