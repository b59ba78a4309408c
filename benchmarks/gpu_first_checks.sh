#!/usr/bin/env bash
# The checks a lent GPU machine runs first, in one call: about 5 minutes on an H200.
#   1. the GPU tests of the cuDNN paths (JAX's layer against JAX's reference and against
#      the scan, JAX's training step's custom calls, PyTorch's fused LSTM), without the
#      suite's conftest, which needs mlflow;
#   2. gpu_check.py for JAX, then for PyTorch, at float32 (benchmarks/README.md, "The
#      prepared GPU checks on an H200", for the last figures).
# Outputs (logs and JSON) go to $OUT, or results/gpu-first-checks without it. Where the
# machine lacks jsonschema, carry its wheels in .whl/ (benchmarks/README.md says which).
set -u
py=${PYTHON:-python3}  # the device image's python3 holds torch and jax
out=${OUT:-results/gpu-first-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
"$py" -m pytest --noconftest -p no:cacheprovider -q -rA tests/test_jax_cudnn_lstm.py \
    tests/test_pytorch_engine.py -k "on_a_gpu or passes_on_cuda" >"$out/gpu_tests.log" 2>&1
echo "GPU tests: exit $?"
"$py" benchmarks/gpu_check.py --framework jax --budget-s 200 \
    --out "$out/gpu_check_jax.json" >"$out/gpu_check_jax.log" 2>&1
echo "gpu_check.py --framework jax: exit $?"
"$py" benchmarks/gpu_check.py --budget-s 120 \
    --out "$out/gpu_check_pytorch.json" >"$out/gpu_check_pytorch.log" 2>&1
echo "gpu_check.py (PyTorch): exit $?"
grep -E "passed|failed|PASSED|FAILED|Error" "$out/gpu_tests.log" | tail -n 12
grep -E "^\| " "$out/gpu_check_jax.log" "$out/gpu_check_pytorch.log"
