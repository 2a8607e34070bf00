#!/usr/bin/env bash
# The GPU checks of docs/performance.md ("GPU checks"), in one command for a lent CUDA machine:
# the CUDA tests, exact Score-CAM against the reference loop, and prediction throughput with
# its share of the dense bf16 matmul rate. Each step has a time limit; the whole fits in about
# 9 minutes. Logs and JSON results go to OUT (first argument, else $OUT, else /tmp/artseg-gpu).
#
#   bash benchmarks/gpu_checks.sh "$OUT"
#
# The machine needs python3 with torch (CUDA), numpy, scipy, scikit-image, tifffile, pillow,
# safetensors, tqdm and pytest; napari is not needed (the package runs from src/ here).
# ARTSEG_CHECK_DEVICE=cpu runs the same steps on the CPU (to check this script without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/artseg-gpu}}
device=${ARTSEG_CHECK_DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ARTSEG_TEST_DEVICE="$device"

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log to OUT/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (at most ${limit} s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    echo "   exit $rc after $(( $(date +%s) - start )) s"
    tail -n 30 "$out/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} > "$out/machine.txt"
cat "$out/machine.txt"
step tests 150 "$py" -m pytest -q -p no:cacheprovider tests/gpu \
    tests/core/test_scorecam.py::test_cuda_matches_cpu_and_bounds_the_batch
step scorecam 180 "$py" benchmarks/bench_scorecam.py --quick --modes exact --device "$device" \
    --json "$out/perf_scorecam_$device.json"
step predict 210 "$py" benchmarks/bench_predict.py --quick --device "$device" \
    --json "$out/perf_predict_$device.json"
