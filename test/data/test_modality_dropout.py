"""Modality dropout on a batch's present mask: the schedule's values, both samplers' distributions, the
never-all and protect rules, unavailable modalities stay absent, and draws are a function of the generator."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from mlesam_core.data.modality_dropout import ModalityDropout

ALL = torch.ones(6000, 4, dtype=torch.bool)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_schedule_is_zero_before_start_then_ramps_linearly_to_p():
    dropout = ModalityDropout(0.5, start_step=10, ramp_steps=20)
    values = [dropout.probability(step) for step in (0, 9, 10, 15, 20, 29, 30, 31, 1000)]
    assert values == pytest.approx([0, 0, 0, 0.125, 0.25, 0.475, 0.5, 0.5, 0.5])
    assert [ModalityDropout(0.3).probability(s) for s in (0, 599)] == [0.3, 0.3]  # no ramp: constant
    assert [ModalityDropout(0.3, start_step=5).probability(s) for s in (4, 5)] == [0.0, 0.3]


def test_before_the_schedule_starts_nothing_is_dropped():
    dropout = ModalityDropout(0.9, start_step=100)
    assert torch.equal(dropout(ALL, step=0, generator=_generator()), ALL)


def test_independent_sampler_drops_each_modality_with_p_and_never_all():
    kept = ModalityDropout(0.5)(ALL, step=0, generator=_generator())
    assert kept.any(dim=1).all()
    # P(dropped) = p, plus the rows where all four were dropped (p^4) get one back: 0.5 - 0.0625 / 4
    assert (~kept).float().mean().item() == pytest.approx(0.5 - 0.0625 / 4, abs=0.02)
    singles = kept[kept.sum(dim=1) == 1]
    assert len(singles) > 0 and set(singles.float().argmax(dim=1).tolist()) == {0, 1, 2, 3}


def test_subset_sampler_draws_every_non_empty_subset_equally_often():
    kept = ModalityDropout(1.0, sampler="subset")(ALL, step=0, generator=_generator())
    counts = Counter(tuple(row) for row in kept.tolist())
    subsets = [tuple(bool(b) for b in bits) for bits in itertools.product((0, 1), repeat=4) if any(bits)]
    assert set(counts) == set(subsets)  # 15 subsets, never the empty one
    expected = len(ALL) / 15
    assert all(abs(counts[s] - expected) < 0.2 * expected for s in subsets), counts


def test_subset_sampler_leaves_a_fraction_one_minus_p_of_the_samples_whole():
    kept = ModalityDropout(0.4, sampler="subset")(ALL, step=0, generator=_generator(1))
    whole = kept.all(dim=1).float().mean().item()
    assert whole == pytest.approx(0.6 + 0.4 / 15, abs=0.02)  # not dropped, or drew the full set


def test_single_sampler_keeps_one_modality_uniformly_with_probability_p():
    kept = ModalityDropout(0.75, sampler="single")(ALL, step=0, generator=_generator(2))
    sizes = kept.sum(dim=1)
    assert set(sizes.tolist()) == {1, 4}
    assert (sizes == 1).float().mean().item() == pytest.approx(0.75, abs=0.02)
    counts = kept[sizes == 1].float().mean(dim=0)  # each modality a quarter of the singles
    torch.testing.assert_close(counts, torch.full((4,), 0.25), atol=0.03, rtol=0)
    protected = ModalityDropout(1.0, sampler="single", protect=2)(ALL[:50], step=0, generator=_generator())
    assert torch.equal(protected, torch.tensor([[False, False, True, False]]).expand(50, 4))


@pytest.mark.parametrize("sampler", ["independent", "subset", "single"])
def test_protected_modality_is_always_kept_and_may_otherwise_be_dropped(sampler):
    kept = ModalityDropout(0.9, sampler=sampler, protect=0)(ALL, step=0, generator=_generator())
    assert kept[:, 0].all() and kept.any(dim=1).all()
    unprotected = ModalityDropout(0.9, sampler=sampler)(ALL, step=0, generator=_generator())
    assert not unprotected[:, 0].all()  # the primary (RGB) can be dropped too when nothing is protected
    if sampler == "subset":
        assert len({tuple(row) for row in kept.tolist()}) == 8  # the 8 subsets that contain modality 0


@pytest.mark.parametrize("sampler", ["independent", "subset", "single"])
def test_unavailable_modalities_stay_absent_and_a_sample_keeps_one_it_has(sampler):
    present = torch.tensor([[True, False, False, True], [False, False, True, False]]).repeat(500, 1)
    kept = ModalityDropout(0.95, sampler=sampler, protect=1)(present, step=0, generator=_generator())
    assert not (kept & ~present).any()
    assert kept.any(dim=1).all()


def test_draws_are_a_function_of_the_generator():
    dropout = ModalityDropout(0.5, sampler="subset")
    first = dropout(ALL[:64], step=3, generator=_generator(7))
    assert torch.equal(first, dropout(ALL[:64], step=3, generator=_generator(7)))
    assert not torch.equal(first, dropout(ALL[:64], step=3, generator=_generator(8)))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="probability must lie in"):
        ModalityDropout(1.5)
    with pytest.raises(ValueError, match="sampler must be one of"):
        ModalityDropout(0.5, sampler="all")
    with pytest.raises(ValueError, match="protected modality index 4"):
        ModalityDropout(0.5, protect=4)(ALL[:2], step=0)
