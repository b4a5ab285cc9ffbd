"""Command line: write procedural street scenes in the DELIVER layout."""

from __future__ import annotations

import argparse
import logging

from mlesam_core.data.synthetic.generate import generate_dataset
from mlesam_core.host_memory import retain_freed_memory


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and generate the data set."""
    parser = argparse.ArgumentParser(prog="python -m mlesam_core.data.synthetic",
                                     description="Procedural multi-modal street scenes in the DELIVER layout.")
    parser.add_argument("--out", required=True, help="output root (DELIVER layout)")
    parser.add_argument("--size", type=int, default=256, help="image height = width in pixels")
    parser.add_argument("--train", type=int, default=100, help="number of training samples")
    parser.add_argument("--val", type=int, default=20, help="number of validation samples")
    parser.add_argument("--test", type=int, default=20, help="number of test samples")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same data)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering in parallel")
    parser.add_argument("--png-compression", type=int, default=0, choices=range(10),
                        help="PNG zlib level (default 0 = stored: fastest; 1 and up: several times smaller files, "
                             "slower to write)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        retain_freed_memory()  # checks MLESAM_HOST_MEMORY before anything is written
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    # this process keeps freed memory already (above); the workers set it themselves
    generate_dataset(args.out, args.size, {"train": args.train, "val": args.val, "test": args.test}, args.seed,
                     args.workers, args.png_compression, tune_allocator=False)


if __name__ == "__main__":
    main()
