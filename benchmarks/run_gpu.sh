#!/usr/bin/env bash
# All of issue 8's GPU speed results, on a machine with one H100 (about 15 minutes, most of it torch.compile).
# Run from anywhere; results land in benchmarks/results/ (*_<gpu name>.json) and speed.md is rewritten. The
# environment needs a CUDA build of torch (never torchvision), e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# (on a fresh checkout; an existing CPU .venv: `make clean-venv` first). Random frozen weights are used (timings do
# not depend on them); set SAM2_CHECKPOINT=/path/sam2.1_hiera_base_plus.pt to time the node with the real ones.
#
#   bash benchmarks/run_gpu.sh [STEP ...]   STEP: tests encoder encoder-compile node train export summary
#                                            (default: all)
#   DRY_RUN=1 bash benchmarks/run_gpu.sh ...  prints the commands without running them (no GPU needed)
#
# `export` times the exported ONNX graphs under onnxruntime's TensorRT and CUDA providers beside eager and compiled
# torch, and the first frame after a sensor drops out with and without the warm-up (benchmarks/export_speed.py,
# docs/deploy.md); it needs onnxruntime's GPU build in place of the CPU one (`pip install onnxruntime-gpu==<the
# onnxruntime version of requirements.txt>`, and TensorRT's libraries for the TensorRT provider).
#
# `encoder` times every case eagerly; `encoder-compile` adds torch.compile for the target's case (Hiera-B+, 1024²,
# bf16, M = 1..4: eight inductor builds, several minutes). Where a command may last at most 10 minutes, run the
# steps in three calls: `tests encoder`, `encoder-compile`, `node train summary`. If $OUT is set (the lent GPU machine of our workplace), every result file is
# also copied there. On that machine (its own python3 with a CUDA torch, no network): carry the wheels that
# benchmarks/device_wheels.sh fetches and run `PY=python3 bash benchmarks/run_gpu.sh ...` (see that script).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(tests encoder encoder-compile node train export summary)
for step in "${STEPS[@]}"; do
  case "$step" in tests|encoder|encoder-compile|node|train|export|summary) ;;
    *) echo "unknown step '$step' (steps: tests encoder encoder-compile node train export summary)" >&2; exit 2 ;;
  esac
done
run() {  # a step's command, or with DRY_RUN set only its echo
  if [ -n "${DRY_RUN:-}" ]; then echo "+ $*"; else "$@"; fi
}
STARTED=$(mktemp)  # results written after this are this run's
run "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
NODE_ARGS=(${SAM2_CHECKPOINT:+--sam2-checkpoint "$SAM2_CHECKPOINT"})

for step in "${STEPS[@]}"; do
  case "$step" in
    tests)  # the CUDA fast path computes what the reference path computes (CUDA graphs, HHA on the device)
      run "$PY" -m pytest -q -m gpu test/model/test_fast_path.py test/core/test_sensor_encodings.py ;;
    encoder)
      run "$PY" -m benchmarks.encoder --device cuda --compile off --profile ;;
    encoder-compile)
      run "$PY" -m benchmarks.encoder --device cuda --sizes 1024 --precisions bf16 --compile on \
          --out benchmarks/results/encoder_compile_gpu.json ;;
    node)
      run "$PY" -m benchmarks.node_pipeline --device cuda --profile --post-variants "${NODE_ARGS[@]}"
      run "$PY" -m benchmarks.node_pipeline --device cuda --profile "${NODE_ARGS[@]}" --set model.cuda_graphs=true \
          --out benchmarks/results/node_pipeline_cuda_graphs_gpu.json ;;
    train)
      run "$PY" -m benchmarks.train_step --device cuda --estimate-memory ;;
    export)  # onnxruntime on the GPU: TensorRT (fp32 engines), then the CUDA provider alone
      run "$PY" -m benchmarks.export_speed --device cuda --variants eager,compiled,onnxruntime \
          --providers TensorrtExecutionProvider CUDAExecutionProvider --out benchmarks/results/export_speed_tensorrt_gpu.json
      run "$PY" -m benchmarks.export_speed --device cuda --variants eager,onnxruntime \
          --providers CUDAExecutionProvider --out benchmarks/results/export_speed_cuda_gpu.json ;;
    summary)
      run "$PY" -m benchmarks.speed_summary ;;
  esac
  if [ -n "${OUT:-}" ] && [ -z "${DRY_RUN:-}" ]; then
    find benchmarks/results -maxdepth 1 -newer "$STARTED" \( -name '*.json' -o -name 'speed.md' \) -exec cp {} "$OUT"/ \;
  fi
done
echo "done: commit benchmarks/results/*.json and benchmarks/results/speed.md"
