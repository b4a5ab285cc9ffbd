"""Typed configs: YAML + overrides -> dataclasses, errors name the dotted key."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mlesam_core.config_io import ConfigError, check, load_config, to_dict


@dataclass
class Lora:
    rank: int = 4
    alpha: float = 4.0

    def __post_init__(self):
        check(self.rank > 0, "rank", f"must be positive, got {self.rank}")


@dataclass
class Model:
    name: str
    fusion: Literal["avg", "moe", "avg+moe"] = "avg+moe"
    sizes: tuple[int, int] = (64, 64)
    modalities: tuple[str, ...] = ("rgb",)
    checkpoint: str | None = None
    lora: Lora = field(default_factory=Lora)


def test_yaml_and_overrides_build_typed_config(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: tiny\nlora:\n  rank: 8\nmodalities: [rgb, depth]\n")
    cfg = load_config(Model, path, ["lora.alpha=2", "sizes=[32, 96]", "fusion=avg"])
    assert cfg.lora == Lora(8, 2.0)
    assert cfg.sizes == (32, 96) and cfg.modalities == ("rgb", "depth") and cfg.fusion == "avg"
    assert to_dict(cfg)["lora"] == {"rank": 8, "alpha": 2.0}


@pytest.mark.parametrize("overrides, message", [
    (["lora.rnk=3"], "lora.rnk: unknown key"),
    (["lora.rank=0"], "lora.rank: must be positive"),
    (["lora.rank=two"], "lora.rank: expected an integer"),
    (["fusion=sum"], "fusion: must be one of"),
    (["sizes=[1, 2, 3]"], "sizes: expected 2 items"),
    (["modalities=rgb"], "modalities: expected a list"),
])
def test_bad_values_name_the_key_and_file(tmp_path, overrides, message):
    path = tmp_path / "m.yaml"
    path.write_text("name: tiny\n")
    with pytest.raises(ConfigError) as info:
        load_config(Model, path, overrides)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_missing_required_key_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="name: required key is missing"):
        load_config(Model, data={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Model, tmp_path / "absent.yaml")


@dataclass
class Timing:
    period: float = 1.0
    matrix: tuple[float, ...] = (1.0, 0.0)
    count: int = 2


@pytest.mark.parametrize("data, expected", [
    ({"period": 1, "matrix": [0, 1]}, Timing(1.0, (0.0, 1.0))),  # integers where numbers are expected
    ({"period": "2e-3"}, Timing(0.002)),  # PyYAML reads 2e-3 as text; ROS and the user mean a number
])
def test_integers_are_numbers(data, expected):
    config = load_config(Timing, data=data)
    assert config == expected and all(isinstance(v, float) for v in (config.period, *config.matrix))


@pytest.mark.parametrize("data, message", [
    ({"count": 2.0}, "count: expected an integer, got 2.0"),  # a number is not an integer
    ({"count": True}, "count: expected an integer, got True"),
    ({"period": True}, "period: expected a number, got True"),
    ({"matrix": [1.0, "x"]}, "matrix[1]: expected a number, got 'x'"),
])
def test_numbers_are_not_integers_and_booleans_are_neither(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(Timing, data=data)
