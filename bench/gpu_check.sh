#!/usr/bin/env bash
# GPU check of srl-ext, for a machine with one CUDA GPU, torch (CUDA build) and Triton installed
# and no network. Meant to finish within 8 minutes on one H100/H200 from a fresh clone, build
# included; each step has its own time limit, prints its figures whether it passes or not, and
# the script goes on after a failed step (exit status: the first failure's).
#   1. every Triton config: bench/check_triton_configs.py runs every config of every kernel's
#      lists (Hopper's and Ampere's) once in a whole loss step against the reference, one process
#      per place in the lists (in the background, while the build runs: it needs no srl_ext._C);
#   2. build srl_ext._C in place with its CUDA kernels (SRL_EXT_CUDA=1), for the visible GPU;
#   3. correctness tests in the deterministic mode (one config per kernel, nothing autotuned):
#      tests/test_gpu.py (split in two), tests/test_triton.py and tests/test_triton_whole_loss.py
#      (their CUDA cases), four pytest processes at once;
#   4. the bench, the one autotuned step: pytest bench/ --bench-device cuda on the selection
#      BENCH_SELECT (default: the preset cases and the large one), and its Markdown table.
# Limits (seconds): configs 150 (from the start, overlapping the build), build 150, tests 130,
# bench 120: about 7 minutes in all. How they were sized: docs/gpu.md, "The GPU check".
#
#   bash bench/gpu_check.sh              # on the GPU machine
#   bash bench/gpu_check.sh --dry-run    # anywhere: the same steps on the CPU (Triton's
#                                        # interpreter, a few test cases in one process, no
#                                        # build when built, limits x TIME_SCALE_DRY_RUN = 3)
#
# Environment: PYTHON (default /opt/torch/.venv/bin/python3, else python3), TORCH_CUDA_ARCH_LIST
# (default: the visible GPU's compute capability, e.g. 9.0 on H100/H200, 8.0 on A100), MAX_JOBS
# (default: the number of cores), BENCH_SELECT (pytest -k expression of the bench step),
# BENCH_ARGS (more pytest options for it), TEST_SELECT (pytest -k expression of the test step).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; elif [[ -n "${1:-}" ]]; then
  echo "error: unknown argument '$1' (expected nothing or --dry-run)" >&2; exit 2
fi
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x /opt/torch/.venv/bin/python3 ]]; then PYTHON=/opt/torch/.venv/bin/python3; else PYTHON=python3; fi
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's srl_ext, not an installed one
export PYTHONDONTWRITEBYTECODE=1
# float32 matmuls in full precision in every process (the tests also pin it, tests/conftest.py):
# a reference computed with TF32 is about 1e-3 off.
export NVIDIA_TF32_OVERRIDE=0
LOGS=$(mktemp -d)
STATUS=0
SUMMARY=()

# The time limits below are for one H100/H200; a dry run multiplies them by TIME_SCALE (default 3:
# Triton's interpreter, and a CPU machine that may be shared).
TIME_SCALE=1
if [[ "$DRY_RUN" == 1 ]]; then TIME_SCALE="${TIME_SCALE_DRY_RUN:-3}"; fi
limit() { echo $(($1 * TIME_SCALE)); }
section() { printf '\n==================== %s ====================\n' "$*"; }
# record NAME STATUS SECONDS: the step's line of the summary; the first failure sets the exit status.
record() {
  local verdict=passed
  if [[ "$2" == 124 ]]; then verdict="TIMED OUT"; elif [[ "$2" != 0 ]]; then verdict="FAILED (exit status $2)"; fi
  SUMMARY+=("$(printf '%-28s %-24s %4d s' "$1" "$verdict" "$3")")
  if [[ "$2" != 0 && "$STATUS" == 0 ]]; then STATUS=$2; fi
}

section "environment"
date -u
if [[ "$DRY_RUN" == 1 ]]; then
  echo "DRY RUN: no GPU; Triton's interpreter on CPU tensors, the CPU bench"
  export TRITON_INTERPRET=1
  export CUDA_VISIBLE_DEVICES=""
else
  nvidia-smi -L || true
  if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
    TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())') \
      || { echo "error: no CUDA device visible to torch (use --dry-run without a GPU)"; exit 2; }
  fi
  export TORCH_CUDA_ARCH_LIST
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
fi
"$PYTHON" -c 'import torch, sys; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else None, "| cores", __import__("os").cpu_count())'
"$PYTHON" -c 'import triton; print("triton", triton.__version__)' || echo "triton: not importable"

# 1. Every config, in the background: Triton compiles serially within a process, so the places
# in the lists go to parallel processes, on the cores the build leaves idle.
START_ALL=$SECONDS
( start=$SECONDS
  timeout "$(limit 150)" "$PYTHON" bench/check_triton_configs.py --jobs "$(nproc)" > "$LOGS/configs.log" 2>&1
  echo "$? $((SECONDS - start))" > "$LOGS/configs.status" ) &
CONFIGS_PID=$!

section "build (setup.py build_ext --inplace)"
start=$SECONDS
if [[ "$DRY_RUN" == 1 ]] && compgen -G "srl_ext/_C*.so" > /dev/null; then
  echo "dry run: srl_ext._C is already built, not rebuilt"; build_status=0
else
  if [[ "$DRY_RUN" == 1 ]]; then export SRL_EXT_CUDA=0; else export SRL_EXT_CUDA=1; fi
  timeout "$(limit 150)" "$PYTHON" setup.py -q build_ext --inplace > "$LOGS/build.log" 2>&1
  build_status=$?
  grep -v -E "^(copying|running|creating)" "$LOGS/build.log" | tail -n 40
fi
if [[ "$build_status" == 0 && "$DRY_RUN" == 0 ]]; then
  "$PYTHON" - <<'PY' || build_status=$?
import torch
import srl_ext
print("srl_ext from", srl_ext.__file__)
missing = [op for op in ("surrogate_table", "surrogate_table_backward", "contrastive", "envelope", "homogeneity")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"srl_ext::{op}", "CUDA")]
if missing:
    raise SystemExit(f"no CUDA kernel registered for: {missing}")
print("CUDA kernels registered for all five ops")
PY
fi
echo "build: $((SECONDS - start)) s, exit status $build_status"
record "build" "$build_status" $((SECONDS - start))

section "tests, deterministic mode (one config per Triton kernel)"
export SRL_EXT_TRITON_DETERMINISTIC=1
start=$SECONDS
TEST_NAMES=(gpu_cuda gpu_triton triton triton_whole_loss)
declare -A TEST_FILE=([gpu_cuda]=tests/test_gpu.py [gpu_triton]=tests/test_gpu.py [triton]=tests/test_triton.py
                      [triton_whole_loss]=tests/test_triton_whole_loss.py)
declare -A TEST_K=([gpu_cuda]="not triton" [gpu_triton]="triton" [triton]="" [triton_whole_loss]="")
if [[ "$DRY_RUN" == 1 ]]; then
  # The interpreter runs ~1000x slower than a GPU, and each process costs an import of torch: one
  # process, one case per kind, enough to run the step.
  TEST_SELECT="${TEST_SELECT:-deterministic_mode_matches or whole_loss_matches_reference and dtype0 and soft and label or registered}"
  TEST_NAMES=(all)
  TEST_FILE=([all]="tests/test_gpu.py tests/test_triton.py tests/test_triton_whole_loss.py")
  TEST_K=([all]="")
fi
declare -A TEST_PIDS=()
for name in "${TEST_NAMES[@]}"; do
  expression=${TEST_K[$name]}
  if [[ -n "${TEST_SELECT:-}" ]]; then expression="${expression:+($expression) and }($TEST_SELECT)"; fi
  select=()
  if [[ -n "$expression" ]]; then select=(-k "$expression"); fi
  # shellcheck disable=SC2086  # TEST_FILE holds one or more paths
  ( timeout "$(limit 130)" "$PYTHON" -m pytest -q -rs --maxfail=25 --no-header -p no:cacheprovider ${TEST_FILE[$name]} \
      "${select[@]}" > "$LOGS/test_$name.log" 2>&1; echo $? > "$LOGS/test_$name.status" ) &
  TEST_PIDS[$name]=$!
done
for name in "${TEST_NAMES[@]}"; do
  wait "${TEST_PIDS[$name]}"
  test_status=$(cat "$LOGS/test_$name.status")
  section "tests: ${TEST_FILE[$name]} ${TEST_K[$name]:+-k '${TEST_K[$name]}'} (exit status $test_status)"
  tail -n 60 "$LOGS/test_$name.log"
  # pytest's 5: nothing selected (a dry run's selection can leave a file out)
  if [[ "$test_status" == 5 ]]; then test_status=0; fi
  record "tests $name" "$test_status" $((SECONDS - start))
done
unset SRL_EXT_TRITON_DETERMINISTIC

section "every Triton config against the reference (bench/check_triton_configs.py)"
wait "$CONFIGS_PID"
configs_status=1 configs_seconds=0
read -r configs_status configs_seconds < "$LOGS/configs.status" || echo "the config check left no status"
cat "$LOGS/configs.log"
record "every Triton config" "$configs_status" "$configs_seconds"

section "bench (autotuned): pytest bench/"
start=$SECONDS
RUN_JSON=$(mktemp --suffix .json)
if [[ "$DRY_RUN" == 1 ]]; then
  device=cpu; BENCH_SELECT="${BENCH_SELECT:-preset-sts_b-srl-cpu}"
  BENCH_ARGS="${BENCH_ARGS:---bench-no-memory}"
else
  device=cuda; BENCH_SELECT="${BENCH_SELECT:-preset or large}"
fi
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
timeout "$(limit 120)" "$PYTHON" -m pytest bench/ --bench-device "$device" -k "$BENCH_SELECT" -q --no-header -p no:cacheprovider \
  --bench-time 0.1 --bench-no-report --benchmark-json "$RUN_JSON" ${BENCH_ARGS:-}
bench_status=$?
if [[ -s "$RUN_JSON" ]]; then
  "$PYTHON" bench/report.py "$RUN_JSON" --no-plots --output "${RUN_JSON%.json}.md" && cat "${RUN_JSON%.json}.md"
fi
echo "bench: $((SECONDS - start)) s, exit status $bench_status"
record "bench ($BENCH_SELECT)" "$bench_status" $((SECONDS - start))

section "summary"
printf '%s\n' "${SUMMARY[@]}"
echo "total: $((SECONDS - START_ALL)) s, exit status $STATUS (logs: $LOGS)"
exit "$STATUS"
