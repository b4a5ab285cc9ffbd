"""Segmenter: raw sensor arrays of any size/dtype/subset in, labels + confidence + routing out; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures.model import tiny_config

from mlesam_core import Prediction, Segmenter
from mlesam_core.model import CheckpointError, build_model, save_adapters


def _inputs(h: int = 50, w: int = 70, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "rgb": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "depth": rng.uniform(0, 255, (h, w)).astype(np.float32),  # single channel, float
        "event": rng.integers(0, 3, (h, w, 2), dtype=np.uint8) * 100,  # two polarity channels, sparse
        "lidar": (rng.uniform(0, 255, (h, w, 3)) * (rng.uniform(size=(h, w, 1)) > 0.9)).astype(np.float64),
    }


def test_predict_any_subset_and_size_returns_input_sized_labels_and_confidence(tiny_segmenter):
    full = _inputs()
    for subset in (["rgb"], ["lidar"], ["depth", "event"], list(full)):
        pred = tiny_segmenter.predict({k: full[k] for k in subset})
        assert isinstance(pred, Prediction)
        assert pred.labels.shape == (50, 70) and pred.labels.dtype == np.uint8
        assert pred.confidence.shape == (50, 70) and pred.confidence.dtype == np.float32
        assert (pred.labels < 25).all() and ((pred.confidence > 0) & (pred.confidence <= 1)).all()
        routing = pred.routing
        assert routing.modalities == ("rgb", "depth", "event", "lidar") and routing.levels == ("ffp", "ifp", "sfm")
        assert routing.weights.shape == (3, 4) and routing.weights.dtype == np.float32
        absent = [i for i, m in enumerate(routing.modalities) if m not in subset]
        assert (routing.weights[:, absent] == 0.0).all()
        assert routing.as_dict()["sfm"]["rgb"] == routing.weights[2, 0]
    big = tiny_segmenter.predict({"rgb": _inputs(h=240, w=320)["rgb"]})
    assert big.labels.shape == (240, 320)


def test_predict_without_confidence_gives_the_same_labels_and_routing(tiny_segmenter):
    inputs = {k: v for k, v in _inputs().items() if k != "event"}
    full = tiny_segmenter.predict(inputs)
    lean = tiny_segmenter.predict(inputs, confidence=False)
    assert lean.confidence is None
    np.testing.assert_array_equal(lean.labels, full.labels)
    np.testing.assert_array_equal(lean.routing.weights, full.routing.weights)


def test_tensor_inputs_give_the_prediction_of_the_same_arrays(tiny_segmenter):
    arrays = _inputs()  # uint8 and float, HxW, HxWx2, HxWx3
    tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in arrays.items()}
    expected, got = tiny_segmenter.predict(arrays), tiny_segmenter.predict(tensors)
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(got.confidence, expected.confidence)
    np.testing.assert_array_equal(got.routing.weights, expected.routing.weights)
    mixed = tiny_segmenter.predict({"rgb": tensors["rgb"], "lidar": arrays["lidar"]})
    np.testing.assert_array_equal(mixed.labels, tiny_segmenter.predict({k: arrays[k] for k in ("rgb", "lidar")}).labels)


def test_uint8_and_float_inputs_on_the_0_255_scale_agree(tiny_segmenter):
    rgb = _inputs()["rgb"]
    a = tiny_segmenter.predict({"rgb": rgb})
    b = tiny_segmenter.predict({"rgb": rgb.astype(np.float32)})
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-6)


def test_prediction_matches_the_model_on_preprocessed_inputs(tiny_segmenter):
    inputs = {k: v for k, v in _inputs(64, 64).items() if k in ("rgb", "lidar")}
    pred = tiny_segmenter.predict(inputs)
    images, present, _ = tiny_segmenter.preprocess(inputs)
    assert present.tolist() == [[True, False, False, True]]
    rgb = torch.from_numpy(inputs["rgb"]).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(images[0, 0], (rgb - mean) / std)
    with torch.no_grad():
        logits = tiny_segmenter.model(images, present).logits
    np.testing.assert_array_equal(pred.labels, logits.argmax(1)[0].numpy().astype(np.uint8))


def test_at_the_model_size_labels_and_logits_are_those_of_the_previous_two_resize_path(tiny_segmenter):
    """Demo-like frames (sensor size = model size, every sensor): the old path took the model's logits at the
    model size and resized them again to the sensor size; the model now resizes once, straight to it."""
    inputs = _inputs(*tiny_segmenter.size, seed=5)
    prediction = tiny_segmenter.predict(inputs)
    images, present, size = tiny_segmenter.preprocess(inputs)
    with torch.inference_mode():
        at_model_size = tiny_segmenter.model(images, present).logits
        previous = F.interpolate(at_model_size, size=size, mode="bilinear", align_corners=False)
        logits = tiny_segmenter.run_model(tiny_segmenter.stage(inputs), size).logits
    torch.testing.assert_close(logits, previous, rtol=1e-5, atol=1e-6)
    probability, labels = torch.softmax(previous, dim=1).max(dim=1)
    np.testing.assert_array_equal(prediction.labels, labels[0].numpy().astype(np.uint8))
    np.testing.assert_allclose(prediction.confidence, probability[0].numpy(), rtol=1e-5, atol=1e-6)


def test_labels_come_from_the_logits_resized_once_to_the_size_asked_for(tiny_segmenter):
    inputs = _inputs(48, 64, seed=6)
    images, present, _ = tiny_segmenter.preprocess(inputs)
    with torch.inference_mode():
        logits = tiny_segmenter.model(images, present, output_size=(30, 40)).logits
    prediction = tiny_segmenter.predict(inputs, size=(30, 40))
    assert prediction.labels.shape == prediction.confidence.shape == (30, 40)
    np.testing.assert_array_equal(prediction.labels, logits.argmax(1)[0].numpy().astype(np.uint8))


def test_a_size_beyond_the_models_input_gets_model_size_labels_upsampled_nearest(tiny_segmenter):
    model_size = tiny_segmenter.size
    inputs = _inputs(*model_size, seed=7)
    at_model = tiny_segmenter.predict(inputs)
    big = (3 * model_size[0], 4 * model_size[1])
    upsampled = tiny_segmenter.predict(inputs, size=big)
    assert upsampled.labels.shape == upsampled.confidence.shape == big
    # every output pixel is a copy of the model-size pixel it lies in (nearest): no logits of 12x the pixels
    rows, cols = np.arange(big[0]) * model_size[0] // big[0], np.arange(big[1]) * model_size[1] // big[1]
    np.testing.assert_array_equal(upsampled.labels, at_model.labels[np.ix_(rows, cols)])
    np.testing.assert_array_equal(upsampled.confidence, at_model.confidence[np.ix_(rows, cols)])
    lean = tiny_segmenter.predict(inputs, size=big, confidence=False)
    assert lean.confidence is None
    np.testing.assert_array_equal(lean.labels, upsampled.labels)


@pytest.mark.parametrize("inputs, message", [
    ({}, "no modalities given"),
    ({"nir": np.zeros((8, 8), np.uint8)}, "unknown modality 'nir': this model takes"),
    ({"rgb": np.zeros((8, 8, 5), np.uint8)}, r"rgb: expected an HxW or HxWxC image with C in 1..4"),
    ({"rgb": np.zeros((8,), np.uint8)}, r"rgb: expected an HxW or HxWxC image"),
    ({"depth": np.zeros((8, 8), np.uint16)}, "depth: expected uint8 or float"),
    ({"rgb": np.zeros((8, 8, 3), np.uint8), "depth": np.zeros((9, 8), np.uint8)}, "depth: size 9x8 differs"),
    ({"rgb": [[0]]}, "rgb: expected a numpy array or torch tensor"),
    ({"lidar": torch.zeros((8, 8, 3), dtype=torch.int32)}, "lidar: expected uint8 or float"),
    ({"rgb": torch.zeros((8, 8, 6), dtype=torch.uint8)}, r"rgb: expected an HxW or HxWxC image with C in 1..4"),
])
def test_bad_inputs_raise_value_errors_naming_the_problem(tiny_segmenter, inputs, message):
    with pytest.raises(ValueError, match=message):
        tiny_segmenter.predict(inputs)


def test_no_checkpoint_without_allow_random_init_says_where_to_get_one(tiny_model_config_path):
    with pytest.raises(CheckpointError, match=r"dl.fbaipublicfiles.com/segment_anything_2/092824/"
                                              r"sam2.1_hiera_base_plus.pt.*allow_random_init=True"):
        Segmenter.from_files(tiny_model_config_path)


def test_from_files_loads_adapters_and_bf16_runs_on_cpu(tmp_path):
    torch.manual_seed(3)
    model = build_model(tiny_config())
    path = save_adapters(model, tmp_path / "a.safetensors")
    torch.manual_seed(4)
    segmenter = Segmenter.from_files(tiny_config(), adapters=path, allow_random_init=True)
    torch.testing.assert_close(segmenter.model.mask_head.class_tokens.weight, model.mask_head.class_tokens.weight)
    bf16 = Segmenter(segmenter.model, precision="bf16").predict({"rgb": _inputs()["rgb"]})
    assert bf16.labels.shape == (50, 70) and np.isfinite(bf16.confidence).all()
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Segmenter(segmenter.model, precision="fp16")


def test_segmenter_carries_the_configs_class_table(tiny_segmenter):
    assert tiny_segmenter.class_table.dataset == "deliver"
    assert tiny_segmenter.class_table.num_classes == tiny_segmenter.config.num_classes == 25


def test_class_table_and_class_count_must_agree():
    from mlesam_core.config_io import ConfigError

    with pytest.raises(ConfigError, match="num_classes: 25 does not match the 19 classes of class table 'muses'"):
        tiny_config("classes=muses")
    custom = tiny_config("classes=null", "num_classes=7")
    assert custom.classes is None  # a user's own label set: no table, the ROS node then asks for one


def test_inference_options_are_checked_and_named(tiny_segmenter):
    from mlesam_core.config_io import ConfigError

    with pytest.raises(TypeError, match="options: expected InferenceOptions or None, got str 'cuda'"):
        Segmenter(tiny_segmenter.model, "cuda")
    with pytest.raises(ValueError, match="unknown inference option 'devcie'"):
        Segmenter(tiny_segmenter.model, devcie="cpu")
    with pytest.raises(ConfigError, match="precision: must be one of fp32, bf16, fp16"):
        Segmenter(tiny_segmenter.model, precision="fp64")
    with pytest.raises(ConfigError, match="device: expected cpu, cuda, cuda:N"):
        Segmenter(tiny_segmenter.model, device="gpu0")
