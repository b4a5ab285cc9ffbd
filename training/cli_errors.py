"""What the training and evaluation commands do with an expected failure: one line naming it, exit status 2.

Expected failures are bad configs and data (ConfigError, LabelError, AdapterError, CheckpointError, ...: all
ValueErrors), missing or unwritable files (OSError) and a diverged run (FloatingPointError). Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError)


def error_line(exc: BaseException) -> str:
    """The one-line message of `exc`; for an error re-raised from a DataLoader worker (whose message carries the
    worker's traceback) the original exception's last line."""
    text = str(exc).strip() or type(exc).__name__
    if "Original Traceback" in text:
        text = text.splitlines()[-1].strip()
    return " ".join(text.split())


__all__ = ["EXIT_BAD_INPUT", "EXPECTED_ERRORS", "error_line"]
