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
# ROS tests and the demo) spinning threads stall each other by orders of magnitude (docs/robot.md, "Threading").
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup test lint demo demo-weights standin clean-venv ros-tools colcon-build colcon-test lint-ament

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

# The quality gate CI runs before the tests: ruff over the tree, mypy on the packages (torch's types visible),
# and the ament linters the package declares (what `colcon test` runs: lint-ament below).
lint: setup
	@echo "[lint] ruff check ."
	@$(VENV)/bin/ruff check .
	@echo "[lint] mypy (pyproject.toml [tool.mypy])"
	@$(VENV)/bin/mypy
	@$(MAKE) --no-print-directory lint-ament

# `make demo` replays with the shipped demo weights (demo/assets/, checked against their record); TRAIN=1 trains
# them here first (about 20 minutes on 2 cores); SAM2_CHECKPOINT=sam2.1_hiera_tiny.pt trains on Meta's encoder.
demo: setup
	@$(PY) -m demo $(if $(TRAIN),--train,) $(if $(SAM2_CHECKPOINT),--sam2-checkpoint $(SAM2_CHECKPOINT),)

# the shipped demo weights: adapters for the stand-in encoder, trained on the demo's procedural training scenes,
# and their record (command, sha256, config, steps, seed, validation scores). DEMO_WEIGHTS_STEPS: a shorter run;
# DEMO_WEIGHTS_OUT: another folder than demo/assets.
demo-weights: setup
	@$(PY) -m demo.weights $(if $(DEMO_WEIGHTS_STEPS),--steps $(DEMO_WEIGHTS_STEPS),) \
		$(if $(DEMO_WEIGHTS_OUT),--out $(DEMO_WEIGHTS_OUT),)

# the shipped stand-in encoder as an official-format SAM2 checkpoint (what the stand-in benchmarks load)
standin: setup
	@$(PY) -m training.pretrain_backbone --from-encoder training/assets/standin_tiny_supervised.encoder.pt \
		--out runs/standin/standin_tiny_supervised.pt

clean-venv:
	rm -rf $(VENV) $(ROS_TOOLS_VENV)

# --- ROS tooling: colcon in its own venv (it wants setuptools<80), a fresh colcon workspace, the ament linters ---
# `make colcon-test` copies the package (tracked and untracked, not ignored, files) into a fresh workspace
# $(COLCON_WS)/src, runs `colcon build` and `colcon test` there and prints `colcon test-result`.
# LAUNCH_SRC / LAUNCH_ROS_SRC (checkouts of ros2/launch and ros2/launch_ros) add the real launch library when the
# tools venv is (re)built (tools/ros_tools_venv.py), for `python -m benchmarks.ros_soak --launcher launch`.
ROS_TOOLS_VENV := .venv-ros-tools
ROS_TOOLS_STAMP := $(ROS_TOOLS_VENV)/.setup-complete
COLCON_WS ?= build/colcon_ws
COLCON = $(abspath $(ROS_TOOLS_VENV))/bin/colcon

ros-tools: $(ROS_TOOLS_STAMP)

$(ROS_TOOLS_STAMP): $(STAMP) tools/ros_tools_venv.py tools/requirements-ros-tools.txt
	@$(PY) tools/ros_tools_venv.py --venv $(ROS_TOOLS_VENV) --project-venv $(VENV) \
		$(if $(LAUNCH_SRC),--launch-src $(LAUNCH_SRC) --launch-ros-src $(LAUNCH_ROS_SRC),)
	@touch $@

colcon-build: ros-tools
	@rm -rf $(COLCON_WS) && mkdir -p $(COLCON_WS)/src/mlesam_ros
	@git ls-files -z --cached --others --exclude-standard | \
		tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C $(COLCON_WS)/src/mlesam_ros
	cd $(COLCON_WS) && $(COLCON) build --packages-select mlesam_ros
	@test -x $(COLCON_WS)/install/mlesam_ros/lib/mlesam_ros/segment_node
	@test -f $(COLCON_WS)/install/mlesam_ros/share/mlesam_ros/launch/segment.launch.py

colcon-test: colcon-build
	cd $(COLCON_WS) && $(COLCON) test --packages-select mlesam_ros --return-code-on-test-failure \
		--event-handlers console_cohesion+; status=$$?; $(COLCON) test-result --all --verbose; exit $$status

lint-ament: setup
	@echo "[lint] ament_flake8 and ament_pep257 (as colcon test runs them)"
	@$(PY) -m pytest -q -p no:cacheprovider -m linter test/test_flake8.py test/test_pep257.py
