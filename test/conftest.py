"""Shared test setup: deterministic, CPU-only, small thread count (CI machines have 2 cores).

Cross-area fixtures live in test/fixtures/ (one module per area) and are registered here.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the node tests run several processes on 2 cores

import torch  # noqa: E402

torch.set_num_threads(2)

pytest_plugins = ["fixtures.data", "fixtures.model", "fixtures.ros"]
