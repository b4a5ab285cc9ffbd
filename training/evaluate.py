"""Evaluate trained adapters: `python -m training.evaluate --config CFG --adapters FILE [options]`.

Reports confusion-matrix mIoU under both protocols, per-class IoU and pixel accuracy; `--subsets all` adds the
missing-modality matrix (every non-empty subset of the trained modalities, via the present mask; Tables VI/VII),
`--noise gaussian|uniform --noise-on MODALITY` corrupts one modality (Table VIII), `--by-case` splits by
condition and sensor-failure case (Table IV). Writes evaluation.json, evaluation.md, per_class_iou.png,
subsets.png (with --subsets) and overlays.png to --out (default: <adapters folder>/eval_<split>[_noise]).
The model config comes from the adapter file; the data section and the SAM2 checkpoint from --config.

`--predict-only` (default split: test) scores nothing: it writes one prediction file per input in the data set's
benchmark format to --out (default: <adapters folder>/predict_<split>[_noise]), see `training.predict`.
The adapter file's content hash is checked (`--no-verify` for files made elsewhere). Exit status: 0 done; 2 bad
config, data, adapters or output, or non-finite model output, reported in one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mlesam_core.config_io import ConfigError
from mlesam_core.data.classes import get_class_table
from mlesam_core.data.collate import ModalityCollate
from mlesam_core.evaluation import EvaluationResult, evaluate, subset_name
from mlesam_core.host_memory import retain_freed_memory
from training.cli_errors import EXIT_BAD_INPUT, EXPECTED_ERRORS, error_line
from training.config import TrainConfig, load_train_config, resolve_path
from training.data import build_dataset, check_data_against_model, unwrap_dataset
from training.distributed import pick_device
from training.eval_request import EvalRequest, parse_subsets, requested_subsets
from training.model_setup import build_training_model
from training.predict import predict_split
from training.reporting import write_report

log = logging.getLogger("training.evaluate")


def load_evaluated_model(config: TrainConfig, request: EvalRequest) -> tuple[Any, torch.nn.Module, torch.device]:
    """(model config, model with the adapters loaded, device) of `request.adapters`, checked against the data."""
    from mlesam_core.model import load_adapters
    from mlesam_core.model.adapters import adapter_config

    adapters = resolve_path(request.adapters)
    model_config = adapter_config(adapters)  # validated, sam2.overrides included, before anything is built
    log_model_config_source(adapters, model_config, config.model)
    check_data_against_model(config.data, model_config)
    modalities = model_config.modalities
    if request.noise is not None and request.noise_on not in modalities:
        raise ConfigError(f"--noise-on: must name one of the model's modalities ({', '.join(modalities)}), "
                          f"got {request.noise_on!r}")
    device = pick_device(config.device)
    model = build_training_model(config, model_config, device)
    load_adapters(model, adapters, verify=request.verify)
    return model_config, model.eval(), device


def log_model_config_source(adapters: Path, embedded: Any, configured: Any) -> None:
    """Say which model config is evaluated and why: the one embedded in the adapter file, which its weights were
    trained with; --config's model section is not used, and a warning names the keys where it differs."""
    from mlesam_core.model.config import config_differences, flat_config

    keys = [difference.split(":", 1)[0] for difference in config_differences(embedded, configured)]
    if not keys:
        log.info("model config: the one embedded in %s (its weights were trained with it; --config's model section "
                 "is the same)", adapters)
        return
    ours, theirs = flat_config(embedded), flat_config(configured)
    log.warning("model config: the one embedded in %s, which its weights were trained with; --config's model "
                "section differs and is not used: %s", adapters,
                "; ".join(f"{key}: {theirs.get(key, '<absent>')!r} in --config, {ours.get(key, '<absent>')!r} in the "
                          f"adapters" for key in keys))


def evaluate_adapters(config: TrainConfig, request: EvalRequest) -> tuple[EvaluationResult, Any]:
    """Build the model of `request.adapters` and evaluate it on `config.data` (returns result, model config)."""
    from mlesam_core.data.transforms import eval_transform

    model_config, model, device = load_evaluated_model(config, request)
    modalities = model_config.modalities
    size = (model_config.image_size, model_config.image_size)
    transform = eval_transform(size, modalities, noise=request.noise, noise_on=request.noise_on, seed=request.seed)
    dataset = build_dataset(config.data, request.split, modalities, transform, request.max_samples)
    if not unwrap_dataset(dataset)[0].with_labels:
        raise ConfigError(f"--split {request.split}: the {config.data.format} {request.split} split has no labels "
                          f"(withheld for the benchmark server); --predict-only writes its predictions instead")
    loader = DataLoader(dataset, batch_size=request.batch_size, shuffle=False, num_workers=config.data.workers,
                        collate_fn=ModalityCollate(modalities), pin_memory=device.type == "cuda")
    result = evaluate(model, loader, modalities, get_class_table(config.data.format).names,
                      subsets=requested_subsets(request, modalities),
                      group_by=("condition", "case") if request.by_case else (), device=device,
                      precision=config.optim.precision, ignore_index=model_config.ignore_index,
                      max_examples=request.examples, progress=request.progress)
    return result, model_config


def default_out_dir(request: EvalRequest, kind: str = "eval") -> Path:
    """<adapters folder>/<kind>_<split>[_<noise>_<modality>] (kind: eval, predict)."""
    suffix = f"_{request.noise}_{request.noise_on}" if request.noise else ""
    return Path(request.adapters).parent / f"{kind}_{request.split}{suffix}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the train config YAML (data section, SAM2 checkpoint)")
    parser.add_argument("--adapters", required=True, help="adapters.safetensors written by training")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the train config")
    parser.add_argument("--sam2-checkpoint", help="official SAM2 checkpoint (overrides sam2_checkpoint)")
    parser.add_argument("--allow-random-init", action="store_true",
                        help="evaluate on the seeded random backbone (adapters trained that way)")
    parser.add_argument("--split", help="data split (default: val; test with --predict-only)")
    parser.add_argument("--subsets", default="full",
                        help="'full' (trained modalities only), 'all' (every non-empty subset) or e.g. 'rgb,rgb+depth'")
    parser.add_argument("--noise", choices=("gaussian", "uniform"), help="corrupt --noise-on (Table VIII)")
    parser.add_argument("--noise-on", help="the modality to corrupt")
    parser.add_argument("--by-case", action="store_true", help="scores per condition and per failure case")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-samples", type=int, help="evaluate an evenly spaced subset of the split")
    parser.add_argument("--examples", type=int, default=4, help="coloured overlays to draw")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--predict-only", action="store_true",
                        help="write prediction files in the benchmark's format (labels are not read) instead of scores")
    parser.add_argument("--no-verify", action="store_true",
                        help="load the adapters without checking their content hash (files made elsewhere)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.split is None:
        args.split = "test" if args.predict_only else "val"
    if (args.noise is None) != (args.noise_on is None):
        parser.error("--noise and --noise-on go together")
    return args


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """Command-line entry point; returns the exit status. `own_process`: this process runs the command alone
    (`python -m`, torchrun), so it may set process-wide policy (the host allocator's, `mlesam_core.host_memory`)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.sam2_checkpoint:
        overrides.append(f"sam2_checkpoint={args.sam2_checkpoint}")
    if args.allow_random_init:
        overrides.append("allow_random_init=true")
    try:
        if own_process:
            retain_freed_memory()  # each batch's large buffers reused, not page-faulted in again
        config = load_train_config(args.config, overrides)
        request = EvalRequest(Path(args.adapters), args.split, "full", args.noise, args.noise_on, args.by_case,
                              args.batch_size, args.max_samples, args.examples, config.seed, not args.no_progress,
                              not args.no_verify)
        if args.subsets != "full":
            from mlesam_core.model.adapters import adapter_config

            request.subsets = parse_subsets(args.subsets, adapter_config(resolve_path(request.adapters)).modalities)
        if args.predict_only:
            out_dir = Path(args.out) if args.out else default_out_dir(request, "predict")
            summary = predict_split(config, request, load_evaluated_model(config, request), out_dir)
            log.info("%d predictions in %s (%d written now, %d there already)%s", summary.total, out_dir,
                     summary.written, summary.skipped,
                     f"; upload {', '.join(map(str, summary.archives))}" if summary.archives else "")
            return 0
        result, _ = evaluate_adapters(config, request)
        out_dir = Path(args.out) if args.out else default_out_dir(request)
        data = _write_evaluation(args, config, result, out_dir)
    except EXPECTED_ERRORS as exc:  # ConfigError, AdapterError, LabelError, ...: messages name the culprit
        log.error("%s", error_line(exc))
        return EXIT_BAD_INPUT
    full = data["all_modalities"]["miou"]
    log.info("%s: mIoU %.2f %% (absent classes = 0), %.2f %% (absent left out); report in %s",
             subset_name(result.modalities), 100 * (full["all_classes"] or 0), 100 * (full["present_classes"] or 0),
             out_dir)
    return 0


def _write_evaluation(args: argparse.Namespace, config: TrainConfig, result: EvaluationResult,
                      out_dir: Path) -> dict[str, Any]:
    noise = f", {args.noise} noise on {args.noise_on}" if args.noise else ""
    title = f"{Path(args.adapters).name} on {config.data.format} {args.split}{noise}"
    extra = {"adapters": str(args.adapters), "config": str(args.config), "split": args.split,
             "noise": {"kind": args.noise, "modality": args.noise_on} if args.noise else None}
    return write_report(result, get_class_table(config.data.format), out_dir, title, extra)


if __name__ == "__main__":
    sys.exit(main(own_process=True))
