"""Train config: one YAML for model + data + optimisation; errors name the dotted key before any training."""

import pytest

from mlesam_core.config_io import ConfigError
from training.config import load_train_config, paper_recipe_overrides
from training.data import check_data_against_model
from training.model_setup import sam2_checkpoint_path

TINY = "config/model/mlesam_tiny.yaml"


def _config(tmp_path, *overrides, model=None):
    data = {"model": model or {"config": TINY}, "data": {"root": str(tmp_path)}, "allow_random_init": True}
    return load_train_config(None, list(overrides), data=data)


def test_model_section_is_the_model_file_with_inline_overrides(tmp_path):
    config = _config(tmp_path, "model.fusion=avg", "model.lora.rank=4")
    model = config.model
    assert model.fusion == "avg" and model.lora.rank == 4
    assert model.image_size == 128 and model.modalities == ("rgb", "depth", "event", "lidar")  # from the file


def test_shipped_train_configs_load_and_match_their_data_sets():
    for name in ("deliver_rgbdel", "muses_fel", "mcubes_rgbadn", "synthetic_cpu"):
        config = load_train_config(f"config/train/{name}.yaml")
        model = config.model
        assert model.num_classes == {"deliver": 25, "muses": 19, "mcubes": 20}[config.data.format], name


@pytest.mark.parametrize("name", ["deliver_rgbdel", "muses_fel", "mcubes_rgbadn", "synthetic_cpu"])
def test_paper_recipe_overrides_restore_the_paper_on_every_shipped_config(name):
    # written out here, not taken from the dataclasses: the paper trains without dropout or any extra term
    config = load_train_config(f"config/train/{name}.yaml", paper_recipe_overrides())
    dropout, loss, router = config.data.modality_dropout, config.loss, config.model.router
    assert (dropout.p, dropout.start_step) == (0, 0)
    assert loss.router_confidence_weight == 0
    assert (router.noise_std, router.temperature) == (0, 1)
    assert not config.model.sensor_heads.enabled
    shipped = load_train_config(f"config/train/{name}.yaml")
    assert (shipped.optim, shipped.model.lora, shipped.model.fusion) == (config.optim, config.model.lora,
                                                                         config.model.fusion)  # nothing else moves
    assert (loss.sam_weight, loss.aux_weight, loss.ohem_keep_prob) == (shipped.loss.sam_weight,
                                                                       shipped.loss.aux_weight, 0.7)


def test_the_chosen_recipe_is_the_sensor_heads_with_the_confidence_penalty():
    config = load_train_config("config/train/synthetic_cpu.yaml")
    assert config.model.sensor_heads.enabled and config.loss.router_confidence_weight == 0.01
    assert (config.loss.sam_weight, config.loss.aux_weight, config.loss.sensor_heads_weight) == (1.0, 0.4, 1.0)


@pytest.mark.parametrize(("key", "place"), [("loss", "top-level `loss` section"),
                                            ("partial_head", "model.sensor_heads: {enabled: true}")])
def test_model_keys_that_moved_are_refused_naming_their_new_place(tmp_path, key, place):
    with pytest.raises(ConfigError, match=f"model.{key}: no longer a model key: .*{place}"):
        _config(tmp_path, model={"config": TINY, key: {}})


def test_loss_weights_are_checked_by_key(tmp_path):
    with pytest.raises(ConfigError, match="loss.router_confidence_weight: must be >= 0"):
        _config(tmp_path, "loss.router_confidence_weight=-1")


def test_paper_scale_configs_default_to_the_paper_recipe():
    for name in ("deliver_rgbdel", "muses_fel", "mcubes_rgbadn"):
        assert load_train_config(f"config/train/{name}.yaml", paper_recipe_overrides()) == \
            load_train_config(f"config/train/{name}.yaml"), name


def test_paper_recipe_config_holds_table_ix():
    config = load_train_config("config/train/deliver_rgbdel.yaml")
    model = config.model
    assert (model.image_size, model.lora.rank, config.optim.batch_size, config.optim.epochs) == (1024, 32, 6, 100)
    assert config.optim.weight_decay == 0.01
    assert (config.optim.schedule.power, config.optim.schedule.warmup_epochs,
            config.optim.schedule.warmup_ratio) == (0.9, 10, 0.1)
    assert model.sam2.config_name.endswith("hiera_b+.yaml")


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=1"], "optim.lrr: unknown key"),
    (["optim.batch_size=0"], "optim.batch_size: must be positive"),
    (["optim.schedule.warmup_ratio=2"], "optim.schedule.warmup_ratio: must lie in [0, 1]"),
    (["data.format=kitti"], "data.format: must be one of"),
    (["data.modality_dropout.p=1.5"], "data.modality_dropout.p: must lie in [0, 1]"),
    (["data.modality_dropout.sampler=all"], "data.modality_dropout.sampler: must be one of"),
    (["data.modality_dropout.ramp_steps=-1"], "data.modality_dropout.ramp_steps: must be >= 0"),
    (["validation.metric=dice"], "validation.metric: must be one of"),
])
def test_bad_train_values_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, *overrides)
    assert message in str(info.value)


def test_bad_model_values_are_named_under_model(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.lora\.rank: must be positive"):
        _config(tmp_path, "model.lora.rank=0")  # the model section is validated as the train config loads
    with pytest.raises(ConfigError, match=r"^model\.modalities: unknown modality 'sonar'"):
        _config(tmp_path, "model.modalities=[rgb, sonar]")
    with pytest.raises(ConfigError, match=r"^model\.config: .*absent\.yaml: config file not found"):
        _config(tmp_path, model={"config": "config/model/absent.yaml"})


@pytest.mark.parametrize("overrides, message", [
    (["data.root=null"], "data.root: not set"),
    (["data.root=/nonexistent/deliver"], "data.root: folder not found: /nonexistent/deliver"),
    (["data.modalities=[rgb, sonar]"], "data.modalities: unknown modality 'sonar'"),
    (["data.modalities=[depth, rgb, event, lidar]"], "data.modalities: ['depth', 'rgb', 'event', 'lidar'] differ"),
    (["model.modalities=[rgb, nir]"], "model.modalities: data set 'deliver' has no modality 'nir'"),
    (["model.classes=null", "model.num_classes=19"], "model.num_classes: 19, but data set 'deliver' has 25 classes"),
    (["data.format=muses", "model.modalities=[frame]"], "model.classes: 'deliver', but data.format is 'muses'"),
    (["data.format=muses", "model.modalities=[frame]", "model.classes=muses", "model.num_classes=19", "data.case=fog"],
     "data.case: only DELIVER"),
    (["data.modality_dropout.p=0.5", "data.modality_dropout.protect=frame"],
     "data.modality_dropout.protect: 'frame' is not a modality of the model"),
])
def test_data_that_cannot_fit_the_model_is_refused_by_key(tmp_path, overrides, message):
    config = _config(tmp_path, *overrides)
    with pytest.raises(ConfigError) as info:
        check_data_against_model(config.data, config.model)
    assert message in str(info.value)


def test_missing_sam2_checkpoint_says_where_to_get_one_or_which_flag_allows_random_init(tmp_path):
    with pytest.raises(ConfigError, match="sam2_checkpoint: not set.*dl.fbaipublicfiles.com.*allow_random_init"):
        sam2_checkpoint_path(_config(tmp_path, "allow_random_init=false"))
    with pytest.raises(ConfigError, match="sam2_checkpoint: file not found"):
        sam2_checkpoint_path(_config(tmp_path, f"sam2_checkpoint={tmp_path / 'absent.pt'}"))
    assert sam2_checkpoint_path(_config(tmp_path)) is None


def test_exponent_learning_rates_without_a_dot_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads "3e-3" as a string; a learning rate written that way must still work
    assert _config(tmp_path, "optim.lr=3e-3").optim.lr == 0.003
    with pytest.raises(ConfigError, match="optim.lr: expected a number, got 'fast'"):
        _config(tmp_path, "optim.lr=fast")
