"""What `python -m training.evaluate` is asked to do (`EvalRequest`), shared by evaluation (`training.evaluate`) and
prediction files (`training.predict`): which adapters, split, modality subsets, noise and batch size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlesam_core.evaluation import all_subsets
from mlesam_core.evaluation import parse_subsets as parse_subset_list


@dataclass
class EvalRequest:
    """What to evaluate and how."""

    adapters: Path
    split: str = "val"
    subsets: Literal["full", "all"] | Sequence[Sequence[str]] = "full"
    noise: Literal["gaussian", "uniform"] | None = None
    noise_on: str | None = None
    by_case: bool = False
    batch_size: int = 4
    max_samples: int | None = None
    examples: int = 4
    seed: int = 0  # of the noise
    progress: bool = True
    verify: bool = True  # check the adapter file's content hash


def parse_subsets(text: str, modalities: Sequence[str]) -> Literal["full", "all"] | list[tuple[str, ...]]:
    """'all', 'full' or a comma-separated list of '+'-joined subsets, e.g. 'rgb,rgb+depth'
    (`mlesam_core.evaluation.parse_subsets`)."""
    if text in ("all", "full"):
        return text  # type: ignore[return-value]
    return parse_subset_list(text, modalities)


def requested_subsets(request: EvalRequest, modalities: Sequence[str]) -> list[tuple[str, ...]] | None:
    """The modality subsets to run besides the full set (None: the full set only)."""
    if request.subsets == "full":
        return None
    if request.subsets == "all":
        return all_subsets(modalities)
    return [tuple(s) for s in request.subsets]


__all__ = ["EvalRequest", "parse_subsets", "requested_subsets"]
