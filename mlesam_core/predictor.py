"""`Segmenter`: the one predictor used by evaluation, bag replay and the ROS node.

predict({modality: HxW or HxWxC array or tensor}) -> Prediction(labels HxW uint8, confidence HxW float32 (optional),
routing [levels, modalities] with their names).
Preprocessing per modality is `mlesam_core.preprocess` (resize to the model size, bilinear for dense modalities
and nearest for sparse ones, channel mapping, value/255 and the table's mean/std), the same code evaluation runs.
Any non-empty subset of the configured modalities; the absent ones are marked absent (the model skips them).

The hot path works in place: each modality's array is uploaded in its own dtype and channel count (through a
reused pinned buffer and a non-blocking copy on CUDA), mapped to 3 channels, resized and normalised on the device
straight into a preallocated model input [1, M, 3, S, S]; a torch tensor input (e.g. HHA computed on the GPU) is
taken where it is; the present mask of each modality subset is made once; the active modalities are known on the
host from the input dict; labels, confidence (optional) and routing are computed on the device and downloaded in
one copy, the call's only host sync. The logits are resized once, by the model, to the size the labels come back at
(`predict`'s `size`, default the inputs'); for a size far beyond the model's input (`beyond_model_size`) they stay at
the model's size and the labels (and confidence) are upsampled, nearest neighbour, after the download.
Options (`InferenceOptions`): bf16/fp16 autocast, `torch.compile` of the model, CUDA-graph replay per modality
subset (and output size), a merged LoRA expert for single-modality models, CPU threads; each optimisation falls
back to the eager model, with a warning, where it is unavailable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlesam_core.data.base import resize_label
from mlesam_core.data.classes import ClassTable, get_class_table
from mlesam_core.inference_options import InferenceOptions
from mlesam_core.modalities import ChannelSources, channel_sources
from mlesam_core.model import OFFICIAL_CHECKPOINT_URL, CheckpointError, build_model, load_adapters
from mlesam_core.model.base import LoRASam2Model, SegmentationOutput
from mlesam_core.model.config import MLESAMConfig, load_model_config
from mlesam_core.precision import autocast
from mlesam_core.preprocess import ModelInputTransform, beyond_model_size, check_image

log = logging.getLogger(__name__)

GRAPH_WARMUP_RUNS = 3  # eager runs on a side stream before a capture, as PyTorch's CUDA-graph notes do


@dataclass
class RoutingWeights:
    """One prediction's modality weights, as the model's `Routing` gives them: `weights[l, m]` is what fusion level
    `levels[l]` takes from modality `modalities[m]` (every modality of the model; absent ones 0)."""

    weights: np.ndarray  # [levels, modalities] float32
    levels: tuple[str, ...]
    modalities: tuple[str, ...]

    def as_dict(self) -> dict[str, dict[str, float]]:
        """{level: {modality: weight}} (for JSON records)."""
        return {level: dict(zip(self.modalities, row.tolist(), strict=True))
                for level, row in zip(self.levels, self.weights, strict=True)}


@dataclass
class Prediction:
    """One segmentation: class ids, the winning class's softmax probability, and the modality weights."""

    labels: np.ndarray  # HxW uint8 (the size asked for, default the inputs')
    confidence: np.ndarray | None  # HxW float32; None when predict was asked not to compute it
    routing: RoutingWeights


@dataclass
class StagedInput:
    """A sample written into the Segmenter's input buffer: which modalities are present, and the sensor size."""

    ids: tuple[int, ...]  # present modality ids (config order)
    present: torch.Tensor  # [1, M] bool on the device
    size: tuple[int, int]  # the inputs' (H, W)


@dataclass
class _UploadBuffers:
    """One modality's reused upload path on CUDA: pinned host staging, its device copy (HxWxC, one dtype), and
    an event marking the end of the last copy out of the staging buffer."""

    host: torch.Tensor
    device: torch.Tensor
    copied: torch.cuda.Event


@dataclass
class _CapturedForward:
    """A CUDA graph of the model's forward for one modality subset and the static output it writes."""

    graph: torch.cuda.CUDAGraph
    output: SegmentationOutput


class Segmenter:
    """Wraps a built model for single-sample inference on raw sensor images of any size (thread-safe: calls
    from several threads run one after another)."""

    def __init__(self, model: LoRASam2Model, options: InferenceOptions | None = None, **option_overrides: Any) -> None:
        """Run `model` as `options` say (default `InferenceOptions()`: CPU, fp32, eager); options may also be given
        by name (`Segmenter(model, device="cuda", precision="bf16")`). `merge_lora` changes `model` in place."""
        options = _options(options, option_overrides)
        if options.merge_lora:
            _check_single_modality(model.modalities)
        self.options = options
        self.device = options.torch_device()
        options.apply_threads()  # the calling thread's: construct the Segmenter on the thread that predicts
        self.precision = options.precision
        self.model = model.to(self.device).eval()
        if options.merge_lora:
            self.model.merge_lora(model.modalities[0])
        self._init_inputs(model.config, (model.config.image_size, model.config.image_size))
        self.compile = options.compile
        self._compiled: Callable[..., SegmentationOutput] | None = None
        if options.compile:
            try:
                self._compiled = torch.compile(self.model, dynamic=False)
            except Exception as exc:  # noqa: BLE001 -- any failure to set up compilation means eager
                self._no_compile(exc)
        self.cuda_graphs = options.cuda_graphs and self.device.type == "cuda"
        if options.cuda_graphs and not self.cuda_graphs:
            log.warning("cuda_graphs: needs a CUDA device, the model is on %s: running eagerly", self.device)
        self._graphs: dict[tuple[tuple[int, ...], tuple[int, int]], _CapturedForward] = {}  # (subset, output size)
        self._graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        log.info("Segmenter on %s (%s): compile %s, cuda_graphs %s, merged LoRA expert %s", self.device,
                 self.precision, self.compile, self.cuda_graphs, self.model.merged_modality)

    def _init_inputs(self, config: MLESAMConfig, size: tuple[int, int]) -> None:
        """The input side for `config` at the model input `size`: class table, input buffer, subset masks."""
        self.config: MLESAMConfig = config
        self.modalities = tuple(config.modalities)
        # names and colours of the labels (config key `classes`); None for a model of the user's own classes
        self.class_table: ClassTable | None = get_class_table(config.classes) if config.classes else None
        self.size = size
        self.transform = ModelInputTransform(self.modalities, self.size, self.device)
        self._lock = threading.Lock()  # one prediction at a time: the model's modality context is shared state
        with torch.inference_mode():  # written only under inference mode (predict, preprocess)
            self._images = torch.zeros((1, len(self.modalities), 3, *self.size), device=self.device)
        self._filled: set[int] = set()  # slots of `_images` holding the last call's data (the others are zero)
        self._present: dict[tuple[int, ...], torch.Tensor] = {}  # present mask [1, M] per modality subset
        self._uploads: dict[str, _UploadBuffers] = {}  # CUDA only: per modality, for its last input shape

    @classmethod
    def from_files(cls, config: MLESAMConfig | str | Path, sam2_checkpoint: str | Path | None = None,
                   adapters: str | Path | None = None, options: InferenceOptions | None = None,
                   allow_random_init: bool = False, verify_adapters: bool = True,
                   **option_overrides: Any) -> Segmenter:
        """Build the model from a config, load SAM2 weights (or seeded random ones) and adapters (their content hash
        checked unless `verify_adapters` is False: files made elsewhere carry none); run it as `options` (and
        options given by name) say."""
        options = _options(options, option_overrides)
        config = load_model_config(config)
        if sam2_checkpoint is None and not allow_random_init:
            raise CheckpointError(
                f"no SAM2 checkpoint given: download the official SAM 2.1 checkpoint matching "
                f"sam2.config_name {config.sam2.config_name!r} from Meta's release (e.g. {OFFICIAL_CHECKPOINT_URL} "
                f"for Hiera-B+) and pass sam2_checkpoint=<path>, or pass allow_random_init=True to run on seeded "
                f"random frozen weights (tests and demos only)")
        options.torch_device()  # before the (slow) build: a device that is not there is named at once
        options.apply_threads()
        if options.merge_lora:
            _check_single_modality(config.modalities)
        model = build_model(config, sam2_checkpoint=sam2_checkpoint)
        if adapters is not None:
            load_adapters(model, adapters, verify=verify_adapters)
        else:
            log.warning("no adapters given: the LoRA experts and heads are untrained, predictions are meaningless")
        return cls(model, options)

    # -------------------------------------------------------------------------------------------- public API
    def preprocess(self, inputs: Mapping[str, np.ndarray | torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Raw arrays -> (normalised images [1, M, 3, S, S], present [1, M], input (H, W)), new tensors the caller
        owns (predict uses reused buffers instead); ValueError on bad input."""
        with self._lock:
            with torch.inference_mode():
                staged = self._stage(inputs)
            return self._images.clone(), staged.present.clone(), staged.size

    def predict(self, inputs: Mapping[str, np.ndarray | torch.Tensor], confidence: bool = True,
                size: tuple[int, int] | None = None) -> Prediction:
        """Segment one multi-modal sample given as {modality name: HxW or HxWxC uint8/float image}, each a numpy
        array or a torch tensor (on any device; one already on the model's device is not copied).

        `size`: the (H, W) labels come back at, default the inputs' (a caller that resized its sensor images gives
        their size). The model resizes its logits to it once; a size far beyond the model's input (more than
        `preprocess.FAR_BEYOND_MODEL_PIXELS` times its pixels) gets the labels at the model's size upsampled
        (nearest), not logits of that many pixels.
        `confidence=False` skips the softmax (labels are the same; on a CPU that is about a third of the
        post-processing) and returns `confidence=None`."""
        with self._lock, torch.inference_mode():
            staged = self._stage(inputs)
            size = staged.size if size is None else (int(size[0]), int(size[1]))
            logits_size = self.size if beyond_model_size(size, self.size) else size
            output = self._run(staged, logits_size)
            labels, probability = labels_and_confidence(output.logits, logits_size, confidence)
            prediction = self._download(labels[0], None if probability is None else probability[0],
                                        output.routing.weights[0], output.routing.levels)
        if logits_size != size:  # nearest: a class id is never blended
            prediction.labels = resize_label(prediction.labels, size)
            if prediction.confidence is not None:
                prediction.confidence = resize_label(prediction.confidence, size)
        return prediction

    def warm_up(self, subsets: Sequence[Sequence[str]]) -> None:
        """Predict once for each modality subset in `subsets` (zero images at the model size), logging progress,
        so that whatever a subset's first run builds (a torch.compile graph, a CUDA-graph capture, an onnxruntime
        session's kernels or TensorRT engine, the allocator's buffers) is built before the first frame, not when a
        sensor drops out mid-run."""
        for count, subset in enumerate(subsets, 1):
            start = time.perf_counter()
            self.predict({name: np.zeros((*self.size, 3), np.uint8) for name in subset})
            log.info("warm-up %d/%d: %s in %.2f s", count, len(subsets), "+".join(subset),
                     time.perf_counter() - start)

    def stage(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> StagedInput:
        """Check `inputs` and write them into the model input buffer, as `predict` does first."""
        with self._lock, torch.inference_mode():
            return self._stage(inputs)

    def run_model(self, staged: StagedInput, output_size: tuple[int, int] | None = None) -> SegmentationOutput:
        """The model alone on the input buffer, exactly as `predict` runs it (precision, compiled model or CUDA
        graph), its logits at `output_size` (default the model's input size); valid while no other call restaged
        the buffer (a CUDA graph's output is overwritten by its next replay)."""
        with self._lock, torch.inference_mode():
            return self._run(staged, output_size or self.size)

    # ---------------------------------------------------------------------------------------- preprocessing
    def _stage(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> StagedInput:
        """Check `inputs` and write them into the model input buffer. Nothing is written unless every input is
        valid."""
        if not isinstance(inputs, Mapping) or not inputs:
            raise ValueError(f"no modalities given: expected a dict {{modality: HxWxC array}} with a non-empty "
                             f"subset of {list(self.modalities)}")
        unknown = [name for name in inputs if name not in self.modalities]
        if unknown:
            raise ValueError(f"unknown modality {unknown[0]!r}: this model takes {list(self.modalities)}")
        arrays: dict[int, tuple[np.ndarray | torch.Tensor, ChannelSources]] = {}
        size: tuple[int, int] | None = None
        for name, array in inputs.items():  # each input checked once, before anything is written
            array = check_image(array, name)
            sources = channel_sources(array.shape[2], name, name)  # a channel count the modality does not take
            size = size or (int(array.shape[0]), int(array.shape[1]))
            if tuple(array.shape[:2]) != size:
                raise ValueError(f"{name}: size {array.shape[0]}x{array.shape[1]} differs from the other "
                                 f"modalities' {size[0]}x{size[1]}")
            arrays[self.modalities.index(name)] = array, sources
        assert size is not None  # inputs is not empty
        for index, (array, sources) in arrays.items():
            self._write_slot(index, self._upload(self.modalities[index], array), sources)
        for index in self._filled - arrays.keys():  # a modality of the last call that is absent now
            self._images[0, index].zero_()
        self._filled = set(arrays)
        ids = tuple(sorted(arrays))
        if ids not in self._present:
            self._present[ids] = torch.tensor([[i in ids for i in range(len(self.modalities))]], device=self.device)
        return StagedInput(ids, self._present[ids], size)

    def _upload(self, name: str, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """HxWxC array or tensor (C 1-3) -> [C, H, W] on the device: uint8 stays uint8, floats become float32."""
        if isinstance(array, torch.Tensor):  # already a tensor: moved only if it is elsewhere
            x = array.to(self.device, non_blocking=True)
            return (x if x.dtype == torch.uint8 else x.float()).permute(2, 0, 1)
        dtype = torch.uint8 if array.dtype == np.uint8 else torch.float32
        if self.device.type != "cuda":
            return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, dtype).permute(2, 0, 1)
        buffers = self._uploads.get(name)
        if buffers is None or buffers.host.shape != array.shape or buffers.host.dtype != dtype:
            buffers = self._uploads[name] = _UploadBuffers(
                host=torch.empty(array.shape, dtype=dtype, pin_memory=True),
                device=torch.empty(array.shape, dtype=dtype, device=self.device), copied=torch.cuda.Event())
        # The previous asynchronous copy out of the staging buffer must be over before it is overwritten (after
        # predict's download it is: this wait is then free). Floats are cast to float32 here, rounding exactly
        # as torch's .float() does.
        buffers.copied.synchronize()
        np.copyto(buffers.host.numpy(), array, casting="unsafe")
        buffers.device.copy_(buffers.host, non_blocking=True)
        buffers.copied.record(torch.cuda.current_stream(self.device))
        return buffers.device.permute(2, 0, 1)

    def _write_slot(self, index: int, x: torch.Tensor, sources: ChannelSources) -> None:
        """[C, H, W] (C 1-3, 0-255 scale) -> the model input's slot `index`, by the shared preprocessing."""
        self.transform.write(index, x, self._images[0, index], sources)

    # ----------------------------------------------------------------------------------------------- model
    def _run(self, staged: StagedInput, output_size: tuple[int, int]) -> SegmentationOutput:
        """The model on the staged input, its logits at `output_size`: a CUDA graph's replay when enabled, else
        (compiled) eager."""
        if self.cuda_graphs:
            return self._graph_forward(staged.ids, staged.present, output_size)
        return self._forward(staged.ids, staged.present, output_size)

    def _forward(self, ids: tuple[int, ...], present: torch.Tensor, output_size: tuple[int, int]
                 ) -> SegmentationOutput:
        """The model on the input buffer, compiled if enabled; a compile failure (raised at the first call of a
        modality subset) switches to eager for good."""
        with autocast(self.device, self.precision, cache_enabled=not self.cuda_graphs):
            if self._compiled is not None:
                try:
                    return self._compiled(self._images, present, ids, output_size=output_size)
                except Exception as exc:  # noqa: BLE001 -- eager raises again if the problem is not compilation
                    self._no_compile(exc)
            return self.model(self._images, present, ids, output_size=output_size)

    def _no_compile(self, exc: Exception) -> None:
        first_line = next(iter(str(exc).strip().splitlines()), "")  # compiler errors run to pages
        log.warning("compile: torch.compile is unavailable here (%s: %s): running the model eagerly",
                    type(exc).__name__, first_line)
        self.compile = False
        self._compiled = None

    def _graph_forward(self, ids: tuple[int, ...], present: torch.Tensor, output_size: tuple[int, int]
                       ) -> SegmentationOutput:
        """Replay the CUDA graph of this modality subset and output size (captured on its first call); eager if
        capture fails."""
        captured = self._graphs.get((ids, output_size))
        if captured is None:
            try:
                captured = self._graphs[ids, output_size] = self._capture(ids, present, output_size)
            except Exception as exc:  # noqa: BLE001 -- any capture failure means eager from now on
                log.warning("cuda_graphs: capture failed (%s: %s): running the model eagerly",
                            type(exc).__name__, exc)
                self.cuda_graphs = False
                self._graphs.clear()
                return self._forward(ids, present, output_size)
        captured.graph.replay()
        return captured.output

    def _capture(self, ids: tuple[int, ...], present: torch.Tensor, output_size: tuple[int, int]
                 ) -> _CapturedForward:
        """Warm up on a side stream, then capture the forward on the static input buffer and present mask."""
        with torch.cuda.device(self.device):  # capture runs on the current device's streams
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(GRAPH_WARMUP_RUNS):
                    self._forward(ids, present, output_size)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # One memory pool for all subsets: graphs run one at a time under the lock, and each output is read
            # before the next replay; every graph's output stays allocated, so no later capture reuses it.
            with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
                output = self._forward(ids, present, output_size)
        log.info("cuda_graphs: captured the forward for %s", [self.modalities[i] for i in ids])
        return _CapturedForward(graph, output)

    # ---------------------------------------------------------------------------------------------- output
    def _download(self, labels: torch.Tensor, confidence: torch.Tensor | None, routing: torch.Tensor,
                  levels: tuple[str, ...]) -> Prediction:
        """labels [H, W], confidence [H, W] (or None) and routing [levels, M] (on the device) -> Prediction, in
        one copy: the floats' bytes first (4-byte aligned), then the labels as uint8."""
        h, w = labels.shape
        pixels = 0 if confidence is None else h * w
        routing = routing.float()
        parts = [routing.reshape(-1)] if confidence is None else [confidence.reshape(-1), routing.reshape(-1)]
        floats = torch.cat(parts).view(torch.uint8)
        packed = torch.cat([floats, labels.reshape(-1).to(torch.uint8)]).cpu().numpy()
        split = floats.numel()
        values = packed[:split].view(np.float32)
        weights = values[pixels:].reshape(routing.shape)
        return Prediction(labels=packed[split:].reshape(h, w),
                          confidence=None if confidence is None else values[:pixels].reshape(h, w),
                          routing=RoutingWeights(weights, tuple(levels), self.modalities))


def labels_and_confidence(logits: torch.Tensor, size: tuple[int, int],
                           confidence: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Model logits [1, C, h, w] -> class ids [1, H, W] at `size`, and the softmax probability of each chosen
    class [1, H, W] (None unless `confidence`). `predict` asks the model for logits at `size`; logits of another
    size (a backend whose graph has a fixed output size) are upsampled (bilinear) here, once.

    That upsampling writes channels-last and the class reductions run over the innermost dimension of that
    [1, H, W, C] view: on a CPU faster than the channels-first definition (`python -m benchmarks.node_pipeline
    --post-variants` times both), the same up to float rounding; also faster there than the torch.compile'd forms
    we tried, so it is not compiled. Logits already at `size` are reduced where they are, over the class
    dimension (a channels-last copy first costs more than it saves). `max`, not `argmax`: the faster reduction
    over a class dimension on a CPU."""
    logits = logits.float()
    classes = 1
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                               align_corners=False).permute(0, 2, 3, 1)
        classes = -1
    if not confidence:
        return logits.max(dim=classes).indices, None
    probability, labels = torch.softmax(logits, dim=classes).max(dim=classes)
    return labels, probability


def _options(options: InferenceOptions | None, overrides: dict[str, Any]) -> InferenceOptions:
    """`options` (default: InferenceOptions()) with the options given by name; TypeError for anything else (e.g. a
    device string passed where the options go: name it, `device="cuda"`)."""
    if options is not None and not isinstance(options, InferenceOptions):
        raise TypeError(f"options: expected InferenceOptions or None, got {type(options).__name__} {options!r} "
                        f"(give single options by name, e.g. device='cuda')")
    return (options or InferenceOptions()).replace(**overrides)


def _check_single_modality(modalities: tuple[str, ...]) -> None:
    """ValueError naming the config's modalities unless there is exactly one (what `merge_lora` needs)."""
    if len(modalities) != 1:
        raise ValueError(f"merge_lora: needs a model config with exactly one modality, this one has "
                         f"{list(modalities)}")


__all__ = ["Segmenter", "Prediction", "RoutingWeights", "StagedInput", "labels_and_confidence"]
