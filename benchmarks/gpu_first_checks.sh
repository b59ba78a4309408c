#!/usr/bin/env bash
# The checks a lent GPU machine runs first, in one call: about 5 minutes on an H200.
#   1. the GPU tests of the cuDNN paths (JAX's layer against JAX's reference and against
#      the scan, JAX's training step's custom calls, PyTorch's fused LSTM), without the
#      suite's conftest, which needs mlflow;
#   2. the compiled program of the JAX engine's agreement-check layer, whose custom calls
#      show the layouts XLA gave the cuDNN kernel (cudnn_layer_hlo.txt);
#   3. gpu_check.py for each framework:precision of $CHECKS (default JAX, then PyTorch,
#      at float32; benchmarks/README.md, "The prepared GPU checks on an H200", for the
#      last figures), each within $BUDGET_S seconds (default 200).
# Outputs (logs and JSON) go to $OUT, or results/gpu-first-checks without it. Where the
# machine lacks jsonschema, carry its wheels in .whl/ (benchmarks/README.md says which).
set -u
py=${PYTHON:-python3}  # the device image's python3 holds torch and jax
out=${OUT:-results/gpu-first-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# jsonschema's four wheels only: the rest of the kit (benchmarks/device_wheels.sh) would put
# its fallbacks (protobuf, typing-extensions, ...) ahead of the image's own
schema_wheels=$(compgen -G ".whl/*.whl" | grep -E "/(jsonschema|referencing|rpds_py)[-_]")
if [ -n "$schema_wheels" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site $schema_wheels && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
"$py" -m pytest --noconftest -p no:cacheprovider -q -rA tests/test_jax_cudnn_lstm.py \
    tests/test_pytorch_engine.py -k "on_a_gpu or passes_on_cuda" >"$out/gpu_tests.log" 2>&1
echo "GPU tests: exit $?"
"$py" - >"$out/cudnn_layer_hlo.txt" 2>&1 <<'PY'
import jax
from mosbench.engines.jax.models import cudnn_lstm, recurrence
print("layouts pinned:", cudnn_lstm.KERNEL_LAYOUTS_PINNED)
print("agreement (largest difference, first parting):", recurrence.cudnn_agreement(jax.devices()[0]))
t, b, i, h = (recurrence.CHECK_SIZES[k] for k in ("time", "batch", "inputs", "hidden"))
z = jax.numpy.zeros
args = (z((t, b, i)), (z((b, h)), z((b, h))), z((4 * h, i)), z((4 * h, h)), z((4 * h,)), z((4 * h,)))
print(jax.jit(lambda *a: recurrence.lstm_layer(*a, cudnn=True)).lower(*args).compile().as_text())
PY
echo "cuDNN layer program: exit $?"
for check in ${CHECKS:-jax:float32 pytorch:float32}; do
    framework=${check%%:*} precision=${check#*:}
    "$py" benchmarks/gpu_check.py --framework "$framework" --precision "$precision" \
        --budget-s "${BUDGET_S:-200}" --out "$out/gpu_check_${framework}_$precision.json" \
        >"$out/gpu_check_${framework}_$precision.log" 2>&1
    echo "gpu_check.py --framework $framework --precision $precision: exit $?"
done
grep -E "passed|failed|PASSED|FAILED|Error" "$out/gpu_tests.log" | tail -n 12
grep -m2 -E "^(layouts|agreement)" "$out/cudnn_layer_hlo.txt"
grep -hE "^\| " "$out"/gpu_check_*.log
