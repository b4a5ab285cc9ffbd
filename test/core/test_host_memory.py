"""retain_freed_memory: freed host memory is reused by the next frame instead of being page-faulted in again."""

import os
import subprocess
import sys

# Allocates, touches and frees sixteen 4 MiB arrays 10 times (as the HHA encoding of a 1024² depth image does
# with its temporaries), then prints the minor page faults of the last 9 rounds and whether the policy was applied.
# Run in a fresh process per policy: the policy holds from process start.
PROBE = """
import resource, numpy as np
from mlesam_core.host_memory import retain_freed_memory
applied = retain_freed_memory()
def round_():
    arrays = [np.empty(2**20, np.float32) for _ in range(16)]
    for a in arrays:
        a.fill(1.0)
    del arrays
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    round_()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 16 * 4 * 2**20 // 4096  # pages of one round's 64 MiB


def probe(policy):
    env = {**os.environ, "MLESAM_HOST_MEMORY": policy}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    if done.returncode:
        return done.returncode, done.stderr
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


def test_retained_memory_is_reused_without_page_faults():
    applied, faults = probe("retain")
    assert applied is True
    assert faults < PAGES // 10  # nine rounds cost under a tenth of one round's pages (measured: 0)


def test_the_default_policy_faults_every_round_in_again():
    applied, faults = probe("default")
    assert applied is False
    assert faults >= 9 * PAGES // 4  # every round pays a good part of its pages again (measured: half)


def test_an_unknown_policy_is_refused_naming_the_variable():
    code, stderr = probe("sometimes")
    assert code != 0 and "MLESAM_HOST_MEMORY: must be one of retain, default, got 'sometimes'" in stderr


def test_the_replay_refuses_a_bad_policy_and_a_missing_bag_before_loading_a_model(tmp_path):
    def replay(env_policy):
        env = {**os.environ, "MLESAM_HOST_MEMORY": env_policy}
        return subprocess.run([sys.executable, "-m", "mlesam_ros.replay", "--bag", str(tmp_path / "none"), "--out",
                               str(tmp_path / "out"), "--allow-random-init"], env=env, capture_output=True,
                              text=True, timeout=120)

    bad = replay("sometimes")
    assert bad.returncode == 2 and "error: MLESAM_HOST_MEMORY: must be one of retain, default" in bad.stderr
    missing = replay("retain")
    assert missing.returncode == 2 and f"error: bag not found: {tmp_path / 'none'}" in missing.stderr
    assert "loading model" not in missing.stderr


def test_training_evaluation_and_generator_commands_refuse_a_bad_policy_in_one_line(tmp_path):
    # `python -m training.train|evaluate` and the scene generator set the policy for their own process (a test
    # calling main() or generate_dataset does not)
    env = {**os.environ, "MLESAM_HOST_MEMORY": "sometimes"}
    for command in (["training.train", "--config", "config/train/synthetic_cpu.yaml", "--out", str(tmp_path / "run")],
                    ["training.evaluate", "--config", "config/train/synthetic_cpu.yaml", "--adapters",
                     str(tmp_path / "none.safetensors")],
                    ["mlesam_core.data.synthetic", "--out", str(tmp_path / "run"), "--size", "32", "--train", "1"]):
        done = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (command, done.stderr)
        assert "MLESAM_HOST_MEMORY: must be one of retain, default, got 'sometimes'" in done.stderr
        assert not (tmp_path / "run").exists()  # refused before anything was written
