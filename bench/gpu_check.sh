#!/usr/bin/env bash
# GPU check of srl-ext, for a machine with a CUDA GPU, torch already installed and no network:
#   1. builds srl_ext._C in place with its CUDA kernels (SRL_EXT_CUDA=1);
#   2. runs tests/test_gpu.py (CUDA and Triton backends against the reference, CUDA-graph
#      capture, determinism, no host sync);
#   3. runs the bench harness on the GPU (pytest bench/ --bench-device cuda: every backend checked
#      against the reference, then timed, including the large case K = 1000, N = 10^6) and prints
#      its Markdown table (bench/report.py).
# Budget: under 10 minutes in all (timeouts: build 180 s, tests 150 s, bench 240 s). Run from anywhere:
#   bash bench/gpu_check.sh
# Environment: PYTHON (default /opt/torch/.venv/bin/python3, else python3), TORCH_CUDA_ARCH_LIST
# (default 9.0: the Hopper card these checks were sized for; "8.0;9.0" is the package default),
# MAX_JOBS (default: the number of cores), BENCH_ARGS (more pytest options, e.g. -k "preset").
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x /opt/torch/.venv/bin/python3 ]]; then PYTHON=/opt/torch/.venv/bin/python3; else PYTHON=python3; fi
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export SRL_EXT_CUDA=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's srl_ext, not an installed one
export PYTHONDONTWRITEBYTECODE=1

section() { printf '\n==================== %s ====================\n' "$*"; }

section "environment"
date -u
nvidia-smi -L || true
"$PYTHON" -c 'import torch, sys; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
"$PYTHON" -c 'import triton; print("triton", triton.__version__)' || echo "triton: not importable"
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"

section "build (setup.py build_ext --inplace, SRL_EXT_CUDA=1)"
start=$SECONDS
timeout 180 "$PYTHON" setup.py -q build_ext --inplace 2>&1 | { grep -v -E "^(copying|running|creating)" || true; } | tail -n 40
echo "build: $((SECONDS - start)) s"
"$PYTHON" - <<'PY'
import torch
import srl_ext
from srl_ext import ops
print("srl_ext from", srl_ext.__file__)
missing = [op for op in ("surrogate_table", "surrogate_table_backward", "contrastive", "envelope", "homogeneity")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"srl_ext::{op}", "CUDA")]
if missing:
    raise SystemExit(f"no CUDA kernel registered for: {missing}")
print("CUDA kernels registered for all five ops")
PY

section "tests/test_gpu.py"
status=0
start=$SECONDS
timeout 150 "$PYTHON" -m pytest -q -rs --maxfail=25 --no-header -p no:cacheprovider tests/test_gpu.py || status=$?
echo "tests: $((SECONDS - start)) s, exit status $status"

section "pytest bench/ --bench-device cuda"
start=$SECONDS
RUN_JSON=$(mktemp --suffix .json)
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
timeout 240 "$PYTHON" -m pytest bench/ --bench-device cuda -q --no-header -p no:cacheprovider \
  --benchmark-json "$RUN_JSON" ${BENCH_ARGS:-} || status=$?
"$PYTHON" bench/report.py "$RUN_JSON" --no-plots --output "${RUN_JSON%.json}.md" && cat "${RUN_JSON%.json}.md" || status=$?
echo "bench: $((SECONDS - start)) s"

section "done (exit status $status)"
exit "$status"
