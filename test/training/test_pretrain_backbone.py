"""The stand-in backbone: `python -m training.pretrain_backbone` trains the whole SAM2 image encoder on procedural
RGB and writes a checkpoint that both `load_sam2_weights` and sam2's own `build_sam2(..., ckpt_path=...)` accept;
only the encoder differs from the seeded random SAM2; the masking and the masked L1 are what they claim."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from mlesam_core.model.sam2_parts import build_sam2_model
from training.pretrain_backbone import main, mim_loss, probe_frozen_features, random_unit_mask


@pytest.fixture(scope="module")
def small_model_yaml(tmp_path_factory):
    """The tiny model config at 64 px (the test size)."""
    from fixtures.model import TINY_CONFIG

    path = tmp_path_factory.mktemp("model") / "tiny64.yaml"
    config = yaml.safe_load(TINY_CONFIG.read_text())
    path.write_text(yaml.safe_dump({**config, "image_size": 64}))
    return path


@pytest.mark.parametrize("objective", ["mim", "supervised"])
def test_pretraining_writes_an_official_format_checkpoint_only_the_encoder_differs(
        objective, small_model_yaml, synthetic_deliver_root, tmp_path):
    from sam2.build_sam import build_sam2

    from mlesam_core.model import build_model, load_sam2_weights
    from mlesam_core.model.config import load_model_config

    out = tmp_path / f"standin_{objective}.pt"
    status = main(["--out", str(out), "--objective", objective, "--model", str(small_model_yaml),
                   "--data", str(tmp_path / "pretrain"), "--scenes", "6", "--steps", "3", "--batch-size", "2",
                   "--warmup-steps", "1", "--workers", "0", "--threads", "1", "--probe-data",
                   str(synthetic_deliver_root), "--probe-modalities", "rgb,depth", "--probe-steps", "2"])
    assert status == 0
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert set(payload) == {"model", "pretraining"} and payload["pretraining"]["settings"]["objective"] == objective
    record = json.loads(out.with_suffix(".json").read_text())
    assert set(record["linear_probe_miou"]) == {"random", out.name}
    assert all(0 <= v <= 1 for probe in record["linear_probe_miou"].values() for v in probe.values())

    config = load_model_config(small_model_yaml)
    random_sam = build_sam2_model(config)
    state = payload["model"]
    assert state.keys() == random_sam.state_dict().keys()
    changed = {k for k, v in random_sam.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and all(k.startswith("image_encoder.") for k in changed)
    assert "image_encoder.trunk.blocks.0.attn.qkv.weight" in changed

    # sam2's own builder loads it strictly (every key, no extra), as it loads Meta's checkpoints
    sam = build_sam2(config.sam2.config_name, ckpt_path=str(out), device="cpu", mode="eval",
                     hydra_overrides_extra=[*config.sam2.overrides, "++model.image_size=64"],
                     apply_postprocessing=False)
    torch.testing.assert_close(sam.image_encoder.trunk.blocks[0].attn.qkv.weight,
                               state["image_encoder.trunk.blocks.0.attn.qkv.weight"])
    # and so does MLE-SAM's loader, which then names the file in the backbone identity
    model = build_model(config)
    backbone = load_sam2_weights(model, out)
    assert out.name in backbone and "sha256:" in backbone
    torch.testing.assert_close(model.image_encoder.trunk.blocks[0].attn.qkv.base_layer.weight,
                               state["image_encoder.trunk.blocks.0.attn.qkv.weight"])

    # probing existing checkpoints alone, without the random baseline
    report = tmp_path / "probe.json"
    assert main(["--out", str(report), "--model", str(small_model_yaml), "--workers", "0", "--threads", "1",
                 "--probe-checkpoints", str(out), "--probe-data", str(synthetic_deliver_root), "--probe-steps", "2",
                 "--no-probe-random"]) == 0
    probed = json.loads(report.read_text())
    assert list(probed["linear_probe_miou"]) == [out.name] and list(probed["linear_probe_miou"][out.name]) == ["rgb"]
    assert probed["checkpoints"][out.name]["objective"] == objective


def test_random_unit_mask_masks_exactly_the_ratio_of_whole_units():
    mask = random_unit_mask(3, (64, 96), unit=16, ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (3, 16, 24)
    units = mask.view(3, 4, 4, 6, 4).permute(0, 1, 3, 2, 4)  # [B, rows, cols, 4, 4] token blocks of one unit
    assert (units.all(dim=(-1, -2)) | ~units.any(dim=(-1, -2))).all()  # a unit is masked whole or not at all
    assert (units.all(dim=(-1, -2)).sum(dim=(1, 2)) == 12).all()  # 0.5 x 24 units per image
    assert not torch.equal(mask[0], mask[1])


def test_mim_loss_is_the_mean_l1_over_masked_pixels_only():
    images = torch.zeros(1, 3, 8, 8)
    prediction = torch.zeros(1, 3, 8, 8)
    prediction[:, :, :4, :4] = 2.0  # error 2 on the masked token's 4x4 pixels
    prediction[:, :, 4:, 4:] = 5.0  # error on unmasked pixels does not count
    masked = torch.tensor([[[True, False], [False, False]]])  # [B, H/4, W/4]
    assert mim_loss(prediction, images, masked).item() == pytest.approx(2.0)


def test_linear_probe_of_the_random_encoder_scores_the_val_split(small_model_yaml, synthetic_deliver_root):
    scores = probe_frozen_features(str(small_model_yaml), None, synthetic_deliver_root, "rgb", steps=3, workers=0)
    assert 0 <= scores["miou"] <= scores["miou_present_classes"] <= 1 and 0 < scores["pixel_accuracy"] <= 1


def test_a_rebuild_with_the_same_command_writes_the_same_file(small_model_yaml, tmp_path):
    """Benchmark runs and adapter files name the stand-in by its file's sha256, so rebuilding it with the same
    command must give the same bytes: the first build generates its scenes, the second finds them on disk."""
    from mlesam_core.model.backbone_id import file_sha256

    def build(name: str) -> str:
        out = tmp_path / name
        assert main(["--out", str(out), "--objective", "supervised", "--model", str(small_model_yaml),
                     "--data", str(tmp_path / "pretrain"), "--scenes", "4", "--steps", "2", "--batch-size", "2",
                     "--warmup-steps", "1", "--workers", "1", "--threads", "1"]) == 0
        return file_sha256(out)

    first = build("first.pt")
    assert (tmp_path / "pretrain" / "generator.json").is_file()
    assert build("second.pt") == first

    # the encoder-only file written beside it (what the repository ships) expands to the same bytes again
    encoder_file = tmp_path / "first.encoder.pt"
    assert set(torch.load(encoder_file, map_location="cpu", weights_only=True)) == {"image_encoder", "pretraining"}
    assert encoder_file.stat().st_size < (tmp_path / "first.pt").stat().st_size
    assert main(["--from-encoder", str(encoder_file), "--out", str(tmp_path / "expanded.pt")]) == 0
    assert file_sha256(tmp_path / "expanded.pt") == first


def test_from_encoder_refuses_a_file_that_is_no_encoder_file(tmp_path, capsys):
    not_encoder = tmp_path / "sam2.pt"
    torch.save({"model": {}}, not_encoder)
    with pytest.raises(SystemExit):
        main(["--from-encoder", str(not_encoder), "--out", str(tmp_path / "out.pt")])
    assert f"{not_encoder}: not an encoder file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--from-encoder", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "out.pt")])
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_the_shipped_encoder_expands_to_the_checkpoint_of_the_committed_standin_runs(tmp_path):
    """The stand-in report's runs record their checkpoint's sha256: the shipped encoder file must give that file
    back, so anyone can rerun them on the same weights."""
    from fixtures import REPO_ROOT

    from mlesam_core.model.backbone_id import file_sha256
    from training.pretrain_backbone import SHIPPED_ENCODER

    report = json.loads((REPO_ROOT / "benchmarks/results/subset_robustness_standin.json").read_text())
    recorded = {figures["checkpoint_sha256"] for variant in report["backbones"]["standin"]["variants"].values()
                for figures in variant["per_seed"].values()}
    out = tmp_path / "standin.pt"
    assert main(["--from-encoder", str(REPO_ROOT / SHIPPED_ENCODER), "--out", str(out)]) == 0
    assert recorded == {file_sha256(out)}
