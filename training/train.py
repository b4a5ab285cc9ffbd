"""Train MLE-SAM adapters: `python -m training.train --config config/train/<name>.yaml [key=value ...]`.

Options: `--out DIR` (sets out_dir), `--resume [PATH]` (default PATH: <out_dir>/checkpoints/last.pt; put a
bare `--resume` after the overrides; its content hash is checked, `--no-verify` skips that for files made
elsewhere). Several processes: `torchrun --nproc_per_node N -m training.train ...` (DDP; NCCL on GPUs, gloo on
CPU; only rank 0 writes). Exit status: 0 done; 2 bad config or data, a corrupt checkpoint, an unwritable output or
a diverged run (NaN loss), each reported in one line (what was saved before stays); 128 + signal number when
SIGINT/SIGTERM stopped the run (after saving `last`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("training.train")


def configure_logging() -> None:
    """INFO on rank 0, warnings only on the other torchrun processes."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="train config YAML (config/train/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=2e-4")
    parser.add_argument("--out", help="output folder (overrides out_dir)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                        help="resume from a checkpoint (default: <out_dir>/checkpoints/last.pt)")
    parser.add_argument("--no-verify", action="store_true",
                        help="resume from a checkpoint without checking its content hash (files made elsewhere)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs and metrics.jsonl only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """Command-line entry point; returns the exit status. `own_process`: this process runs the command alone
    (`python -m`, torchrun), so it may set process-wide policy (the host allocator's, `mlesam_core.host_memory`)."""
    args = parse_args(argv)
    configure_logging()
    from mlesam_core.host_memory import retain_freed_memory
    from training.cli_errors import EXIT_BAD_INPUT, EXPECTED_ERRORS, error_line
    from training.config import load_train_config
    from training.distributed import cleanup
    from training.loop import Trainer

    overrides = list(args.overrides) + ([f"out_dir={args.out}"] if args.out else [])
    try:
        if own_process:
            retain_freed_memory()  # each step's large buffers reused, not page-faulted in again
        config = load_train_config(args.config, overrides)
        resume = None
        if args.resume is not None:
            resume = Path(args.resume) if args.resume else Path(config.out_dir) / "checkpoints" / "last.pt"
        trainer = Trainer(config, resume, progress_bar=not args.no_progress, verify_checkpoint=not args.no_verify)
        summary = trainer.run()
    except EXPECTED_ERRORS as exc:  # messages name the culprit (config key, file, step)
        log.error("%s", error_line(exc))
        return EXIT_BAD_INPUT
    finally:
        cleanup()
    if summary.stopped_by_signal is not None:
        log.warning("stopped by signal %d at step %d of %d; continue with --resume", summary.stopped_by_signal,
                    summary.step, summary.total_steps)
        return 128 + summary.stopped_by_signal
    log.info("done: %d steps in %.1f s; best val mIoU %s at step %s; outputs in %s", summary.step, summary.seconds,
             f"{summary.best_metric:.4f}" if summary.best_metric is not None else "n/a", summary.best_step,
             summary.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(own_process=True))
