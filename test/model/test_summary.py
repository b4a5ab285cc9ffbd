"""`python -m mlesam_core.model.summary`: trainable parameters per component and per modality."""

from __future__ import annotations

from fixtures.model import REPO_ROOT

from mlesam_core.model import build_model
from mlesam_core.model.summary import main, parameter_summary


def test_hiera_b_plus_rank_32_lora_has_1326080_parameters_per_modality(capsys):
    assert main(["--config", str(REPO_ROOT / "config/model/mlesam_hiera_b+.yaml")]) == 0
    out = capsys.readouterr().out
    for modality in ("rgb", "depth", "event", "lidar"):
        assert f"{modality:<10}    1,326,080  (lora 1,326,080)" in out
    assert "5,304,320" in out  # four experts


def test_hiera_t_rank_32_lora_has_559104_parameters_per_modality():
    model = build_model(REPO_ROOT / "config/model/mlesam_hiera_t.yaml", overrides=["image_size=256"])
    summary = parameter_summary(model)
    assert all(parts == {"lora": 559_104} for parts in summary["per_modality"].values())
    assert summary["trainable"] == sum(summary["components"].values())


def test_sam_lora_counts_heads_per_modality(tiny_model_config_path):
    summary = parameter_summary(build_model(tiny_model_config_path, overrides=["architecture=sam_lora"]))
    parts = summary["per_modality"]["rgb"]
    assert set(parts) == {"lora", "mask head", "aux head"}
    assert summary["components"]["routers (SFM, IFP, FFP)"] == 0
