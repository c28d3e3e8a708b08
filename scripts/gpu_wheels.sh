#!/usr/bin/env bash
# Fills .whl/ with the wheels that a GPU machine with no internet lacks for `bash scripts/gpu_check.sh`
# (pytest -m gpu and benchmarks/speed.py --device cuda), run HERE, where the package index can be reached.
#
# The machine it is made for (a lent GPU machine): x86-64 Linux, python3 3.12 with torch (CUDA), numpy,
# pandas, scipy, scikit-learn, matplotlib, rich, pyyaml, tabulate, torchmetrics, pyarrow, pytest and
# pytest-timeout already there, but no Hydra, OmegaConf or TorchJD. So .whl/ holds:
#   - hydra-core, omegaconf and antlr4-python3-runtime (mtlrun's own dependencies); antlr4 4.9.3 is
#     published as an sdist only: its wheel is built here (pure Python, so it works there);
#   - torchjd 0.18.0 (the benchmark's torchjd section, the `bench` extra) with what UPGrad needs
#     (qpsolvers, quadprog) and what CAGrad needs (cvxpy, solving with CLARABEL: clarabel, and qdldl, which
#     cvxpy imports). cvxpy's other solvers (scs 43 MB, osqp, highspy) and sparsediffpy (12 MB, its NLP
#     engine) are left out: cvxpy imports them only when one is used. Nash-MTL's ecos is left out too (the
#     benchmark shows "–" for it).
# Binary wheels are fetched for CPython $WHEELS_PYTHON_VERSION (3.12) on manylinux x86-64; one version of
# each package (the folder's old wheels are removed first). .whl/ is git-ignored (.gitignore); it travels
# beside the working tree as a carried path (about 8 MB).
#
#   bash scripts/gpu_wheels.sh                      # fill .whl/ (then, there: bash scripts/gpu_check.sh)
#   WHEELS_PYTHON_VERSION=3.11 GPU_CHECK_WHEELS=/tmp/whl311 bash scripts/gpu_wheels.sh   # for a 3.11 test
#
# Settings (environment): GPU_CHECK_WHEELS (.whl), WHEELS_PYTHON_VERSION (3.12), PIP_PYTHON (the Python whose
# pip downloads: .venv/bin/python if there, else python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DEST=${GPU_CHECK_WHEELS:-.whl}
PYV=${WHEELS_PYTHON_VERSION:-3.12}
if [[ -z ${PIP_PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PIP_PYTHON=.venv/bin/python; else PIP_PYTHON=python3; fi
fi

# name==version, pinned to what the tests here run with (pyproject.toml allows ranges)
PURE=(  # py3-none-any
    hydra-core==1.3.8
    omegaconf==2.3.1
    torchjd==0.18.0
    qpsolvers==4.13.0
)
BINARY=(  # compiled: for CPython $PYV on manylinux x86-64
    quadprog==0.1.14
    cvxpy==1.9.3
    clarabel==0.11.1
    qdldl==0.1.9.post1
)
SDIST=(antlr4-python3-runtime==4.9.3)  # built here into a wheel

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
PIP=("$PIP_PYTHON" -m pip --disable-pip-version-check)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
echo "gpu-wheels: downloading into $DEST/ for CPython $PYV (pip of $PIP_PYTHON)"
"${PIP[@]}" download --quiet --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --abi "cp${PYV/./}" --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DEST" "${PURE[@]}" "${BINARY[@]}"
echo "gpu-wheels: building ${SDIST[*]} (sdist only) into a wheel"
"${PIP[@]}" wheel --quiet --no-deps --no-binary :all: -w "$DEST" "${SDIST[@]}" ||
    "${PIP[@]}" wheel --quiet --no-deps --no-binary :all: --no-build-isolation -w "$DEST" "${SDIST[@]}"

# one wheel per package, none missing
status=0
for spec in "${PURE[@]}" "${BINARY[@]}" "${SDIST[@]}"; do
    name=${spec%%==*}
    stem=$(echo "$name" | tr 'A-Z-' 'a-z_')  # a wheel's file name spells it normalised
    n=$(find "$DEST" -maxdepth 1 -type f -iname "${stem}-*.whl" | wc -l)
    if ((n != 1)); then
        echo "gpu-wheels: $n wheel(s) for $name in $DEST/ (want 1)" >&2
        status=1
    fi
done
ls -1 "$DEST"/*.whl | xargs -n1 basename
echo "gpu-wheels: $(find "$DEST" -maxdepth 1 -type f -name '*.whl' | wc -l) wheels, $(du -cb "$DEST"/*.whl | tail -1 | cut -f1) bytes in all"
case $(cd "$DEST" && pwd) in
    "$ROOT"/*)
        if ! git check-ignore -q "$DEST" 2>/dev/null; then
            echo "gpu-wheels: WARNING: $DEST/ is not ignored by git (add /.whl/ to .gitignore)" >&2
        fi
        ;;
esac
exit $status
