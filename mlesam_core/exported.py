"""Exported graphs: the model as one static ONNX graph per sensor subset (`python -m training.export`), the
manifest that describes them, its checks against the model a node is configured for, and `ExportedSegmenter`,
which runs them under onnxruntime behind the `Segmenter`'s interface.

An export folder holds `manifest.json` and one `<subset>.onnx` per exported subset (e.g. `rgb+depth.onnx`). Each
graph takes one float32 input [1, 3, H, W] per modality of its subset, named by the modality and preprocessed
exactly as the `Segmenter` does (`mlesam_core.preprocess`: resize to H x W, channels mapped to 3, value/255, the
modality's mean and std), and returns `logits` [1, C, H, W] (the model's class logits) and `routing` [L, M] (the
modality weights of each fusion level, absent modalities 0). Labels and confidence are computed outside the
graph, at the sensor's size, by the same code as the torch backend.

The manifest records the model config, the adapters' sha256, the frozen backbone, the size, opset, exporter and
library versions, and per graph its file's sha256 and the parity figures the export measured against the eager
model (with its LoRA experts, and with them zeroed: a graph that lost the experts is refused at export).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mlesam_core.config_io import ConfigError, from_dict, to_dict
from mlesam_core.evaluation import subset_name
from mlesam_core.inference_options import InferenceOptions
from mlesam_core.model.backbone_id import file_sha256
from mlesam_core.model.base import SegmentationOutput
from mlesam_core.model.config import MLESAMConfig, config_differences
from mlesam_core.model.router import Routing
from mlesam_core.predictor import Segmenter, StagedInput, _options

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mlesam-onnx/1"
OUTPUT_NAMES = ("logits", "routing")
INPUT_DESCRIPTION = ("one float32 input [1, 3, H, W] per modality of the subset, named by the modality: the sensor "
                     "image resized to H x W (bilinear; nearest for sparse modalities), channels mapped to 3, "
                     "value / 255, then (value - mean) / std per channel (mlesam_core.preprocess)")
OUTPUT_DESCRIPTION = ("logits float32 [1, C, H, W] (class logits; labels = argmax over C); routing float32 [L, M] "
                      "(modality weights per fusion level, levels as routing_levels, modalities in config order)")
TENSORRT = "TensorrtExecutionProvider"
TENSORRT_CACHE_FOLDER = "tensorrt_cache"


@dataclass
class Parity:
    """A graph against the eager model on one seeded input: with the LoRA experts, and with every LoRA B zeroed."""

    seed: int
    max_abs_diff: float  # graph logits vs eager logits
    argmax_agreement: float  # fraction of pixels with the same class
    without_experts_max_abs_diff: float  # graph vs the eager model with its LoRA experts zeroed
    without_experts_argmax_agreement: float


@dataclass
class GraphRecord:
    """One exported subset graph."""

    subset: tuple[str, ...]
    file: str
    sha256: str
    parity: Parity


@dataclass
class ExportManifest:
    """`manifest.json` of an export folder."""

    format: str
    model_config: dict[str, Any]
    adapters_sha256: str  # of the adapter file's bytes
    backbone: str  # the frozen SAM2 weights' identity (`model.backbone_id`)
    size: tuple[int, int]  # (H, W) of every graph's inputs and logits
    opset: int
    exporter: str
    versions: dict[str, str]
    inputs: str
    outputs: str
    normalization: dict[str, dict[str, tuple[float, ...]]]  # modality -> {mean: (3), std: (3)} on value/255
    routing_levels: tuple[str, ...]
    graphs: tuple[GraphRecord, ...] = field(default_factory=tuple)

    def config(self) -> MLESAMConfig:
        """The model config the graphs were exported from."""
        return from_dict(MLESAMConfig, self.model_config, key="model_config")

    def graph(self, subset: Sequence[str]) -> GraphRecord | None:
        """The graph of `subset` (config order), None when it was not exported."""
        return next((g for g in self.graphs if g.subset == tuple(subset)), None)


def graph_file_name(subset: Sequence[str]) -> str:
    """The file name of a subset's graph, e.g. `rgb+depth.onnx`."""
    return f"{subset_name(subset)}.onnx"


def write_manifest(manifest: ExportManifest, directory: str | Path) -> Path:
    """Write `manifest.json` into `directory`."""
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(to_dict(manifest), indent=2) + "\n")
    return path


def read_manifest(directory: str | Path) -> ExportManifest:
    """The manifest of an export folder, validated (ConfigError naming the file and key)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: no manifest (an export folder is written by python -m training.export)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON manifest ({exc})") from None
    manifest = from_dict(ExportManifest, data, source=str(path))
    if manifest.format != MANIFEST_FORMAT:
        raise ConfigError(f"{path}: format: {manifest.format!r}, expected {MANIFEST_FORMAT!r}")
    try:
        manifest.config()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return manifest


def check_manifest(manifest: ExportManifest, directory: str | Path, config: MLESAMConfig | None = None,
                   subsets: Sequence[Sequence[str]] = (), adapters: str | Path | None = None) -> None:
    """ConfigError naming the first mismatch between an export folder and what it is to run: the model `config`
    (every key that changes the model, and the size: the graphs are static), the `subsets` the caller will meet
    (each needs its graph), the `adapters` file (same sha256), and the graph files (present, unchanged)."""
    where = Path(directory) / MANIFEST_NAME
    exported = manifest.config()
    if config is not None:
        differences = config_differences(config, exported)
        if differences:
            raise ConfigError(f"{where}: exported from another model config: " + "; ".join(differences))
        size = (config.image_size, config.image_size)
        if tuple(manifest.size) != size:
            raise ConfigError(f"{where}: size: the graphs take {manifest.size[0]}x{manifest.size[1]}, the model "
                              f"config's image_size is {config.image_size} (export with --size {size[0]} {size[1]})")
    for subset in subsets:
        unknown = [m for m in subset if m not in exported.modalities]
        if unknown:
            raise ConfigError(f"{where}: modalities: the exported model has no {unknown[0]!r} expert (its "
                              f"modalities: {', '.join(exported.modalities)})")
    ordered = [tuple(m for m in exported.modalities if m in subset) for subset in subsets]  # graphs: config order
    missing = [subset_name(s) for s in ordered if manifest.graph(s) is None]
    if missing:
        raise ConfigError(f"{where}: subsets: no graph for {', '.join(missing)} (exported: "
                          f"{', '.join(subset_name(g.subset) for g in manifest.graphs)}); export them with "
                          f"--subsets all or --subsets {','.join(missing)}")
    if adapters is not None:
        digest = file_sha256(adapters)
        if digest != manifest.adapters_sha256:
            raise ConfigError(f"{where}: adapters: exported from adapters with sha256 {manifest.adapters_sha256[:16]}"
                              f"..., {adapters} has {digest[:16]}...")
    for record in manifest.graphs:
        path = Path(directory) / record.file
        if not path.is_file():
            raise ConfigError(f"{where}: graph {record.file} of {subset_name(record.subset)} is missing")
        if file_sha256(path) != record.sha256:
            raise ConfigError(f"{where}: graph {record.file} changed after the export (sha256 differs from the "
                              f"manifest's)")


def session_options(threads: int) -> onnxruntime.SessionOptions:
    """Session options for a node on a small shared CPU: `threads` intra-op threads (0: onnxruntime's default),
    no inter-op pool, and no spinning: idle pool threads sleep instead of holding the cores other processes
    (the executor, DDS, other nodes) need."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the CPU provider's per-node placement notes are not problems
    return options


def execution_providers(options: InferenceOptions, directory: str | Path,
                        available: Sequence[str] | None = None) -> list[str | tuple[str, dict[str, Any]]]:
    """`options.providers` that this onnxruntime has (the others skipped with a warning), TensorRT with its
    options (engine and timing cache, fp16); ConfigError naming `providers` when none is available."""
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    for provider in options.providers:
        if provider not in available:
            log.warning("providers: %s is not available in this onnxruntime (available: %s): skipped", provider,
                        ", ".join(available))
        elif provider == TENSORRT:
            cache = options.tensorrt_cache or str(Path(directory) / TENSORRT_CACHE_FOLDER)
            chosen.append((provider, {"trt_fp16_enable": options.tensorrt_fp16, "trt_engine_cache_enable": True,
                                      "trt_engine_cache_path": cache, "trt_timing_cache_enable": True,
                                      "trt_timing_cache_path": cache}))
        else:
            chosen.append(provider)
    if not chosen:
        raise ConfigError(f"providers: none of {', '.join(options.providers)} is available in this onnxruntime "
                          f"(available: {', '.join(available)})")
    return chosen


class ExportedSegmenter(Segmenter):
    """The `Segmenter`'s interface (predict, stage, run_model, warm_up) on exported graphs under onnxruntime: the
    same preprocessing into the same input buffer (on the CPU), one onnxruntime session per sensor subset
    (created on the subset's first run: `warm_up` creates them all before the first frame), and the same
    labels, confidence and routing from the graph's outputs. `run_model` gives the graph's logits; the graph has
    no separate pathway outputs, so `sam_logits` holds those logits too and `aux_logits` is None."""

    def __init__(self, directory: str | Path, manifest: ExportManifest, options: InferenceOptions | None = None,
                 **option_overrides: Any) -> None:
        """Run the graphs of `directory` (its `manifest`, checked by `from_dir`) with `options.providers` and
        `options.threads` intra-op threads."""
        options = _options(options, option_overrides)
        self.options = options
        self.device = torch.device("cpu")  # the input buffer; the providers place the graph
        options.apply_threads()  # preprocessing and labels run in torch on the calling thread
        self.precision = "fp32"
        self.directory = Path(directory)
        self.manifest = manifest
        self._init_inputs(manifest.config(), (int(manifest.size[0]), int(manifest.size[1])))
        self.providers = execution_providers(options, directory)
        self._session_options = session_options(options.threads)
        self._sessions: dict[tuple[int, ...], onnxruntime.InferenceSession] = {}
        self.compile = self.cuda_graphs = False
        log.info("exported graphs %s under onnxruntime (%s), %d intra-op threads", self.directory,
                 ", ".join(p if isinstance(p, str) else p[0] for p in self.providers), options.threads)

    @classmethod
    def from_dir(cls, directory: str | Path, options: InferenceOptions | None = None,
                 config: MLESAMConfig | None = None, subsets: Sequence[Sequence[str]] = (),
                 adapters: str | Path | None = None, **option_overrides: Any) -> ExportedSegmenter:
        """The graphs of an export folder, checked (`check_manifest`) against the model `config`, the `subsets`
        the caller meets and the `adapters` file, where given."""
        manifest = read_manifest(directory)
        check_manifest(manifest, directory, config, subsets, adapters)
        return cls(directory, manifest, options, **option_overrides)

    def _session(self, ids: tuple[int, ...]) -> onnxruntime.InferenceSession:
        session = self._sessions.get(ids)
        if session is None:
            import onnxruntime

            subset = tuple(self.modalities[i] for i in ids)
            record = self.manifest.graph(subset)
            if record is None:
                raise ValueError(f"no exported graph for {subset_name(subset)} in {self.directory} (exported: "
                                 f"{', '.join(subset_name(g.subset) for g in self.manifest.graphs)})")
            session = self._sessions[ids] = onnxruntime.InferenceSession(
                str(self.directory / record.file), sess_options=self._session_options, providers=self.providers)
        return session

    def _run(self, staged: StagedInput, output_size: tuple[int, int]) -> SegmentationOutput:
        # the graph's logits have its fixed size; `labels_and_confidence` resizes them to `output_size`, once
        feeds = {self.modalities[i]: self._images[0, i:i + 1].numpy() for i in staged.ids}
        logits, routing = self._session(staged.ids).run(list(OUTPUT_NAMES), feeds)
        logits = torch.from_numpy(logits)
        weights = torch.from_numpy(routing)[None]  # [1, L, M]
        return SegmentationOutput(logits=logits, sam_logits=logits, aux_logits=None,
                                  routing=Routing(weights, tuple(self.manifest.routing_levels), self.modalities))


__all__ = ["ExportManifest", "GraphRecord", "Parity", "ExportedSegmenter", "MANIFEST_NAME", "MANIFEST_FORMAT",
           "OUTPUT_NAMES", "INPUT_DESCRIPTION", "OUTPUT_DESCRIPTION", "read_manifest", "write_manifest",
           "check_manifest", "graph_file_name", "session_options", "execution_providers"]
