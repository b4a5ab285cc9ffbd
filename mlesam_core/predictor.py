"""`Segmenter`: the one predictor used by evaluation, bag replay and the ROS node.

predict({modality: HxW or HxWxC array or tensor}) -> Prediction(labels HxW uint8, confidence HxW float32 (optional),
routing).
Preprocessing per modality, as `to_three_channels` -> resize to the model size (bilinear for dense modalities,
nearest for sparse ones, per the modality table) -> `normalization` (value/255, table mean/std). Any non-empty
subset of the configured modalities; the absent ones are marked absent (the model skips them entirely).

The hot path works in place: each modality's array is uploaded in its own dtype and channel count (through a
reused pinned buffer and a non-blocking copy on CUDA), mapped to 3 channels, resized and normalised on the device
straight into a preallocated model input [1, M, 3, S, S]; a torch tensor input (e.g. HHA computed on the GPU) is
taken where it is; the present mask of each modality subset is made once; the active modalities are known on the
host from the input dict; labels, confidence (optional) and routing are computed on the device and downloaded in
one copy, the call's only host sync. Options: bf16/fp16 autocast, `torch.compile`
of the model, CUDA-graph replay per modality subset, and a merged LoRA expert for single-modality models; each
optimisation falls back to the eager model, with a warning, where it is unavailable.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mlesam_core.data.classes import ClassTable, get_class_table
from mlesam_core.modalities import get_modality, normalization
from mlesam_core.model import OFFICIAL_CHECKPOINT_URL, CheckpointError, build_model, load_adapters
from mlesam_core.model.base import LoRASam2Model, SegmentationOutput
from mlesam_core.model.config import MLESAMConfig, load_model_config

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRAPH_WARMUP_RUNS = 3  # eager runs on a side stream before a capture, as PyTorch's CUDA-graph notes do


@dataclass
class Prediction:
    """One segmentation: class ids, the winning class's softmax probability, and the modality weights."""

    labels: np.ndarray  # HxW uint8 (input size)
    confidence: np.ndarray | None  # HxW float32; None when predict was asked not to compute it
    routing: dict[str, dict[str, float]]  # level -> {modality: weight}, every configured modality (absent: 0.0)


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

    def __init__(self, model: LoRASam2Model, device: str | torch.device = "cpu", precision: str = "fp32",
                 compile: bool = False, cuda_graphs: bool = False, merge_lora: bool = False) -> None:
        """`compile`: torch.compile the model; `cuda_graphs`: replay a CUDA graph per modality subset;
        `merge_lora`: fold the expert into the frozen weights (single-modality configs; changes `model`)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision: fp16 needs a CUDA device (use fp32 or bf16 on CPU)")
        if merge_lora:
            _check_single_modality(model.modalities)
        self.precision = precision
        self.model = model.to(self.device).eval()
        if merge_lora:
            self.model.merge_lora(model.modalities[0])
        self.config: MLESAMConfig = model.config
        self.modalities = tuple(model.modalities)
        # names and colours of the labels (config key `classes`); None for a model of the user's own classes
        self.class_table: ClassTable | None = get_class_table(self.config.classes) if self.config.classes else None
        self.size = (self.config.image_size, self.config.image_size)
        self._mean, self._std = normalization(self.modalities, device=self.device)  # [M, 3, 1, 1]
        self._modes = {n: ("nearest" if get_modality(n).kind == "sparse" else "bilinear") for n in self.modalities}
        self._lock = threading.Lock()  # one prediction at a time: the model's modality context is shared state
        with torch.inference_mode():  # written only under inference mode (predict, preprocess)
            self._images = torch.zeros((1, len(self.modalities), 3, *self.size), device=self.device)
        self._filled: set[int] = set()  # slots of `_images` holding the last call's data (the others are zero)
        self._present: dict[tuple[int, ...], torch.Tensor] = {}  # present mask [1, M] per modality subset
        self._uploads: dict[str, _UploadBuffers] = {}  # CUDA only: per modality, for its last input shape
        self.compile = compile
        self._compiled: Callable[..., SegmentationOutput] | None = None
        if compile:
            try:
                self._compiled = torch.compile(self.model, dynamic=False)
            except Exception as exc:  # noqa: BLE001 -- any failure to set up compilation means eager
                self._no_compile(exc)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        if cuda_graphs and not self.cuda_graphs:
            log.warning("cuda_graphs: needs a CUDA device, the model is on %s: running eagerly", self.device)
        self._graphs: dict[tuple[int, ...], _CapturedForward] = {}
        self._graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        log.info("Segmenter on %s (%s): compile %s, cuda_graphs %s, merged LoRA expert %s", self.device, precision,
                 self.compile, self.cuda_graphs, self.model.merged_modality)

    @classmethod
    def from_files(cls, config: MLESAMConfig | str | Path, sam2_checkpoint: str | Path | None = None,
                   adapters: str | Path | None = None, device: str | torch.device = "cpu",
                   precision: str = "fp32", allow_random_init: bool = False, compile: bool = False,
                   cuda_graphs: bool = False, merge_lora: bool = False) -> Segmenter:
        """Build the model from a config, load SAM2 weights (or seeded random ones) and adapters."""
        config = load_model_config(config)
        if sam2_checkpoint is None and not allow_random_init:
            raise CheckpointError(
                f"no SAM2 checkpoint given: download the official SAM 2.1 checkpoint matching "
                f"sam2.config_name {config.sam2.config_name!r} from Meta's release (e.g. {OFFICIAL_CHECKPOINT_URL} "
                f"for Hiera-B+) and pass sam2_checkpoint=<path>, or pass allow_random_init=True to run on seeded "
                f"random frozen weights (tests and demos only)")
        if merge_lora:  # before the (slow) build
            _check_single_modality(config.modalities)
        model = build_model(config, sam2_checkpoint=sam2_checkpoint)
        if adapters is not None:
            load_adapters(model, adapters)
        else:
            log.warning("no adapters given: the LoRA experts and heads are untrained, predictions are meaningless")
        return cls(model, device=device, precision=precision, compile=compile, cuda_graphs=cuda_graphs,
                   merge_lora=merge_lora)

    # -------------------------------------------------------------------------------------------- public API
    def preprocess(self, inputs: Mapping[str, np.ndarray | torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Raw arrays -> (normalised images [1, M, 3, S, S], present [1, M], input (H, W)), new tensors the caller
        owns (predict uses reused buffers instead); ValueError on bad input."""
        with self._lock:
            with torch.inference_mode():
                _, present, size = self._stage(inputs)
            return self._images.clone(), present.clone(), size

    def predict(self, inputs: Mapping[str, np.ndarray | torch.Tensor], confidence: bool = True) -> Prediction:
        """Segment one multi-modal sample given as {modality name: HxW or HxWxC uint8/float image}, each a numpy
        array or a torch tensor (on any device; one already on the model's device is not copied).

        `confidence=False` skips the softmax over the sensor-size logits (labels are the same; on a CPU that is
        about a third of the post-processing) and returns `confidence=None`."""
        with self._lock, torch.inference_mode():
            ids, present, size = self._stage(inputs)
            output = self._graph_forward(ids, present) if self.cuda_graphs else self._forward(ids, present)
            labels, probability = labels_and_confidence(output.logits, size, confidence)
            routing = torch.stack([weights[0].float() for weights in output.routing.values()])  # [levels, M]
            return self._download(labels[0], None if probability is None else probability[0], routing,
                                  list(output.routing))

    # ---------------------------------------------------------------------------------------- preprocessing
    def _stage(self, inputs: Mapping[str, np.ndarray | torch.Tensor]
               ) -> tuple[tuple[int, ...], torch.Tensor, tuple[int, int]]:
        """Check `inputs` and write them into the model input buffer -> (present modality ids, present mask
        [1, M], input (H, W)). Nothing is written unless every input is valid."""
        if not isinstance(inputs, Mapping) or not inputs:
            raise ValueError(f"no modalities given: expected a dict {{modality: HxWxC array}} with a non-empty "
                             f"subset of {list(self.modalities)}")
        unknown = [name for name in inputs if name not in self.modalities]
        if unknown:
            raise ValueError(f"unknown modality {unknown[0]!r}: this model takes {list(self.modalities)}")
        arrays: dict[int, np.ndarray | torch.Tensor] = {}
        size = None
        for name, array in inputs.items():
            array = _check_image(array, name)
            if size is None:
                size = tuple(array.shape[:2])
            elif tuple(array.shape[:2]) != size:
                raise ValueError(f"{name}: size {array.shape[0]}x{array.shape[1]} differs from the other "
                                 f"modalities' {size[0]}x{size[1]}")
            arrays[self.modalities.index(name)] = array
        for index, array in arrays.items():
            self._write_slot(index, self._upload(self.modalities[index], array))
        for index in self._filled - arrays.keys():  # a modality of the last call that is absent now
            self._images[0, index].zero_()
        self._filled = set(arrays)
        ids = tuple(sorted(arrays))
        if ids not in self._present:
            self._present[ids] = torch.tensor([[i in ids for i in range(len(self.modalities))]], device=self.device)
        return ids, self._present[ids], size

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

    def _write_slot(self, index: int, x: torch.Tensor) -> None:
        """[C, H, W] (C 1-3, 0-255 scale) -> resized, 3 channels as `to_three_channels`, normalised, into the
        model input's slot `index` (resizing the native channels first: interpolation is per channel)."""
        name = self.modalities[index]
        if tuple(x.shape[-2:]) != self.size:
            mode = self._modes[name]
            x = F.interpolate(x[None].float(), size=self.size, mode=mode,
                              **({"align_corners": False} if mode == "bilinear" else {}))[0]
        slot = self._images[0, index]
        if x.shape[0] == 2:  # two channels get a zero third one
            torch.div(x, 255.0, out=slot[:2])
            slot[2].zero_()
        else:  # three channels, or one repeated
            torch.div(x.expand(3, -1, -1), 255.0, out=slot)
        slot.sub_(self._mean[index]).div_(self._std[index])

    # ----------------------------------------------------------------------------------------------- model
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        # CUDA graphs must not capture autocast's weight-cast cache (PyTorch's CUDA-graph notes)
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], cache_enabled=not self.cuda_graphs)

    def _forward(self, ids: tuple[int, ...], present: torch.Tensor) -> SegmentationOutput:
        """The model on the input buffer, compiled if enabled; a compile failure (raised at the first call of a
        modality subset) switches to eager for good."""
        with self._autocast():
            if self._compiled is not None:
                try:
                    return self._compiled(self._images, present, ids)
                except Exception as exc:  # noqa: BLE001 -- eager raises again if the problem is not compilation
                    self._no_compile(exc)
            return self.model(self._images, present, ids)

    def _no_compile(self, exc: Exception) -> None:
        first_line = next(iter(str(exc).strip().splitlines()), "")  # compiler errors run to pages
        log.warning("compile: torch.compile is unavailable here (%s: %s): running the model eagerly",
                    type(exc).__name__, first_line)
        self.compile = False
        self._compiled = None

    def _graph_forward(self, ids: tuple[int, ...], present: torch.Tensor) -> SegmentationOutput:
        """Replay the CUDA graph of this modality subset (captured on its first call); eager if capture fails."""
        captured = self._graphs.get(ids)
        if captured is None:
            try:
                captured = self._graphs[ids] = self._capture(ids, present)
            except Exception as exc:  # noqa: BLE001 -- any capture failure means eager from now on
                log.warning("cuda_graphs: capture failed (%s: %s): running the model eagerly",
                            type(exc).__name__, exc)
                self.cuda_graphs = False
                self._graphs.clear()
                return self._forward(ids, present)
        captured.graph.replay()
        return captured.output

    def _capture(self, ids: tuple[int, ...], present: torch.Tensor) -> _CapturedForward:
        """Warm up on a side stream, then capture the forward on the static input buffer and present mask."""
        with torch.cuda.device(self.device):  # capture runs on the current device's streams
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(GRAPH_WARMUP_RUNS):
                    self._forward(ids, present)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # One memory pool for all subsets: graphs run one at a time under the lock, and each output is read
            # before the next replay; every graph's output stays allocated, so no later capture reuses it.
            with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
                output = self._forward(ids, present)
        log.info("cuda_graphs: captured the forward for %s", [self.modalities[i] for i in ids])
        return _CapturedForward(graph, output)

    # ---------------------------------------------------------------------------------------------- output
    def _download(self, labels: torch.Tensor, confidence: torch.Tensor | None, routing: torch.Tensor,
                  levels: list[str]) -> Prediction:
        """labels [H, W], confidence [H, W] (or None) and routing [levels, M] (on the device) -> Prediction, in
        one copy: the floats' bytes first (4-byte aligned), then the labels as uint8."""
        h, w = labels.shape
        pixels = 0 if confidence is None else h * w
        parts = [routing.reshape(-1)] if confidence is None else [confidence.reshape(-1), routing.reshape(-1)]
        floats = torch.cat(parts).view(torch.uint8)
        packed = torch.cat([floats, labels.reshape(-1).to(torch.uint8)]).cpu().numpy()
        split = floats.numel()
        values = packed[:split].view(np.float32)
        weights = values[pixels:].reshape(routing.shape)
        return Prediction(labels=packed[split:].reshape(h, w),
                          confidence=None if confidence is None else values[:pixels].reshape(h, w),
                          routing={level: dict(zip(self.modalities, row.tolist(), strict=True)) for level, row in
                                   zip(levels, weights, strict=True)})


def labels_and_confidence(logits: torch.Tensor, size: tuple[int, int],
                           confidence: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Model logits [1, C, h, w] -> class ids [1, H, W] of the logits upsampled (bilinear) to `size`, and the
    softmax probability of each chosen class [1, H, W] (None unless `confidence`).

    The upsampling writes channels-last and the class reductions run over the innermost dimension of that
    [1, H, W, C] view: on a CPU 1.6-1.9x faster than the channels-first definition (`node_pipeline.py
    --post-variants`), the same up to float rounding; also faster there than any torch.compile'd form we tried, so
    it is not compiled. `max`, not `argmax`: 5x faster over a class dimension on a CPU."""
    logits = logits.float().contiguous(memory_format=torch.channels_last)
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    if not confidence:
        return logits.max(dim=-1).indices, None
    probability, labels = torch.softmax(logits, dim=-1).max(dim=-1)
    return labels, probability


def _check_single_modality(modalities: tuple[str, ...]) -> None:
    """ValueError naming the config's modalities unless there is exactly one (what `merge_lora` needs)."""
    if len(modalities) != 1:
        raise ValueError(f"merge_lora: needs a model config with exactly one modality, this one has "
                         f"{list(modalities)}")


def _check_image(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray | torch.Tensor:
    """A uint8/float HxW or HxWxC (C 1-4) numpy image or tensor as HxWxC with C 1-3 (alpha dropped, a view, no
    copy); ValueError naming `name` otherwise. The channel mapping itself happens on the device (`_write_slot`)."""
    if isinstance(array, torch.Tensor):
        if array.dtype != torch.uint8 and not array.dtype.is_floating_point:
            raise ValueError(f"{name}: expected uint8 or float (0-255 scale) values, got {array.dtype}")
    elif not isinstance(array, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(array).__name__}")
    elif array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name}: expected uint8 or float (0-255 scale) values, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or min(array.shape[:2]) == 0:
        raise ValueError(f"{name}: expected an HxW or HxWxC image with C in 1..4, got shape {tuple(array.shape)}")
    return array[:, :, :3]


__all__ = ["Segmenter", "Prediction", "labels_and_confidence"]
