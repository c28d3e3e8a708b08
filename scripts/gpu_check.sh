#!/usr/bin/env bash
# The GPU check, one command on a machine with an NVIDIA GPU (`make gpu-check`):
#
#   1. finds the GPU (nvidia-smi -L); without one it says so and exits 0, having run nothing else;
#   2. sets up Python, one of two ways:
#      - offline, when the wheel folder $GPU_CHECK_WHEELS (default .whl/ in the repo root) exists: the
#        machine's own python3, which must already hold a CUDA build of torch (nothing is downloaded, no
#        venv is made); the carried wheels are installed with --no-index --no-deps into a temporary folder
#        ($GPU_CHECK_SITE) and that folder and the repo root go on PYTHONPATH, so that `python -m mtlrun`,
#        the tests' `sys.executable -m mtlrun` and the repo's hydra_plugins/ import from the checkout. A
#        wheel that will not install is recorded and skipped, never retried;
#      - else from a package index: .venv with a CUDA build of torch (torch==$TORCH_VERSION: the default
#        Linux wheel includes CUDA; a CPU build found there is replaced) and mtlrun with its dev and bench
#        extras, installing only what is missing;
#   3. prints nvidia-smi and torch's view of the device;
#   4. runs the GPU tests (pytest -m gpu);
#   5. runs the GPU sections of the speed benchmark (benchmarks/speed.py --device cuda --save), within what
#      is left of the time budget, comparing with the tables saved in benchmarks/results/; its tables
#      (speed_cuda_<gpu>_<section>.csv/.json) are packed into $OUT/results.tgz.
#
# Everything it prints and writes goes under $OUT (default build/gpu-check), at most 8 files and no folder:
# gpu_check.log (all output), nvidia-smi.txt, torch.txt, pytest-gpu.txt/.xml, bench.txt, results.tgz,
# summary.txt. To publish the tables: tar -xzf $OUT/results.tgz -C benchmarks/results, then
# python benchmarks/speed.py --sync-docs. It keeps going when a step fails and exits 1 at the end if any did.
#
#   bash scripts/gpu_check.sh             # the check
#   bash scripts/gpu_check.sh --dry-run   # print what it would run (offline or venv); run nothing (any machine)
#
# A session lent a GPU machine with no internet (x86-64, python3 3.12 with a CUDA torch, pandas, pytest...,
# no hydra-core/omegaconf/torchjd): first, in its checkout, where the package index is reachable,
#   bash scripts/gpu_wheels.sh          # fills the git-ignored .whl/ (about 8 MB of wheels for CPython 3.12)
# then one run on the GPU machine, in the repo root, carrying .whl beside the working tree (the device
# tool: carry [".whl"], command "bash scripts/gpu_check.sh", timeout_s 600; it sets OUT, and what the check
# writes there, 8 files, comes back). It ends within GPU_CHECK_BUDGET_S (480 s) plus the machine's start.
#
# Settings (environment): OUT, GPU_CHECK_WHEELS (.whl), GPU_CHECK_SITE (where the wheels are installed; default
# a new temporary folder), PYTHON (offline: the interpreter, python3; else the one a new venv is made from:
# python3.11, else python3), VENV (.venv), TORCH_VERSION (2.13.0), TORCH_INDEX_URL (an index for the torch
# wheel; default: pip's), GPU_CHECK_BUDGET_S (480: the whole check, installs included, aims to end within
# it), BENCH_ARGS (more arguments for speed.py, e.g. "--tasks 3 8 40"; by default T = 3 and 40), NVIDIA_SMI
# (nvidia-smi).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
OUT=${OUT:-$ROOT/build/gpu-check}
VENV=${VENV:-.venv}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
SITE=${GPU_CHECK_SITE:-}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
BENCH_ARGS=${BENCH_ARGS:-}
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
BENCH_SECTIONS=step,memory,torchjd,methods,demo  # in this order: the most wanted first, within the budget
BENCH_TASKS="3 40"  # T; BENCH_ARGS="--tasks 3 8 40" overrides it (the last --tasks counts)
if [[ -d $WHEELS ]]; then
    OFFLINE=1
    PY=${PYTHON:-python3}
    PY=$(command -v "$PY" || echo "$PY")
else
    OFFLINE=0
    PY=$VENV/bin/python
fi
START=$(date +%s)

if [[ ${1:-} == "--dry-run" ]]; then
    echo "gpu-check --dry-run: the steps it would take here, none run:"
    echo "  1. $NVIDIA_SMI -L   (no GPU: say so and exit 0)"
    if ((OFFLINE)); then
        n=$(find "$WHEELS" -maxdepth 1 -type f -name '*.whl' | wc -l)
        cat <<EOF
  2. offline ($WHEELS/ exists, $n wheel(s)): $PY as it is, whose torch must see a CUDA device
     (nothing is downloaded); pip install --no-index --no-deps --target ${SITE:-<a new temporary folder>}
     $WHEELS/*.whl (a wheel that fails is recorded and skipped); PYTHONPATH=<that folder>:$ROOT
EOF
    else
        cat <<EOF
  2. $PY (create $VENV if missing); torch==$TORCH_VERSION if torch sees no CUDA device;
     pip install -e ".[dev,bench]" if mtlrun, pytest or torchjd is missing
     (no $WHEELS/ here: with one, the machine's python3 and the wheels in it, offline)
EOF
    fi
    cat <<EOF
  3. $NVIDIA_SMI and torch's view of the device   -> nvidia-smi.txt, torch.txt
  4. $PY -m pytest -m gpu   -> pytest-gpu.txt, pytest-gpu.xml
  5. $PY benchmarks/speed.py --device cuda --only $BENCH_SECTIONS --tasks $BENCH_TASKS --save
       --results-dir <a temporary folder> --baseline-dir benchmarks/results${BENCH_ARGS:+ $BENCH_ARGS}
     -> bench.txt, results.tgz (its tables)
  within ${BUDGET_S} s in all; everything under OUT=$OUT (at most 8 files: gpu_check.log, summary.txt too)
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
MADE=()  # temporary folders of its own, removed at the end
finish() {  # let tee write the last lines before the script's exit is seen
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
    ((${#MADE[@]})) && rm -rf "${MADE[@]}"
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

cuda_torch() { "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
PIP_OFFLINE=(-m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade
    --disable-pip-version-check)
if ((OFFLINE)); then
    say "2. Python, offline: $PY with the wheels in $WHEELS/"
    "$PY" --version
    if cuda_torch; then
        record install "$PY: torch $("$PY" -c 'import torch; print(torch.__version__)') with CUDA"
    else
        record install "FAILED: $PY's torch sees no CUDA device (offline: nothing is downloaded)"
    fi
    if [[ -z $SITE ]]; then
        SITE=$(mktemp -d "${TMPDIR:-/tmp}/mtlrun-gpu-site.XXXXXX") && MADE+=("$SITE") || SITE=/tmp/mtlrun-gpu-site
    fi
    mkdir -p "$SITE"
    mapfile -t WHLS < <(find "$WHEELS" -maxdepth 1 -type f -name '*.whl' | sort)
    if ((${#WHLS[@]} == 0)); then
        record install "FAILED: no wheel in $WHEELS/ (make them with bash scripts/gpu_wheels.sh)"
    elif timeout 120 "$PY" "${PIP_OFFLINE[@]}" --target "$SITE" "${WHLS[@]}"; then
        record install "${#WHLS[@]} wheel(s) from $WHEELS/ into $SITE"
    else
        # one at a time: a wheel that cannot install here (another Python, platform) costs only itself
        echo "installing them together failed: now one at a time"
        BAD=()
        for whl in "${WHLS[@]}"; do
            timeout 60 "$PY" "${PIP_OFFLINE[@]}" --target "$SITE" "$whl" || BAD+=("$(basename "$whl")")
        done
        record install "FAILED: $((${#WHLS[@]} - ${#BAD[@]})) of ${#WHLS[@]} wheel(s) installed; not: ${BAD[*]}"
    fi
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    echo "PYTHONPATH=$PYTHONPATH"
    # what the tests and the benchmark import; the versions as the run uses them
    "$PY" - <<'EOF' 2>&1
import importlib, importlib.metadata as md
for mod, dist in [("mtlrun", None), ("hydra_plugins.mtlrun_parallel_launcher", None), ("hydra", "hydra-core"),
                  ("omegaconf", "omegaconf"), ("torch", "torch"), ("torchmetrics", "torchmetrics"),
                  ("pandas", "pandas"), ("pytest", "pytest"), ("pytest_timeout", "pytest-timeout"),
                  ("torchjd", "torchjd"), ("quadprog", "quadprog"), ("cvxpy", "cvxpy")]:
    try:
        m = importlib.import_module(mod)
        where = getattr(m, "__file__", None) or list(getattr(m, "__path__", []))
        print(f"  {mod:40s} {md.version(dist) if dist else '':12s} {where}")
    except Exception as e:
        print(f"  {mod:40s} MISSING: {type(e).__name__}: {e}")
EOF
    if ! "$PY" -c "import mtlrun, hydra, omegaconf, hydra_plugins.mtlrun_parallel_launcher" 2>/dev/null; then
        record install "FAILED: mtlrun or Hydra does not import"
    fi
    "$PY" -c "import torchjd" 2>/dev/null || record install "torchjd missing: the torchjd comparison is skipped"
else
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
PYTEST_ENV=()
PYTEST_PLUGINS=()
if ((OFFLINE)); then
    # the machine's python3 holds many pytest plugins: load only the one the test config uses (timeout)
    PYTEST_ENV=(PYTEST_DISABLE_PLUGIN_AUTOLOAD=1)
    "$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_PLUGINS=(-p pytest_timeout)
fi
env "${PYTEST_ENV[@]}" timeout 240 "$PY" -m pytest "${PYTEST_PLUGINS[@]}" -m gpu -q -p no:cacheprovider \
    --junitxml "$OUT/pytest-gpu.xml" 2>&1 | tee "$OUT/pytest-gpu.txt"
TESTS_RC=${PIPESTATUS[0]}
TESTED=$(grep -E "(passed|failed|skipped|error|deselected).* in [0-9.]+s" "$OUT/pytest-gpu.txt" | tail -1 | tr -d '=')
TESTED=${TESTED# }
case $TESTS_RC in
    0) record tests "passed (${TESTED% })" ;;
    5) record tests "no test collected" ;;
    124) record tests "FAILED: timed out after 240 s" ;;
    *) record tests "FAILED (see pytest-gpu.txt): $TESTED" ;;
esac

LEFT=$((BUDGET_S - $(elapsed) - 15))
((LEFT < 90)) && LEFT=90
say "5. GPU benchmark (${LEFT} s left of the budget)"
# Its tables go to a folder outside $OUT, packed into $OUT/results.tgz at the end (what comes back from a
# lent machine is at most 8 files, none deeper than 2 folders).
TABLES=$(mktemp -d "${TMPDIR:-/tmp}/mtlrun-gpu-results.XXXXXX") && MADE+=("$TABLES") || TABLES=$OUT/results
# --budget-s: no section starts after it; timeout: the hard stop. Each section is saved as it ends.
# shellcheck disable=SC2086
PYTHONUNBUFFERED=1 timeout "$LEFT" "$PY" benchmarks/speed.py --device cuda --only "$BENCH_SECTIONS" \
    --tasks $BENCH_TASKS --save --results-dir "$TABLES" --baseline-dir benchmarks/results \
    --budget-s $((LEFT * 2 / 3)) $BENCH_ARGS 2>&1 | tee "$OUT/bench.txt"
case ${PIPESTATUS[0]} in
    0) record benchmark "done" ;;
    124) record benchmark "FAILED: stopped after ${LEFT} s (the sections that ended are saved)" ;;
    *) record benchmark "FAILED (see bench.txt)" ;;
esac
grep -h "^WARNING" "$OUT/bench.txt" >/dev/null 2>&1 && record benchmark "regression WARNINGs in bench.txt"
if [[ -n $(ls -A "$TABLES" 2>/dev/null) ]]; then
    tar -czf "$OUT/results.tgz" -C "$TABLES" . && record tables "$(ls "$TABLES" | tr '\n' ' ')-> results.tgz"
else
    record tables "none saved"
fi

say "summary ($(elapsed) s)"
{
    printf '%s\n' "${RESULTS[@]}"
    if [[ -f $OUT/results.tgz ]]; then
        echo "to publish the tables: tar -xzf $OUT/results.tgz -C benchmarks/results, then"
        echo "  python benchmarks/speed.py --sync-docs, which lists them on the Results page"
    fi
} | tee "$OUT/summary.txt"
printf '%s\n' "${RESULTS[@]}" | grep -q FAILED && exit 1
exit 0
