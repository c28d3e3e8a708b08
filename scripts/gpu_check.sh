#!/usr/bin/env bash
# The GPU check, one command on a machine with an NVIDIA GPU (`make gpu-check`):
#
#   1. finds the GPU (nvidia-smi -L); without one it says so and exits 0, having run nothing else;
#   2. sets up Python: .venv with a CUDA build of torch (torch==$TORCH_VERSION from the package index: the
#      default Linux wheel includes CUDA; a CPU build found there is replaced) and mtlrun with its dev and
#      bench extras, installing only what is missing;
#   3. prints nvidia-smi and torch's view of the device;
#   4. runs the GPU tests (pytest -m gpu);
#   5. runs the GPU sections of the speed benchmark (benchmarks/speed.py --device cuda --save) into
#      $OUT/results/speed_cuda_<gpu>_<section>.csv/.json, within what is left of the time budget.
#
# Everything it prints and writes goes under $OUT (default build/gpu-check): gpu_check.log (all output),
# nvidia-smi.txt, torch.txt, pytest-gpu.txt/.xml, bench.txt, results/, summary.txt. It keeps going when a
# step fails and exits 1 at the end if any did.
#
#   bash scripts/gpu_check.sh             # the check
#   bash scripts/gpu_check.sh --dry-run   # print what it would run; run nothing (any machine)
#
# Settings (environment): OUT, VENV (.venv), PYTHON (the interpreter a new venv is made from: python3.11,
# else python3), TORCH_VERSION (2.13.0), TORCH_INDEX_URL (an index for the torch wheel; default: pip's),
# GPU_CHECK_BUDGET_S (480: the whole check, installs included, aims to end within it), BENCH_ARGS (more
# arguments for speed.py, e.g. "--tasks 3 8 40"; by default T = 3 and 40), NVIDIA_SMI (nvidia-smi).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
OUT=${OUT:-$ROOT/build/gpu-check}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
BENCH_ARGS=${BENCH_ARGS:-}
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
BENCH_SECTIONS=step,memory,torchjd,methods,demo  # in this order: the most wanted first, within the budget
BENCH_TASKS="3 40"  # T; BENCH_ARGS="--tasks 3 8 40" overrides it (the last --tasks counts)
PY=$VENV/bin/python
START=$(date +%s)

if [[ ${1:-} == "--dry-run" ]]; then
    cat <<EOF
gpu-check --dry-run: the steps it would take here, none run:
  1. $NVIDIA_SMI -L   (no GPU: say so and exit 0)
  2. $PY (create $VENV if missing); torch==$TORCH_VERSION if torch sees no CUDA device;
     pip install -e ".[dev,bench]" if mtlrun, pytest or torchjd is missing
  3. $NVIDIA_SMI and torch's view of the device   -> nvidia-smi.txt, torch.txt
  4. $PY -m pytest -m gpu   -> pytest-gpu.txt, pytest-gpu.xml
  5. $PY benchmarks/speed.py --device cuda --only $BENCH_SECTIONS --tasks $BENCH_TASKS --save
       --results-dir \$OUT/results $BENCH_ARGS
     -> bench.txt, results/
  within ${BUDGET_S} s in all; everything under OUT=$OUT
EOF
    exit 0
fi
if [[ $# -gt 0 ]]; then
    echo "usage: bash scripts/gpu_check.sh [--dry-run]" >&2
    exit 2
fi

mkdir -p "$OUT" || exit 1
exec > >(tee "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
finish() {  # let tee write the last lines before the script's exit is seen
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
}
trap finish EXIT

elapsed() { echo $(($(date +%s) - START)); }
say() { printf '\n== gpu-check [%3ds] %s\n' "$(elapsed)" "$*"; }
declare -a RESULTS=()
record() { RESULTS+=("$1: $2"); }

say "1. the GPU"
if ! GPUS=$("$NVIDIA_SMI" -L 2>/dev/null) || [[ $GPUS != *GPU* ]]; then
    echo "gpu-check: no NVIDIA GPU here ($NVIDIA_SMI -L found none): nothing to check."
    echo "no GPU: nothing checked" >"$OUT/summary.txt"
    exit 0
fi
echo "$GPUS"

say "2. Python: $PY"
if [[ ! -x $PY ]]; then
    BASE=${PYTHON:-$(command -v python3.11 || command -v python3)}
    # a system Python that already has a CUDA torch lends it to the venv (no multi-GB download)
    if "$BASE" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        "$BASE" -m venv --system-site-packages "$VENV"
    else
        "$BASE" -m venv "$VENV"
    fi
    "$PY" -m pip install --quiet --upgrade pip
fi
cuda_torch() { "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
if cuda_torch; then
    record install "torch with CUDA already there"
else
    if "$PY" -c "import torch" 2>/dev/null; then
        echo "torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device: replacing it with torch==$TORCH_VERSION"
        "$PY" -m pip uninstall --yes --quiet torch
    fi
    "$PY" -m pip install --quiet ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION"
    if cuda_torch; then record install "torch==$TORCH_VERSION installed"; else record install "FAILED: torch sees no CUDA device"; fi
fi
if ! "$PY" -c "import mtlrun, pytest, torchjd" 2>/dev/null; then
    "$PY" -m pip install --quiet -e ".[dev,bench]" || record install "FAILED: pip install -e .[dev,bench]"
fi

say "3. the device"
"$NVIDIA_SMI" | tee "$OUT/nvidia-smi.txt"
"$PY" - <<'EOF' 2>&1 | tee "$OUT/torch.txt"
import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
print(f"cuda available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}: compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
          f"{p.multi_processor_count} SMs")
if torch.cuda.is_available():
    print(f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    x = torch.randn(1024, 1024, device="cuda")
    print(f"a matmul on the GPU: {float((x @ x).sum()):.3g} (ran)")
EOF
[[ ${PIPESTATUS[0]} -eq 0 ]] && record device "ok" || record device "FAILED"

say "4. GPU tests: pytest -m gpu"
timeout 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$OUT/pytest-gpu.xml" 2>&1 |
    tee "$OUT/pytest-gpu.txt"
case ${PIPESTATUS[0]} in
    0) record tests "passed" ;;
    5) record tests "no test collected" ;;
    124) record tests "FAILED: timed out after 240 s" ;;
    *) record tests "FAILED (see pytest-gpu.txt)" ;;
esac

LEFT=$((BUDGET_S - $(elapsed) - 15))
((LEFT < 90)) && LEFT=90
say "5. GPU benchmark (${LEFT} s left of the budget)"
# --budget-s: no section starts after it; timeout: the hard stop. Each section is saved as it ends.
# shellcheck disable=SC2086
PYTHONUNBUFFERED=1 timeout "$LEFT" "$PY" benchmarks/speed.py --device cuda --only "$BENCH_SECTIONS" \
    --tasks $BENCH_TASKS --save --results-dir "$OUT/results" --budget-s $((LEFT * 2 / 3)) $BENCH_ARGS 2>&1 |
    tee "$OUT/bench.txt"
case ${PIPESTATUS[0]} in
    0) record benchmark "done" ;;
    124) record benchmark "FAILED: stopped after ${LEFT} s (the sections that ended are saved)" ;;
    *) record benchmark "FAILED (see bench.txt)" ;;
esac
grep -h "^WARNING" "$OUT/bench.txt" >/dev/null 2>&1 && record benchmark "regression WARNINGs in bench.txt"

say "summary ($(elapsed) s)"
{
    printf '%s\n' "${RESULTS[@]}"
    echo "results: $OUT/results (to publish: copy them into benchmarks/results/ and run"
    echo "  python benchmarks/speed.py --sync-docs, which lists them on the Results page)"
} | tee "$OUT/summary.txt"
printf '%s\n' "${RESULTS[@]}" | grep -q FAILED && exit 1
exit 0
