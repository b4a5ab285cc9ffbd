"""`partial_head.presence` (beyond the paper): the partial heads look up a learned vector per presence case. The
case index and both conditionings against hand-computed values; at initialisation the conditioned heads equal
unconditioned ones bit for bit, and a case's row changes that case's samples only; training reaches the rows of
the cases in the batch only; the option is validated by key and travels with the adapter file."""

from __future__ import annotations

import pytest
import torch
from fixtures.model import assert_adapters_reload, random_batch, randomize_lora, tiny_config

from mlesam_core.config_io import ConfigError
from mlesam_core.losses import total_loss
from mlesam_core.model import AdapterError, build_model, load_adapters, save_adapters
from mlesam_core.model.presence import PresenceFiLM, PresenceTokens, presence_case

TABLES = {"tokens": "partial_presence_tokens.offsets.weight", "features": "partial_presence_film.scale_shift.weight"}


def test_presence_case_sets_bit_m_for_each_present_modality():
    present = torch.tensor([[True, False, True, False], [False, True, False, False], [True, True, True, True],
                            [False, False, False, True]])
    assert presence_case(present).tolist() == [1 + 4, 2, 15, 8]


def test_presence_film_scales_and_shifts_each_level_by_its_case_row():
    film = PresenceFiLM(num_modalities=2, dim=2, levels=2)
    with torch.no_grad():  # case 1 = first modality alone: level 0 scale (0.5, -1), shift (1, 2); level 1 shift 3
        film.scale_shift.weight[1] = torch.tensor([0.5, -1.0, 1.0, 2.0, 0.0, 0.0, 3.0, 3.0])
    fused = [torch.full((2, 2, 1, 1), 2.0), torch.full((2, 2, 1, 1), 5.0)]
    present = torch.tensor([[True, False], [True, True]])
    out = film(fused, present)
    # sample 0: 2 * (1 + 0.5) + 1 = 4, 2 * (1 - 1) + 2 = 2; level 1: 5 + 3 = 8. Sample 1 (case 3) is untouched.
    assert out[0][:, :, 0, 0].tolist() == [[4.0, 2.0], [2.0, 2.0]]
    assert out[1][:, :, 0, 0].tolist() == [[8.0, 8.0], [5.0, 5.0]]
    with pytest.raises(ValueError, match="expected 2 fused levels, got 1"):
        film(fused[:1], present)


def test_presence_tokens_are_the_case_row_as_class_token_offsets():
    tokens = PresenceTokens(num_modalities=2, num_classes=2, dim=3)
    with torch.no_grad():
        tokens.offsets.weight[2] = torch.arange(6.0)
    out = tokens(torch.tensor([[False, True], [True, False]]))
    assert out.shape == (2, 2, 3)
    assert out[0].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and not out[1].any()
    with pytest.raises(ValueError, match="1..8 modalities, got 9"):
        PresenceTokens(num_modalities=9, num_classes=2, dim=3)


def _conditioned_and_plain(presence: str):
    torch.manual_seed(0)
    model = build_model(tiny_config("partial_head.enabled=true", f"partial_head.presence={presence}",
                                    "aux_head.dropout=0.0")).eval()
    randomize_lora(model)
    plain = build_model(tiny_config("partial_head.enabled=true", "aux_head.dropout=0.0")).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("partial_presence_")})
    return model, plain


@pytest.mark.parametrize("presence", ["tokens", "features"])
def test_conditioned_heads_start_as_unconditioned_ones_and_a_case_row_moves_only_its_samples(presence):
    model, plain = _conditioned_and_plain(presence)
    images, present = random_batch(model.config, batch=3, seed=2)
    present[1, 2] = False  # sample 1: rgb, depth, lidar (case 1 + 2 + 8); sample 2: depth, event (case 2 + 4)
    present[2, [0, 3]] = False
    with torch.no_grad():
        before = model(images, present).logits
        torch.testing.assert_close(before, plain(images, present).logits, rtol=0, atol=0)
        model.get_parameter(TABLES[presence])[11].normal_()
        after = model(images, present).logits
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(after[1], before[1])


@pytest.mark.parametrize("presence", ["tokens", "features"])
def test_training_reaches_the_rows_of_the_cases_in_the_batch_only(presence):
    model, _ = _conditioned_and_plain(presence)
    model.train()
    images, present = random_batch(model.config, batch=2, seed=4)
    labels = torch.randint(0, model.config.num_classes, (2, 64, 64), generator=torch.Generator().manual_seed(0))
    rgb_alone = present & (torch.arange(4) == 0)
    out = model(images, present, subset_present=[rgb_alone, present & (torch.arange(4) != 1)])
    loss = sum(total_loss(subset, labels, model.config)["loss"] for subset in out.subsets)
    loss.backward()
    grad = model.get_parameter(TABLES[presence]).grad
    assert grad is not None
    reached = (grad.abs().sum(dim=1) > 0).nonzero().flatten().tolist()
    assert reached == [1, 13]  # rgb alone; all but depth (1 + 4 + 8); the full set is the paper heads'


def test_presence_is_validated_by_key():
    with pytest.raises(ConfigError, match="partial_head.presence: 'tokens' conditions the partial heads: it needs "
                                          "partial_head.enabled"):
        tiny_config("partial_head.presence=tokens")
    with pytest.raises(ConfigError, match="partial_head.presence"):
        tiny_config("partial_head.enabled=true", "partial_head.presence=prompts")


def test_adapters_carry_the_presence_tables_and_a_model_without_them_refuses_the_file(tmp_path):
    model, _ = _conditioned_and_plain("features")
    with torch.no_grad():
        model.get_parameter(TABLES["features"]).normal_()
    path = save_adapters(model, tmp_path / "presence.safetensors")
    assert_adapters_reload(model, path, "partial_head.enabled=true", "partial_head.presence=features",
                           "aux_head.dropout=0.0", missing=1)
    with pytest.raises(AdapterError, match=r"partial_head.presence: 'features' \(file\) != 'none' \(model\)"):
        load_adapters(build_model(tiny_config("partial_head.enabled=true", "aux_head.dropout=0.0")), path)
