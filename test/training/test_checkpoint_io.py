"""Checkpoint files: atomic replacement, RNG round trip, clear errors for foreign files."""

import random

import numpy as np
import pytest
import torch

from training.checkpoint import atomic_path, load_checkpoint, rng_state, set_rng_state


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a checkp")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = tmp_path / "rng.pt"
    torch.save({"rng": rng_state()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_foreign_or_truncated_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="garbage.pt: not a readable checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.pt: not an MLE-SAM training checkpoint"):
        load_checkpoint(foreign)
