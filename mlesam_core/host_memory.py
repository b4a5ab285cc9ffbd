"""How a per-frame process (the ROS node, bag replay; training and evaluation per step, the scene generator per
sample) keeps the host memory it frees for the next frame.

Each frame allocates and frees the same large arrays (decoded images, the HHA encoding's temporaries, the logits
upsampled to the sensor size). glibc's malloc serves blocks of 128 KiB and more with a fresh `mmap` and hands
them back to the kernel on `free`, and trims the heap top: every frame then pays page faults on memory it just
gave back. `retain_freed_memory` tells malloc to serve large blocks from the heap and keep what is freed, and
puts every thread on the main heap (threads that start afterwards), so a steady stream of same-sized frames
reuses the same memory (`python -m benchmarks.host_memory` measures the node's per-frame work both ways;
figures in docs/robot.md; `python -m benchmarks.recipe_step` a training step, docs/training.md). The price:
the process keeps its peak heap size instead of returning freed memory to the system.

Call it once at process start, before threads start; the environment variable MLESAM_HOST_MEMORY=default skips
it. On a C library without `mallopt` (not glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
ENV_VAR = "MLESAM_HOST_MEMORY"
POLICIES = ("retain", "default")


def retain_freed_memory() -> bool:
    """Keep freed host memory for reuse (see the module docstring); True when applied."""
    policy = os.environ.get(ENV_VAR, "retain")
    if policy not in POLICIES:
        raise ValueError(f"{ENV_VAR}: must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "default":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        log.debug("host memory: this C library has no mallopt; keeping its default policy")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = all(mallopt(option, value) == 1 for option, value in
                  ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_ARENA_MAX, 1)))
    if not applied:
        log.warning("host memory: mallopt refused a setting; freed memory may go back to the system each frame")
    return applied


__all__ = ["retain_freed_memory", "ENV_VAR", "POLICIES"]
