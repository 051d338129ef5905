#!/usr/bin/env bash
# What runs on a lent GPU machine (the device tool): the image's python3 holds torch and
# transformers; pydantic comes from carried wheels if the image lacks it.
set -uo pipefail
out="${OUT:-/tmp/gpu-out}"
mkdir -p "$out"
python3 -c "import pydantic" 2>/dev/null || python3 -m pip install -q --no-index --find-links .gpu-wheels pydantic
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >> "$out/gpu.txt"
python3 -W ignore benchmarks/gpu_check.py --out "$out/gpu_results.md" --budget-s "${BUDGET_S:-240}" > "$out/gpu_check.log" 2>&1
echo "gpu_check exit $?" >> "$out/gpu.txt"
python3 -m pytest tests/test_parity.py tests/test_model_loading.py -m gpu -q -p no:cacheprovider > "$out/gpu_tests.log" 2>&1
echo "gpu tests exit $?" >> "$out/gpu.txt"
