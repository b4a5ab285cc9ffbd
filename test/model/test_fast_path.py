"""The Segmenter's fast inference path computes the same function as the straightforward reference path.

Reference: `to_three_channels` on the host, a fresh zero batch, per-modality float upload, resize, normalise,
`model(images, present)` without the host-side modality list. Fast: native channels uploaded in their own dtype
into reused buffers, mapped/resized/normalised on the device, one download. Plus LoRA merge, torch.compile and
CUDA graphs, each with its fallback.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures.model import TINY_SIZE, random_batch, randomize_lora, tiny_config
from torch.overrides import TorchFunctionMode

from mlesam_core import Prediction, Segmenter
from mlesam_core.data.base import resize_label
from mlesam_core.modalities import get_modality, to_three_channels
from mlesam_core.model import build_model
from mlesam_core.predictor import RoutingWeights
from mlesam_core.preprocess import beyond_model_size, normalization

MODALITIES = ("rgb", "depth", "event", "lidar")
SIZES = [(TINY_SIZE, TINY_SIZE), (50, 70), (97, 130)]  # model size (no resize), smaller, larger


def reference_preprocess(segmenter: Segmenter, inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward preprocessing: host channel mapping, float upload, resize, normalise, fresh zeros."""
    m = len(segmenter.modalities)
    images = torch.zeros((1, m, 3, *segmenter.size))
    present = torch.zeros((1, m), dtype=torch.bool)
    mean, std = normalization(segmenter.modalities)
    for name, array in inputs.items():
        index = segmenter.modalities.index(name)
        x = torch.from_numpy(np.ascontiguousarray(to_three_channels(array, name))).permute(2, 0, 1)[None].float()
        if x.shape[-2:] != segmenter.size:
            mode = "nearest" if get_modality(name).kind == "sparse" else "bilinear"
            x = F.interpolate(x, size=segmenter.size, mode=mode,
                              **({"align_corners": False} if mode == "bilinear" else {}))
        images[0, index] = (x[0] / 255.0 - mean[index]) / std[index]
        present[0, index] = True
    return images, present


@torch.no_grad()
def reference_predict(segmenter: Segmenter, inputs: dict[str, np.ndarray]) -> Prediction:
    """The model called on the reference preprocessing; labels, confidence, routing as the predictor defines: the
    model's logits at the sensor size (one resize), or at the model size with the labels upsampled (nearest) for a
    sensor larger than the model's input."""
    images, present = reference_preprocess(segmenter, inputs)
    size = next(iter(inputs.values())).shape[:2]
    logits_size = segmenter.size if beyond_model_size(size, segmenter.size) else size
    output = segmenter.model(images, present, output_size=logits_size)
    confidence, labels = torch.softmax(output.logits.float(), dim=1).max(dim=1)
    labels, confidence = labels[0].to(torch.uint8).numpy(), confidence[0].numpy()
    if logits_size != size:
        labels, confidence = resize_label(labels, size), resize_label(confidence, size)
    routing = RoutingWeights(output.routing.weights[0].numpy(), output.routing.levels, output.routing.modalities)
    return Prediction(labels, confidence, routing)


def sensor_inputs(h: int, w: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Every dtype and channel count the predictor takes: uint8 RGBA, float32 HxW, uint8 2-channel sparse event,
    float64 sparse LiDAR."""
    rng = np.random.default_rng(seed)
    return {
        "rgb": rng.integers(0, 256, (h, w, 4), dtype=np.uint8),
        "depth": rng.uniform(0, 255, (h, w)).astype(np.float32),
        "event": rng.integers(0, 3, (h, w, 2), dtype=np.uint8) * 100,
        "lidar": (rng.uniform(0, 255, (h, w, 3)) * (rng.uniform(size=(h, w, 1)) > 0.9)).astype(np.float64),
    }


def assert_same_prediction(fast: Prediction, reference: Prediction) -> None:
    np.testing.assert_array_equal(fast.labels, reference.labels)
    assert fast.labels.dtype == np.uint8 and fast.confidence.dtype == np.float32
    np.testing.assert_allclose(fast.confidence, reference.confidence, rtol=1e-5, atol=1e-6)
    assert (fast.routing.levels, fast.routing.modalities) == (reference.routing.levels, reference.routing.modalities)
    np.testing.assert_allclose(fast.routing.weights, reference.routing.weights, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def model():
    """The tiny four-modality model with non-zero, distinct LoRA experts (so the modality routing matters)."""
    torch.manual_seed(0)
    model = build_model(tiny_config())
    randomize_lora(model, seed=1)
    return model.eval()


@pytest.fixture(scope="module")
def single_modality_model():
    """The tiny model configured for RGB alone, non-zero LoRA experts."""
    torch.manual_seed(0)
    model = build_model(tiny_config("modalities=[rgb]"))
    randomize_lora(model, seed=2)
    return model.eval()


# ------------------------------------------------------------------------------------------------ preprocessing
@pytest.mark.parametrize("size", SIZES)
def test_fast_preprocessing_equals_the_reference_for_every_dtype_channel_count_and_subset(model, size):
    segmenter = Segmenter(model)
    full = sensor_inputs(*size)
    variants = [  # (modality, array): grey, RGB and float RGB cameras besides the RGBA one above
        ("rgb", full["rgb"][:, :, 0]), ("rgb", full["rgb"][:, :, :3]), ("rgb", full["rgb"][:, :, :3] * 0.5),
        ("depth", full["depth"][:, :, None].astype(np.float64)), ("event", full["event"][:, :, :1]),
    ]
    subsets = [[name] for name in MODALITIES] + [["depth", "lidar"], list(MODALITIES)]
    cases = [{name: full[name] for name in subset} for subset in subsets]
    cases += [{name: array, "lidar": full["lidar"]} for name, array in variants]
    for inputs in cases:
        images, present, input_size = segmenter.preprocess(inputs)
        expected_images, expected_present = reference_preprocess(segmenter, inputs)
        assert input_size == size
        torch.testing.assert_close(present, expected_present, rtol=0, atol=0)
        torch.testing.assert_close(images, expected_images, rtol=0, atol=0,
                                   msg=lambda m, inputs=inputs: f"{list(inputs)}: {m}")


def test_preprocess_returns_tensors_the_caller_owns(model):
    segmenter = Segmenter(model)
    first, _, _ = segmenter.preprocess({"rgb": sensor_inputs(50, 70)["rgb"]})
    kept = first.clone()
    segmenter.predict({"rgb": sensor_inputs(50, 70, seed=1)["rgb"]})
    torch.testing.assert_close(first, kept, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- predict
@pytest.mark.parametrize("subset", [["rgb"], ["event"], ["depth", "lidar"], list(MODALITIES)])
def test_fast_predict_equals_the_reference_model_call(model, subset):
    segmenter = Segmenter(model)
    inputs = {name: sensor_inputs(50, 70, seed=3)[name] for name in subset}
    assert_same_prediction(segmenter.predict(inputs), reference_predict(segmenter, inputs))


def test_repeated_calls_with_changing_subsets_and_sizes_match_fresh_segmenters(model):
    reused = Segmenter(model)
    buffer = reused._images.data_ptr()
    calls = [  # a modality present in one call and absent in the next must leave no trace
        {name: sensor_inputs(50, 70, seed=4)[name] for name in MODALITIES},
        {"rgb": sensor_inputs(TINY_SIZE, TINY_SIZE, seed=5)["rgb"]},
        {name: sensor_inputs(97, 130, seed=6)[name] for name in ("depth", "lidar")},
        {name: sensor_inputs(50, 70, seed=7)[name] for name in ("rgb", "event")},
        {"event": sensor_inputs(50, 70, seed=8)["event"][:, :, :1]},
        {"rgb": sensor_inputs(TINY_SIZE, TINY_SIZE, seed=5)["rgb"]},
    ]
    for inputs in calls:
        assert_same_prediction(reused.predict(inputs), Segmenter(model).predict(inputs))
        images, _, _ = reused.preprocess(inputs)
        absent = [i for i, name in enumerate(MODALITIES) if name not in inputs]
        assert not images[0, absent].any(), f"{list(inputs)}: stale content in absent slots"
    assert reused._images.data_ptr() == buffer  # one input buffer for every call


def test_predict_reads_device_values_on_the_host_once(model):
    class HostReads(TorchFunctionMode):
        """Counts the tensor methods that copy device values to the host (each a sync on a GPU)."""

        NAMES = {"cpu", "tolist", "item", "__bool__", "__int__", "__float__", "nonzero"}

        def __init__(self) -> None:
            super().__init__()
            self.calls: Counter = Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in self.NAMES:
                self.calls[name] += 1
            return func(*args, **(kwargs or {}))

    segmenter = Segmenter(model)
    inputs = {name: sensor_inputs(50, 70)[name] for name in ("rgb", "lidar")}
    segmenter.predict(inputs)
    with HostReads() as reads:
        segmenter.predict(inputs)
    assert reads.calls == {"cpu": 1}


# ------------------------------------------------------------------------------------------------- LoRA merge
def count_lora_matmuls(run) -> int:
    """How many bmm / baddbmm calls `run()` makes (the LoRA wrappers' only kind of matmul)."""
    class Count(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.count += getattr(func, "__name__", "") in ("bmm", "baddbmm", "baddbmm_")
            return func(*args, **(kwargs or {}))

    with Count() as counter:
        run()
    return counter.count


@torch.no_grad()
def test_merged_expert_gives_the_unmerged_features_and_logits_and_no_lora_matmul(single_modality_model):
    model = copy.deepcopy(single_modality_model)
    images, present = random_batch(model.config, batch=2, seed=5)
    features = model.encode(images, present)
    logits = model(images, present).logits
    unmerged_matmuls = count_lora_matmuls(lambda: model(images, present))
    weights = [layer.base_layer.weight.clone() for layer in model.lora_layers]

    model.merge_lora("rgb")
    assert model.merged_modality == "rgb" and all(layer.merged == 0 for layer in model.lora_layers)
    for merged, unmerged in zip(model.encode(images, present), features, strict=True):
        torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model(images, present).logits, logits, rtol=1e-4, atol=1e-5)
    assert unmerged_matmuls == 3 * len(model.lora_layers)
    assert count_lora_matmuls(lambda: model(images, present)) == 0

    model.unmerge_lora()
    assert model.merged_modality is None
    for layer, weight in zip(model.lora_layers, weights, strict=True):
        torch.testing.assert_close(layer.base_layer.weight, weight, rtol=0, atol=0)
    torch.testing.assert_close(model(images, present).logits, logits, rtol=0, atol=0)


@torch.no_grad()
def test_merging_one_expert_of_a_multi_modal_model_equals_that_modality_alone(model):
    model = copy.deepcopy(model)
    images, _ = random_batch(model.config, batch=1, seed=6)
    depth_only = torch.tensor([[False, True, False, False]])
    expected = model(images, depth_only).logits
    model.merge_lora("depth")
    torch.testing.assert_close(model(images, depth_only).logits, expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_merged_model_refuses_training_other_modalities_and_a_second_merge(model):
    model = copy.deepcopy(model)
    images, present = random_batch(model.config, batch=1)
    with pytest.raises(ValueError, match="merge_lora: unknown modality 'nir'"):
        model.merge_lora("nir")
    model.train()
    with pytest.raises(ValueError, match="merge_lora: the model is in training mode"):
        model.merge_lora("rgb")
    model.eval()
    model.merge_lora("rgb")
    with pytest.raises(ValueError, match="'rgb' expert is already merged"):
        model.merge_lora("depth")
    with pytest.raises(ValueError, match=r"'rgb' LoRA expert is merged .* but \['depth', 'event', 'lidar'\] are "
                                         r"present too"):
        model(images, present)
    model.train()
    with pytest.raises(ValueError, match="a merged model cannot train; call unmerge_lora"):
        model(images, present)
    model.unmerge_lora()
    model(images, present)  # unmerged, training works again


def test_segmenter_merge_lora_predicts_as_unmerged_and_needs_a_single_modality_config(single_modality_model, model):
    inputs = {"rgb": sensor_inputs(50, 70, seed=9)["rgb"]}
    merged = Segmenter(copy.deepcopy(single_modality_model), merge_lora=True)
    assert merged.model.merged_modality == "rgb"
    fast, reference = merged.predict(inputs), Segmenter(single_modality_model).predict(inputs)
    np.testing.assert_array_equal(fast.labels, reference.labels)
    np.testing.assert_allclose(fast.confidence, reference.confidence, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"merge_lora: needs a model config with exactly one modality, this one "
                                         r"has \['rgb', 'depth', 'event', 'lidar'\]"):
        Segmenter(model, merge_lora=True)
    with pytest.raises(ValueError, match="exactly one modality"):
        Segmenter.from_files(tiny_config(), allow_random_init=True, merge_lora=True)


# --------------------------------------------------------------------------------- compile and CUDA graphs
def test_cuda_graphs_on_a_cpu_warn_and_run_eagerly(model, caplog):
    with caplog.at_level(logging.WARNING, logger="mlesam_core.predictor"):
        segmenter = Segmenter(model, cuda_graphs=True)
    assert "cuda_graphs: needs a CUDA device" in caplog.text and segmenter.cuda_graphs is False
    inputs = {name: sensor_inputs(50, 70)[name] for name in ("rgb", "depth")}
    assert_same_prediction(segmenter.predict(inputs), reference_predict(segmenter, inputs))


@pytest.mark.parametrize("where", ["setup", "first call"])
def test_compile_failure_falls_back_to_eager_with_a_warning(model, caplog, monkeypatch, where):
    def unavailable(*args, **kwargs):
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setattr(torch, "compile", unavailable if where == "setup" else lambda module, **kw: unavailable)
    inputs = {name: sensor_inputs(50, 70)[name] for name in ("rgb", "event")}
    with caplog.at_level(logging.WARNING, logger="mlesam_core.predictor"):
        segmenter = Segmenter(model, compile=True)
        prediction = segmenter.predict(inputs)
    assert "compile: torch.compile is unavailable here (RuntimeError: no working C++ compiler)" in caplog.text
    assert segmenter.compile is False
    assert_same_prediction(prediction, reference_predict(segmenter, inputs))


def test_compiled_forward_matches_eager_for_every_subset_it_sees(model, monkeypatch):
    # Inductor's C++ build of the tiny model takes ~90 s on a 2-core CPU, so the suite lets dynamo capture the
    # whole forward and runs the captured graph with the eager backend: same guards, recompiles and plumbing.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    segmenter = Segmenter(model, compile=True)
    for subset in (["rgb", "depth"], ["lidar"], ["rgb", "depth"]):
        inputs = {name: sensor_inputs(50, 70, seed=10)[name] for name in subset}
        assert_same_prediction(segmenter.predict(inputs), reference_predict(segmenter, inputs))
    assert segmenter.compile is True


@pytest.mark.parametrize("size", [(50, 70), (33, 17), (128, 128)])
def test_channels_last_post_processing_computes_the_definition(size):
    from mlesam_core.predictor import labels_and_confidence

    logits = torch.randn(1, 25, 16, 12, generator=torch.Generator().manual_seed(size[0])) * 4
    upsampled = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    expected_confidence, expected_labels = torch.softmax(upsampled, dim=1).max(dim=1)  # the definition
    labels, confidence = labels_and_confidence(logits, size, True)
    lean_labels, none = labels_and_confidence(logits, size, False)
    assert labels.shape == (1, *size) and none is None
    torch.testing.assert_close(labels, expected_labels, rtol=0, atol=0)
    torch.testing.assert_close(confidence, expected_confidence, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lean_labels, labels, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_fast_path_with_graphs_matches_eager_across_changing_subsets(model, precision):
    eager = Segmenter(copy.deepcopy(model), device="cuda", precision=precision)
    graphs = Segmenter(copy.deepcopy(model), device="cuda", precision=precision, cuda_graphs=True)
    for seed, subset in enumerate((list(MODALITIES), ["rgb"], ["depth", "lidar"], list(MODALITIES), ["rgb"])):
        inputs = {name: sensor_inputs(50 + seed, 70, seed=seed)[name] for name in subset}
        expected, fast = eager.predict(inputs), graphs.predict(inputs)
        assert graphs.cuda_graphs is True
        assert (fast.labels == expected.labels).mean() > 0.999
        np.testing.assert_allclose(fast.confidence, expected.confidence, rtol=1e-3, atol=1e-3)
    assert len(graphs._graphs) == 3  # one capture per modality subset, replayed when it comes back


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hha_left_on_the_gpu_predicts_what_the_cpu_hha_predicts(model):
    from mlesam_core.sensors import depth_to_hha, depth_to_hha_on

    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 60.0, (60, 80)).astype(np.float32)
    K = np.array([[60.0, 0, 40], [0, 60.0, 30], [0, 0, 1]])
    segmenter = Segmenter(model, device="cuda")
    rgb = sensor_inputs(60, 80)["rgb"]
    on_gpu = depth_to_hha_on(depth, K, "cuda")
    assert on_gpu.device.type == "cuda"
    fast = segmenter.predict({"rgb": rgb, "depth": on_gpu})
    expected = segmenter.predict({"rgb": rgb, "depth": depth_to_hha(depth, K)})
    assert (fast.labels == expected.labels).mean() > 0.999  # HHA may differ by one level where rounding ties
    np.testing.assert_allclose(fast.confidence, expected.confidence, rtol=1e-3, atol=1e-3)


def test_decoder_positional_encoding_follows_loaded_weights_and_stays_float32_under_autocast():
    decoder = build_model(tiny_config()).eval().sam_decoder
    with torch.inference_mode():
        first = decoder.dense_pe(8, 8, torch.device("cpu"))
    torch.testing.assert_close(first, decoder.pe_layer((8, 8)), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert decoder.dense_pe(8, 8, torch.device("cpu")).dtype == torch.float32
    matrix = decoder.pe_layer.positional_encoding_gaussian_matrix
    with torch.no_grad():
        matrix.copy_(torch.randn_like(matrix))  # as loading a checkpoint does
    second = decoder.dense_pe(8, 8, torch.device("cpu"))
    assert not torch.equal(second, first)
    torch.testing.assert_close(second, decoder.pe_layer((8, 8)), rtol=0, atol=0)
