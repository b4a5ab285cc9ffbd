"""Rerunnable benchmarks: each module runs as `python -m benchmarks.<name>` from the repository root and writes JSON
to benchmarks/results/."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def command_line() -> str:
    """How this process was started, as a user would retype it (`python -m benchmarks.<name> ARGS`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = f"-m {spec.name}" if spec is not None and spec.name else shlex.quote(sys.argv[0])
    return f"python {program} {shlex.join(sys.argv[1:])}".rstrip()


def module_command(name: str, *args: str) -> list[str]:
    """argv that runs benchmark module `name` in a fresh interpreter (run with cwd=REPO_ROOT)."""
    return [sys.executable, "-m", f"benchmarks.{name}", *args]
