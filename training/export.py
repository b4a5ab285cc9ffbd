"""Export the model as ONNX graphs, one per sensor subset: `python -m training.export --config CFG --adapters FILE
[--subsets all|rgb,rgb+depth,...] [--size H W] --out DIR`.

Each graph is the model for one fixed subset at a fixed size (static shapes: what TensorRT builds engines from),
traced by PyTorch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`); `--subsets all` (default) writes
every non-empty subset of the model's modalities, the ones a node can meet as sensors drop out. The graphs'
inputs and outputs, and the manifest written beside them, are described in `mlesam_core.exported`.

Every graph is verified before it is kept: onnxruntime runs it on a seeded input and its logits must match the
eager model's (max abs diff <= PARITY_ATOL, argmax agreement >= MIN_ARGMAX_AGREEMENT), while they must differ
from the eager model's with every LoRA B zeroed: a graph without the LoRA experts (what PyTorch's legacy
TorchScript exporter silently produces from the in-place LoRA update) is refused, and so are adapters whose
experts change nothing (the check could not tell). The figures go into the manifest.

`--config` is a train config (its model section, SAM2 checkpoint and allow_random_init) or a model config (then
`--sam2-checkpoint` or `--allow-random-init`); the adapters must have been trained for that model. Exit status:
0 done; 2 bad config, adapters, subsets, size or output folder, or a graph that fails verification, reported in
one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlesam_core.config_io import ConfigError, load_yaml, to_dict
from mlesam_core.evaluation import parse_subsets, subset_name
from mlesam_core.exported import (
    INPUT_DESCRIPTION,
    MANIFEST_FORMAT,
    OUTPUT_DESCRIPTION,
    OUTPUT_NAMES,
    ExportManifest,
    GraphRecord,
    Parity,
    graph_file_name,
    session_options,
    write_manifest,
)
from mlesam_core.modalities import get_modality
from mlesam_core.model.backbone_id import file_sha256
from mlesam_core.model.base import LoRASam2Model
from mlesam_core.model.config import MLESAMConfig, load_model_config
from training.cli_errors import EXIT_BAD_INPUT, EXPECTED_ERRORS, error_line

log = logging.getLogger("training.export")

EXPORTER = "torch.onnx.export(dynamo=True)"
PARITY_ATOL = 1e-3  # fp32 graph vs eager: observed ~1e-6 on the tiny model
MIN_ARGMAX_AGREEMENT = 0.999
VERIFY_SEED = 0


class ExportError(ValueError):
    """A graph that cannot be exported or fails verification; the message names the subset and the figures."""


class SubsetGraph(nn.Module):
    """What the exporter traces: the model for one fixed sensor subset, batch 1. Inputs: the subset's normalised
    images [1, 3, H, W] in config order; outputs: logits [1, C, H, W] and routing [L, M]."""

    def __init__(self, model: LoRASam2Model, subset: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.active = tuple(model.modalities.index(m) for m in subset)
        self.register_buffer("present", torch.tensor([[i in self.active for i in range(len(model.modalities))]]),
                             persistent=False)

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slots = dict(zip(self.active, images, strict=True))
        absent = torch.zeros_like(images[0])  # never read: the model zeroes absent modalities itself
        stacked = torch.stack([slots.get(i, absent) for i in range(len(self.model.modalities))], dim=1)
        output = self.model(stacked, self.present, active=self.active)
        return output.logits, output.routing.weights[0].float()


def check_size(size: Sequence[int], model: LoRASam2Model) -> tuple[int, int]:
    """(H, W) if both are positive multiples of the model's size multiple, else ConfigError naming --size."""
    h, w = (int(v) for v in size)
    multiple = model.size_multiple
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise ConfigError(f"--size: {h} {w}: height and width must be positive multiples of {multiple}")
    return h, w


def seeded_inputs(subset: Sequence[str], size: tuple[int, int], seed: int) -> tuple[torch.Tensor, ...]:
    """Normalised-looking images [1, 3, H, W] per modality of `subset`, from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 3, *size, generator=generator) for _ in subset)


@contextmanager
def experts_zeroed(model: LoRASam2Model) -> Iterator[None]:
    """Every LoRA B zeroed (the model without its experts) inside the block, restored exactly after."""
    saved = [layer.lora_B.detach().clone() for layer in model.lora_layers]
    try:
        with torch.no_grad():
            for layer in model.lora_layers:
                layer.lora_B.zero_()
        yield
    finally:
        with torch.no_grad():
            for layer, b in zip(model.lora_layers, saved, strict=True):
                layer.lora_B.copy_(b)


def _compare(graph: np.ndarray, eager: np.ndarray) -> tuple[float, float]:
    """(max abs diff, argmax agreement over the class dimension) of two logits arrays [1, C, H, W]."""
    return float(np.abs(graph - eager).max()), float((graph.argmax(1) == eager.argmax(1)).mean())


def verify_graph(path: str | Path, model: LoRASam2Model, subset: Sequence[str], size: tuple[int, int],
                 seed: int = VERIFY_SEED) -> Parity:
    """Run the graph at `path` under onnxruntime (CPU) and the eager `model` on one seeded input of `subset`; the
    parity figures, or ExportError when the graph does not match the eager model, matches it without its LoRA
    experts, or the experts change nothing (then no check can tell a graph that lost them)."""
    import onnxruntime

    name = subset_name(subset)
    images = seeded_inputs(subset, size, seed)
    session = onnxruntime.InferenceSession(str(path), sess_options=session_options(0),
                                           providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    if inputs != list(subset):
        raise ExportError(f"{path}: graph of {name} takes inputs {inputs}, expected {list(subset)}")
    graph = session.run([OUTPUT_NAMES[0]], {m: x.numpy() for m, x in zip(subset, images, strict=True)})[0]
    wrapper = SubsetGraph(model, subset).eval()
    with torch.inference_mode():
        eager = wrapper(*images)[0].numpy()
        with experts_zeroed(model):
            without = wrapper(*images)[0].numpy()
    if graph.shape != eager.shape:
        raise ExportError(f"{path}: graph of {name} gives logits {graph.shape}, the model {eager.shape}")
    expert_effect = float(np.abs(eager - without).max())
    if expert_effect <= PARITY_ATOL:
        raise ExportError(f"{name}: the LoRA experts change the logits by at most {expert_effect:.2e} on the check "
                          f"input (LoRA B zero: untrained adapters?); an export is only verified with experts that "
                          f"act, since a graph without them would pass unnoticed")
    max_diff, agreement = _compare(graph, eager)
    without_diff, without_agreement = _compare(graph, without)
    parity = Parity(seed=seed, max_abs_diff=max_diff, argmax_agreement=agreement,
                    without_experts_max_abs_diff=without_diff, without_experts_argmax_agreement=without_agreement)
    if max_diff <= PARITY_ATOL and agreement >= MIN_ARGMAX_AGREEMENT:
        return parity
    if without_diff <= PARITY_ATOL:
        raise ExportError(f"{path}: the graph of {name} matches the model WITHOUT its LoRA experts (max abs diff "
                          f"{without_diff:.2e}; {max_diff:.2e} to the model with them, argmax agreement "
                          f"{agreement:.2%}): the exporter dropped the experts")
    raise ExportError(f"{path}: the graph of {name} does not match the eager model: max abs diff {max_diff:.2e} "
                      f"(limit {PARITY_ATOL:g}), argmax agreement {agreement:.3%} (limit "
                      f"{MIN_ARGMAX_AGREEMENT:.1%})")


def export_graph(model: LoRASam2Model, subset: Sequence[str], size: tuple[int, int], path: Path) -> int:
    """Trace `model` for `subset` at `size` with the dynamo exporter into `path`; returns the graph's opset."""
    import onnx

    wrapper = SubsetGraph(model, subset).eval()
    # the exporter prints its progress to stdout: kept out of a CLI whose stdout a caller may parse
    with torch.no_grad(), redirect_stdout(sys.stderr):
        program = torch.onnx.export(wrapper, seeded_inputs(subset, size, VERIFY_SEED), dynamo=True,
                                    input_names=list(subset), output_names=list(OUTPUT_NAMES), optimize=True)
    if program is None:
        raise ExportError(f"{subset_name(subset)}: the exporter returned no program")
    program.save(str(path))
    opsets = {entry.domain: entry.version for entry in onnx.load(str(path), load_external_data=False).opset_import}
    return int(opsets.get("", opsets.get("ai.onnx", 0)))


def export_model(model: LoRASam2Model, adapters: Path, out: Path, subsets: Sequence[Sequence[str]],
                 size: tuple[int, int]) -> ExportManifest:
    """Export and verify one graph per subset into `out`, then write the manifest; ExportError on a graph that
    fails verification (its file is removed; nothing is written for it)."""
    import onnx
    import onnxruntime
    import onnxscript

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    records, opset = [], 0
    for count, subset in enumerate(subsets, 1):
        name = subset_name(subset)
        path = out / graph_file_name(subset)
        log.info("export %d/%d: %s at %dx%d", count, len(subsets), name, *size)
        opset = export_graph(model, subset, size, path)
        try:
            parity = verify_graph(path, model, subset, size)
        except ExportError:
            path.unlink(missing_ok=True)
            raise
        log.info("  %s: max abs diff %.2e, argmax agreement %.4f (without the experts: %.2e, %.4f)", path.name,
                 parity.max_abs_diff, parity.argmax_agreement, parity.without_experts_max_abs_diff,
                 parity.without_experts_argmax_agreement)
        records.append(GraphRecord(subset=tuple(subset), file=path.name, sha256=file_sha256(path), parity=parity))
    m = len(model.modalities)
    with torch.inference_mode():  # the routing output's rows: the model's fusion levels, in its order
        levels = model(torch.zeros(1, m, 3, *size), torch.ones(1, m, dtype=torch.bool),
                       active=tuple(range(m))).routing.levels
    manifest = ExportManifest(
        format=MANIFEST_FORMAT, model_config=to_dict(model.config), adapters_sha256=file_sha256(adapters),
        backbone=model.backbone_id, size=size, opset=opset, exporter=EXPORTER,
        versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
                  "onnxruntime": onnxruntime.__version__},
        inputs=INPUT_DESCRIPTION, outputs=OUTPUT_DESCRIPTION,
        normalization={m: {"mean": tuple(get_modality(m).mean), "std": tuple(get_modality(m).std)}
                       for m in model.modalities},
        routing_levels=levels, graphs=tuple(records))
    write_manifest(manifest, out)
    return manifest


def load_export_model(config_path: Path, adapters: Path, sam2_checkpoint: str | None, allow_random_init: bool,
                      verify_adapters: bool = True) -> LoRASam2Model:
    """The model of a train config (model section, SAM2 checkpoint, allow_random_init) or a model config (with
    `sam2_checkpoint` or `allow_random_init`), with the adapters loaded (checked against that model config)."""
    from mlesam_core.model import build_model, load_adapters

    data = load_yaml(config_path)
    if isinstance(data.get("model"), dict):  # a train config
        from training.config import load_train_config
        from training.model_setup import sam2_checkpoint_path

        overrides = []
        if sam2_checkpoint is not None:
            overrides.append(f"sam2_checkpoint={sam2_checkpoint}")
        if allow_random_init:
            overrides.append("allow_random_init=true")
        train = load_train_config(config_path, overrides)
        model_config: MLESAMConfig = train.model
        checkpoint = sam2_checkpoint_path(train)
    else:
        model_config = load_model_config(config_path)
        if sam2_checkpoint is None and not allow_random_init:
            raise ConfigError("--sam2-checkpoint: a model config needs the official SAM2 checkpoint the adapters "
                              "were trained on (or --allow-random-init for adapters trained on the random backbone)")
        checkpoint = Path(sam2_checkpoint) if sam2_checkpoint is not None else None
        if checkpoint is not None and not checkpoint.is_file():
            raise ConfigError(f"--sam2-checkpoint: file not found: {checkpoint}")
    model = build_model(model_config, sam2_checkpoint=checkpoint)
    load_adapters(model, adapters, verify=verify_adapters)
    return model.eval()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="train config or model config YAML")
    parser.add_argument("--adapters", required=True, help="adapters.safetensors written by training")
    parser.add_argument("--out", required=True, help="export folder (manifest.json and one .onnx per subset)")
    parser.add_argument("--subsets", default="all", help="'all' (every non-empty subset) or e.g. 'rgb,rgb+depth'")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                        help="input height and width of the graphs (default: the config's image_size, square)")
    parser.add_argument("--sam2-checkpoint", help="official SAM2 checkpoint (overrides the train config's)")
    parser.add_argument("--allow-random-init", action="store_true",
                        help="the seeded random backbone (adapters trained on it)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the adapter file's content hash (files made elsewhere carry none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one line per folded initializer otherwise
    try:
        config_path, adapters, out = Path(args.config), Path(args.adapters), Path(args.out)
        if not config_path.is_file():
            raise ConfigError(f"--config: file not found: {config_path}")
        if not adapters.is_file():
            raise ConfigError(f"--adapters: file not found: {adapters}")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out: {out} exists and is not a folder")
        model = load_export_model(config_path, adapters, args.sam2_checkpoint, args.allow_random_init,
                                  verify_adapters=not args.no_verify)
        subsets = parse_subsets(args.subsets, model.modalities)
        size = check_size(args.size or (model.config.image_size, model.config.image_size), model)
        manifest = export_model(model, adapters, out, subsets, size)
    except EXPECTED_ERRORS as exc:
        log.error("%s", error_line(exc))
        return EXIT_BAD_INPUT
    worst = max(manifest.graphs, key=lambda g: g.parity.max_abs_diff)
    print(f"{len(manifest.graphs)} graphs at {size[0]}x{size[1]} in {out} (worst max abs diff "
          f"{worst.parity.max_abs_diff:.2e}, {subset_name(worst.subset)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SubsetGraph", "ExportError", "export_model", "export_graph", "verify_graph",
           "experts_zeroed", "load_export_model", "PARITY_ATOL", "MIN_ARGMAX_AGREEMENT"]
