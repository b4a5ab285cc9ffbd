"""training.evaluate says which model config it evaluates and why: the adapter file's own; --config's model section,
when it differs, is named key by key in a warning."""

import logging
from pathlib import Path

from mlesam_core.model.adapters import adapter_config
from training.evaluate import log_model_config_source
from training.evaluate import main as evaluate_main

CONFIG = "config/train/synthetic_cpu.yaml"


def test_a_differing_model_section_of_the_config_is_named_and_the_adapters_model_evaluated(tiny_run, tmp_path,
                                                                                            caplog):
    config, _ = tiny_run
    adapters = Path(config.out_dir) / "adapters.safetensors"
    trained = adapter_config(adapters)
    args = ["--no-progress", "--config", CONFIG, "--adapters", str(adapters), "--allow-random-init", "--out",
            str(tmp_path), f"data.root={config.data.root}", "data.workers=0",
            f"model.lora.rank={trained.lora.rank + 4}", f"model.num_classes={trained.num_classes}", "--max-samples",
            "3", "--batch-size", "3"]
    with caplog.at_level(logging.INFO, logger="training.evaluate"):
        assert evaluate_main(args) == 0  # the adapter file's model, which its weights fit
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "model config" in
                r.getMessage()]
    assert len(warnings) == 1 and f"model config: the one embedded in {adapters}" in warnings[0]
    assert f"lora.rank: {trained.lora.rank + 4} in --config, {trained.lora.rank} in the adapters" in warnings[0]
    assert "num_classes" not in warnings[0]  # equal keys are not named


def test_an_equal_model_section_is_said_to_be_the_same(tiny_run, caplog):
    config, _ = tiny_run
    adapters = Path(config.out_dir) / "adapters.safetensors"
    with caplog.at_level(logging.INFO, logger="training.evaluate"):
        log_model_config_source(adapters, adapter_config(adapters), adapter_config(adapters))
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "--config's model section is the same" in caplog.records[0].getMessage()
