#!/usr/bin/env bash
# The one script that produces GPU evidence: runs the GPU tests and the benchmark suites and writes
# raw pytest-benchmark JSON, Markdown tables and PNG charts under benchmarks/results/<device>/.
#
#   bash benchmarks/run_gpu.sh [STEP ...]
#
# STEP: install, tests-attention (the attention test file: its CUDA cross product alone is ~280
# cases), tests (every other test), patch_embed, skip_linear, attention, e2e (benchmark suites).
# Default: all, in that order. Each step fits one 10-minute call of a lent machine (an H100 ran
# tests-attention in ~8 min, patch_embed in 1.5, skip_linear in 1, attention without the
# long-context shapes in 2.5). FASTUVIT_BENCH_FILTER="<pytest -k expression>" narrows the suites,
# e.g. "not context" for attention or "training_step and huge-128" for e2e.
#
# Tests run with FASTUVIT_AUTOTUNE=0 (the first config the prune keeps): autotuning every shape the
# suite touches would compile every config of every kernel (skip_linear's test_cuda_every_config
# covers all its configs). The benchmarks autotune, as users do.
#
# On the lent GPU machine (no network): `install` does `pip install --no-deps --no-build-isolation -e .`
# (with an old setuptools pip falls back to a legacy develop install; fastuvit/_source_tree.py maps
# fastuvit.kernels either way) and installs an xformers wheel if one was carried in wheels/. With $OUT
# set (the device tool, which returns at most 8 files), everything is packed into $OUT/results.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(install tests-attention tests patch_embed skip_linear attention e2e)

device=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_') if torch.cuda.is_available() else 'cpu')")
results="benchmarks/results/${device}"
mkdir -p "$results"
status=0
filter=()
[ -n "${FASTUVIT_BENCH_FILTER:-}" ] && filter=(-k "$FASTUVIT_BENCH_FILTER")
timeout_opt=()
python -c "import pytest_timeout" 2>/dev/null && timeout_opt=(--timeout=300)

run_tests() {  # $1: name of the outputs, rest: pytest arguments
    local name=$1; shift
    FASTUVIT_AUTOTUNE=0 python -m pytest -q -rfE "${timeout_opt[@]}" -p no:cacheprovider "$@" \
        --junitxml="$results/$name.xml" 2>&1 | tee "$results/$name.txt" || status=1
}

run_bench() {  # $1: suite name (benchmarks/bench_$1.py)
    local json="$results/bench_$1.json"
    python -m pytest -q "benchmarks/bench_$1.py" "${filter[@]}" --benchmark-json="$json" -p no:cacheprovider || status=1
    [ -s "$json" ] && python benchmarks/report.py "$json" --out "$results" --name "bench_$1" || status=1
}

for step in "${steps[@]}"; do
    echo "=== $step ($(date -u +%H:%M:%S))"
    case "$step" in
        install)
            pip install -q --no-deps --no-build-isolation -e . || status=1
            for whl in wheels/xformers*.whl; do [ -f "$whl" ] && pip install -q --no-deps "$whl"; done ;;
        tests-attention)
            run_tests gpu_tests_attention tests/test_attention.py ;;
        tests)
            run_tests gpu_tests tests --ignore=tests/test_attention.py ;;
        patch_embed|skip_linear|attention|e2e)
            run_bench "$step" ;;
        *) echo "unknown step: $step" >&2; status=2 ;;
    esac
done

python - "$results" <<'PY'
import json, sys, platform, torch
info = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version()}
try:
    import triton; info["triton"] = triton.__version__
except Exception:
    pass
json.dump(info, open(f"{sys.argv[1]}/environment.json", "w"), indent=1)
PY

if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/results.tgz" "$results"
fi
exit $status
