# One setup path for everyone: `make setup` builds .venv (idempotent), `make test` runs the suite,
# `make demo` runs the end-to-end demo on procedural scenes. Override PYTHON or TORCH_SPEC if needed,
# e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" on a GPU machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH_SPEC ?= torch==2.13.0
SAM2_SPEC ?= rf-sam-2==1.0.3
PIP_VERSION := 26.3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-complete
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# Idle OpenMP threads sleep instead of spinning: on a small shared CPU (2 cores here, several processes in the
# ROS tests and the demo) spinning threads stall each other by orders of magnitude (README, "Performance").
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup test lint demo clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt setup.py Makefile
	@echo "[setup] virtual environment $(VENV) (python: $(PYTHON))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] pip $(PIP_VERSION) (a fresh venv brings an old pip without PEP 660 editable installs)"
	@$(PIP) pip==$(PIP_VERSION)
	@echo "[setup] $(TORCH_SPEC) (CPU build here; never torchvision)"
	@$(PIP) $(TORCH_SPEC)
	@echo "[setup] sam2 modelling code ($(SAM2_SPEC), installed without its torchvision requirement)"
	@$(PIP) --no-deps $(SAM2_SPEC)
	@echo "[setup] pinned requirements (OpenCV, rosbags, rclpy Jazzy wheels, pytest, ...)"
	@$(PIP) -r requirements.txt
	@echo "[setup] mlesam_core + mlesam_ros (editable)"
	@PYTHONWARNINGS=ignore $(PIP) --no-deps --no-build-isolation --use-pep517 -e .
	@$(PY) -c "import torch, sam2, cv2, rclpy, rosbags, mlesam_core, mlesam_ros; print('[setup] ok: torch', torch.__version__)"
	@touch $(STAMP)

test: setup
	@echo "[test] running the test suite (CPU only, loopback-only DDS)"
	@$(PY) -m pytest

# The quality gate CI runs before the tests: ruff over the tree, mypy on the packages (torch's types visible).
lint: setup
	@echo "[lint] ruff check ."
	@$(VENV)/bin/ruff check .
	@echo "[lint] mypy (pyproject.toml [tool.mypy])"
	@$(VENV)/bin/mypy

demo: setup
	@$(PY) -m demo $(if $(SAM2_CHECKPOINT),--sam2-checkpoint $(SAM2_CHECKPOINT),)

clean-venv:
	rm -rf $(VENV)
