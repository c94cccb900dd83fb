#!/usr/bin/env bash
# The one script that produces GPU evidence: runs the GPU tests and the benchmark suites and writes
# raw pytest-benchmark JSON, Markdown tables and PNG charts under benchmarks/results/<device>/.
#
#   bash benchmarks/run_gpu.sh [STEP ...]      STEP: install tests patch_embed skip_linear attention e2e
#                                              (default: all, in that order)
#
# On the lent GPU machine (no network): `install` does `pip install --no-deps --no-build-isolation -e .`
# and installs an xformers wheel if one was carried in wheels/. With $OUT set (the device tool), the
# results are also copied there so they come back. Each step is short enough for one 10-minute call.
set -uo pipefail
cd "$(dirname "$0")/.."

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(install tests patch_embed skip_linear attention e2e)

device=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_') if torch.cuda.is_available() else 'cpu')")
results="benchmarks/results/${device}"
mkdir -p "$results"
status=0

run_bench() {  # $1: suite name (benchmarks/bench_$1.py)
    local json="$results/bench_$1.json"
    python -m pytest -q "benchmarks/bench_$1.py" --benchmark-json="$json" -p no:cacheprovider || status=1
    [ -f "$json" ] && python benchmarks/report.py "$json" --out "$results" --name "bench_$1" || status=1
}

for step in "${steps[@]}"; do
    echo "=== $step ($(date -u +%H:%M:%S))"
    case "$step" in
        install)
            pip install -q --no-deps --no-build-isolation -e . || status=1
            for whl in wheels/xformers*.whl; do [ -f "$whl" ] && pip install -q --no-deps "$whl"; done ;;
        tests)
            python -m pytest -q tests -p no:cacheprovider --junitxml="$results/gpu_tests.xml" \
                2>&1 | tee "$results/gpu_tests.txt" || status=1 ;;
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
    mkdir -p "$OUT/results" && cp -r "$results" "$OUT/results/"
fi
exit $status
