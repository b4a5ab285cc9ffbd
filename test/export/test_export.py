"""The exported graphs (`python -m training.export`) and the onnxruntime backend: per-subset graphs equal to the
eager model with non-zero LoRA B, a graph without the experts refused, manifests that do not fit the node
refused naming the mismatch, and the replay on onnxruntime labelling a bag where a sensor drops out as eager."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures.model import TINY_CONFIG, TINY_SIZE, randomize_lora

from mlesam_core.config_io import ConfigError
from mlesam_core.exported import MANIFEST_NAME, ExportedSegmenter, execution_providers, read_manifest, session_options
from mlesam_core.inference_options import InferenceOptions
from mlesam_core.model import build_model, save_adapters
from mlesam_core.model.config import load_model_config
from mlesam_ros.bag_io import BagWriter, read_bag
from mlesam_ros.image_conversion import image_msg_to_array
from mlesam_ros.params import load_segment_config
from mlesam_ros.pipeline import load_segmenter
from mlesam_ros.replay import replay
from training.export import MIN_ARGMAX_AGREEMENT, PARITY_ATOL, ExportError, SubsetGraph, seeded_inputs, verify_graph
from training.export import main as export_main

EXPORTED = ("rgb", "depth", "rgb+depth", "rgb+depth+event+lidar")
CHECKED = ("rgb+depth+event+lidar", "rgb", "rgb+depth")  # the full set, RGB alone, a two-sensor subset
SIZE = (TINY_SIZE, TINY_SIZE)


def write_model_config(path: Path, **changes) -> Path:
    """The tiny model config at the test size, with top-level `changes`, as a YAML file."""
    data = yaml.safe_load(TINY_CONFIG.read_text())
    data.update({"image_size": TINY_SIZE, **changes})
    path.write_text(yaml.safe_dump(data))
    return path


def trained_adapters(config_path: Path, path: Path, seed: int = 0) -> Path:
    """Adapters of the tiny model on its random backbone with every LoRA B non-zero (experts that act)."""
    model = build_model(load_model_config(config_path))
    randomize_lora(model, seed=seed)
    return save_adapters(model, path)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """Export folder of four subset graphs of the tiny model (64x64), its model config and adapters."""
    root = tmp_path_factory.mktemp("export")
    config = write_model_config(root / "tiny.yaml")
    adapters = trained_adapters(config, root / "adapters.safetensors")
    out = root / "onnx"
    status = export_main(["--config", str(config), "--adapters", str(adapters), "--allow-random-init",
                          "--subsets", ",".join(EXPORTED), "--out", str(out)])
    assert status == 0
    return out, config, adapters


def eager_model(config: Path, adapters: Path):
    from mlesam_core.model import load_adapters

    model = build_model(load_model_config(config))
    load_adapters(model, adapters)
    return model.eval()


@pytest.mark.parametrize("subset", CHECKED)
def test_each_subset_graph_gives_the_eager_logits_with_the_lora_experts(export, subset):
    out, config, adapters = export
    manifest = read_manifest(out)
    names = tuple(subset.split("+"))
    record = manifest.graph(names)
    assert record is not None and (out / record.file).is_file()
    assert record.parity.argmax_agreement >= MIN_ARGMAX_AGREEMENT and record.parity.max_abs_diff <= PARITY_ATOL
    # an input the export never saw, through onnxruntime, against a freshly built eager model
    import onnxruntime

    model = eager_model(config, adapters)
    images = seeded_inputs(names, SIZE, seed=7)
    session = onnxruntime.InferenceSession(str(out / record.file), session_options(1),
                                           providers=["CPUExecutionProvider"])
    logits, routing = session.run(None, {m: x.numpy() for m, x in zip(names, images, strict=True)})
    with torch.inference_mode():
        eager_logits, eager_routing = (t.numpy() for t in SubsetGraph(model, names)(*images))
    max_diff = float(np.abs(logits - eager_logits).max())
    agreement = float((logits.argmax(1) == eager_logits.argmax(1)).mean())
    print(f"{subset}: max abs diff {max_diff:.2e}, argmax agreement {agreement:.4%}")
    assert agreement >= MIN_ARGMAX_AGREEMENT and max_diff <= PARITY_ATOL
    np.testing.assert_allclose(routing, eager_routing, atol=1e-5)
    assert routing.shape == (len(manifest.routing_levels), 4)
    assert np.all(routing[:, [i for i, m in enumerate(model.modalities) if m not in names]] == 0)
    # the experts matter on this output: the graph is far from the model without them
    assert record.parity.without_experts_argmax_agreement < 0.99


def test_the_manifest_describes_inputs_versions_and_the_adapters(export):
    out, config, adapters = export
    manifest = read_manifest(out)
    assert tuple(manifest.size) == SIZE and manifest.exporter == "torch.onnx.export(dynamo=True)"
    assert manifest.opset >= 18 and {"torch", "onnx", "onnxruntime", "onnxscript"} <= set(manifest.versions)
    assert manifest.normalization["rgb"]["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert manifest.config() == load_model_config(config)
    import hashlib

    assert manifest.adapters_sha256 == hashlib.sha256(adapters.read_bytes()).hexdigest()
    assert sorted("+".join(g.subset) for g in manifest.graphs) == sorted(EXPORTED)


def test_a_graph_that_lost_the_lora_experts_is_refused(export, tmp_path):
    out, config, adapters = export
    model = eager_model(config, adapters)
    # the legacy TorchScript exporter drops the in-place LoRA update into the qkv views: a graph without experts
    legacy = tmp_path / "legacy.onnx"
    with torch.no_grad():
        torch.onnx.export(SubsetGraph(model, ("rgb",)).eval(), seeded_inputs(("rgb",), SIZE, 0), str(legacy),
                          dynamo=False, input_names=["rgb"], output_names=["logits", "routing"])
    with pytest.raises(ExportError, match="WITHOUT its LoRA experts"):
        verify_graph(legacy, model, ("rgb",), SIZE)
    # and the dynamo graph of this subset passes the same check
    assert verify_graph(out / "rgb.onnx", model, ("rgb",), SIZE).argmax_agreement >= MIN_ARGMAX_AGREEMENT


def test_adapters_whose_experts_do_nothing_are_refused_with_exit_status_2(tmp_path, caplog):
    config = write_model_config(tmp_path / "tiny.yaml")
    untrained = save_adapters(build_model(load_model_config(config)), tmp_path / "untrained.safetensors")
    with caplog.at_level(logging.ERROR, logger="training.export"):
        status = export_main(["--config", str(config), "--adapters", str(untrained), "--allow-random-init",
                              "--subsets", "rgb", "--out", str(tmp_path / "out")])
    assert status == 2
    assert "LoRA experts change the logits by at most" in caplog.text
    assert not (tmp_path / "out" / "rgb.onnx").exists() and not (tmp_path / "out" / MANIFEST_NAME).exists()


@pytest.mark.parametrize(("arguments", "message"), [
    (["--subsets", "rgb,thermal"], "--subsets: 'thermal' is not a modality"),
    (["--subsets", "rgb,,depth"], "--subsets: empty subset"),
    (["--size", "60", "64"], "--size: 60 64: height and width must be positive multiples of 32"),
])
def test_bad_export_requests_exit_2_naming_the_option(export, tmp_path, caplog, arguments, message):
    _, config, adapters = export
    with caplog.at_level(logging.ERROR, logger="training.export"):
        status = export_main(["--config", str(config), "--adapters", str(adapters), "--allow-random-init",
                              "--out", str(tmp_path / "out"), *arguments])
    assert status == 2 and message in caplog.text


def test_a_missing_adapters_file_or_checkpoint_exits_2(export, tmp_path, caplog):
    _, config, adapters = export
    with caplog.at_level(logging.ERROR, logger="training.export"):
        assert export_main(["--config", str(config), "--adapters", str(tmp_path / "none.safetensors"),
                            "--allow-random-init", "--out", str(tmp_path / "out")]) == 2
        assert export_main(["--config", str(config), "--adapters", str(adapters), "--out", str(tmp_path)]) == 2
    assert "--adapters: file not found" in caplog.text and "--sam2-checkpoint:" in caplog.text


def node_config(out: Path, config: Path, *overrides: str):
    return load_segment_config(None, [f"model.config={config}", "classes=deliver", "model.backend=onnxruntime",
                                      f"model.onnx_dir={out}", "model.threads=1", "modalities=[rgb,depth]",
                                      "depth.encoding=depth", *overrides])


def test_the_onnxruntime_backend_builds_every_subset_before_the_first_frame(export, caplog):
    out, config, adapters = export
    with caplog.at_level(logging.INFO):
        segmenter = load_segmenter(node_config(out, config, f"model.adapters={adapters}"))
    assert isinstance(segmenter, ExportedSegmenter)
    assert set(segmenter._sessions) == {(0,), (1,), (0, 1)}  # rgb, depth, rgb+depth: every subset of the node's
    assert [r.getMessage().split(" in ")[0] for r in caplog.records if r.getMessage().startswith("warm-up")] == [
        "warm-up 1/3: rgb", "warm-up 2/3: depth", "warm-up 3/3: rgb+depth"]


def test_the_torch_backend_runs_every_subset_once_before_the_first_frame(export, caplog, monkeypatch):
    from mlesam_core.predictor import Segmenter

    _, config, adapters = export
    ran = []
    run = Segmenter._run
    monkeypatch.setattr(Segmenter, "_run", lambda self, staged, size: ran.append(staged.ids) or run(self, staged, size))
    with caplog.at_level(logging.INFO):
        load_segmenter(load_segment_config(None, [f"model.config={config}", "classes=deliver", "model.threads=1",
                                                  f"model.adapters={adapters}", "model.allow_random_init=true",
                                                  "modalities=[depth,rgb]", "depth.encoding=depth"]))
    assert sorted(ran) == [(0,), (0, 1), (1,)]
    assert sum(r.getMessage().startswith("warm-up ") for r in caplog.records) == 3


@pytest.mark.parametrize(("change", "message"), [
    ("fusion", "exported from another model config: fusion: 'avg+moe' (file) != 'avg' (model)"),
    ("size", "size: the graphs take 64x64, the model config's image_size is 128"),
    ("modalities", "subsets: no graph for event, rgb+event, depth+event, rgb+depth+event"),
    ("adapters", "adapters: exported from adapters with sha256"),
    ("graph", "graph rgb.onnx changed after the export"),
])
def test_an_export_that_does_not_fit_the_node_is_refused_naming_the_mismatch(export, tmp_path, change, message):
    out, config, adapters = export
    overrides = [f"model.adapters={adapters}"]
    if change == "fusion":
        config = write_model_config(tmp_path / "avg.yaml", fusion="avg")
    elif change == "size":
        config = write_model_config(tmp_path / "large.yaml", image_size=128)
    elif change == "modalities":
        overrides.append("modalities=[rgb,depth,event]")
    elif change == "adapters":
        overrides = [f"model.adapters={trained_adapters(config, tmp_path / 'other.safetensors', seed=1)}"]
    else:
        copy = tmp_path / "onnx"
        shutil.copytree(out, copy)
        with open(copy / "rgb.onnx", "r+b") as handle:
            handle.seek(-1, 2)
            last = handle.read(1)
            handle.seek(-1, 2)
            handle.write(bytes([last[0] ^ 1]))
        out = copy
    with pytest.raises(ConfigError, match="^model.onnx_dir: ") as error:
        load_segmenter(node_config(out, config, *overrides))
    assert message in str(error.value)


def test_a_manifest_of_another_format_or_no_manifest_is_refused(export, tmp_path):
    out, _, _ = export
    with pytest.raises(ConfigError, match="no manifest"):
        read_manifest(tmp_path)
    data = json.loads((out / MANIFEST_NAME).read_text())
    data["format"] = "mlesam-onnx/0"
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="format: 'mlesam-onnx/0'"):
        read_manifest(tmp_path)
    del data["size"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="size: required key is missing"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.backend=onnxruntime"], "model.onnx_dir: backend onnxruntime needs the export folder"),
    (["model.backend=onnxruntime", "model.onnx_dir=x", "model.compile=true"], "model.compile: True applies to the "
                                                                               "torch backend"),
    (["model.providers=[CudaProvider]"], "model.providers[0]: unknown onnxruntime execution provider"),
    (["model.tensorrt_fp16=true"], "model.tensorrt_fp16: needs TensorrtExecutionProvider"),
    (["model.backend=tensorrt"], "model.backend: must be one of 'torch', 'onnxruntime'"),
])
def test_backend_parameters_are_validated_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_segment_config(None, overrides)
    assert message in str(error.value)


def test_execution_providers_skip_missing_ones_and_give_tensorrt_its_cache_and_fp16(tmp_path, caplog):
    options = InferenceOptions(providers=("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                          "CPUExecutionProvider"), tensorrt_fp16=True)
    with caplog.at_level(logging.WARNING):
        chosen = execution_providers(options, tmp_path, available=["TensorrtExecutionProvider",
                                                                    "CPUExecutionProvider"])
    assert chosen[1] == "CPUExecutionProvider" and "CUDAExecutionProvider is not available" in caplog.text
    name, trt = chosen[0]
    assert name == "TensorrtExecutionProvider" and trt["trt_fp16_enable"] is True
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path / "tensorrt_cache")
    with pytest.raises(ConfigError, match="^providers: none of CUDAExecutionProvider is available"):
        execution_providers(InferenceOptions(providers=("CUDAExecutionProvider",)), tmp_path,
                            available=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------- replay
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000
FRAMES = 20
DEPTH_SILENT = range(6, 14)  # frames without a depth message: 0.8 s, beyond depth's stale_after (0.5 s)


def write_dropout_bag(path: Path, kit) -> Path:
    """RGB at 10 Hz and depth beside it, except for a stretch where the depth sensor drops out."""
    rng = np.random.default_rng(0)
    with BagWriter(path, "sqlite3") as writer:
        for i in range(FRAMES):
            stamp = START_NS + i * PERIOD_NS
            header = kit.header(stamp, "camera")
            if i not in DEPTH_SILENT:
                depth = rng.uniform(0.5, 40, (TINY_SIZE, TINY_SIZE)).astype(np.float32)
                writer.write("/depth/image_raw", stamp, kit.image(depth, "32FC1", header))
            rgb = rng.integers(0, 256, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
            writer.write("/camera/image_raw", stamp, kit.image(rgb, "rgb8", header))
    return path


def replayed_labels(bag: Path, out: Path, config) -> tuple[list[np.ndarray], list[tuple[str, ...]]]:
    replay(bag, out, config, load_segmenter(config))
    frames = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    labels = [image_msg_to_array(msg) for topic, _, msg in read_bag(out / "bag") if topic == "/mlesam/labels"]
    return labels, [tuple(f["used"]) for f in frames]


@pytest.mark.slow
def test_the_replay_on_onnxruntime_labels_a_bag_where_a_sensor_drops_out_as_eager(export, rosbags_kit, tmp_path):
    out, config, adapters = export
    bag = write_dropout_bag(tmp_path / "bag", rosbags_kit)
    onnx = node_config(out, config, f"model.adapters={adapters}")
    eager = load_segment_config(None, [f"model.config={config}", "classes=deliver", f"model.adapters={adapters}",
                                       "model.allow_random_init=true", "model.threads=1", "modalities=[rgb,depth]",
                                       "depth.encoding=depth"])
    onnx_labels, onnx_used = replayed_labels(bag, tmp_path / "onnx", onnx)
    eager_labels, eager_used = replayed_labels(bag, tmp_path / "eager", eager)
    assert onnx_used == eager_used and ("rgb",) in onnx_used and ("rgb", "depth") in onnx_used
    assert len(onnx_labels) == len(eager_labels) == FRAMES
    agreement = float(np.mean([np.mean(a == b) for a, b in zip(onnx_labels, eager_labels, strict=True)]))
    print(f"replay: {agreement:.4%} of pixels labelled as eager")
    assert agreement >= 0.995
