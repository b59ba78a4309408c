#!/usr/bin/env bash
# Whole training runs of fidelity.py's scaled MoS preset on a lent GPU, in one call: PyTorch
# and JAX (the image has no TensorFlow), several runs at once on the one GPU, their losses the
# result (with --parallel above 1 their step times say nothing about speed).
#
# Here, first (both folders ignored through .git/info/exclude, neither committed):
#     bash benchmarks/device_wheels.sh                      # .whl/: MLflow's client and store
#     mkdir -p .ptb && cp ../shared/data/ptb/*.txt .ptb/    # ../shared does not travel
# There: the call's carry [".whl", ".ptb"], its timeout_s about BUDGET_S + 90:
#     SEEDS=6 BUDGET_S=480 bash benchmarks/gpu_fidelity.sh
# fidelity.py stops at BUDGET_S seconds; every run that ended by then is in the archive
# $OUT/fidelity-gpu.tgz (fidelity.json, fidelity.csv, runs/, logs/), which
# `fidelity.py --report --results DIR` reads back here. A run cut short is not counted.
set -u
out=${OUT:-results/gpu-fidelity}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh || { echo "benchmarks/device_env.sh failed"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
results=/tmp/fidelity-gpu work=/tmp/fidelity-work
# shellcheck disable=SC2086  # FRAMEWORKS is a list
timeout -s TERM "${BUDGET_S:-480}" python benchmarks/fidelity.py --no-reference \
    --frameworks ${FRAMEWORKS:-pytorch jax} --gpus "${GPUS:-1}" --parallel "${PARALLEL:-6}" \
    --first-seed "${FIRST_SEED:-28}" --seeds "${SEEDS:-6}" --data "${DATA:-.ptb}" \
    ${MAX_STEPS:+--max-steps "$MAX_STEPS"} --results "$results" --work "$work" \
    >"$out/fidelity.log" 2>&1
echo "fidelity.py: exit $? (124: stopped at BUDGET_S)"
# the training processes a stop left behind (this work folder's only): SIGTERM makes each
# checkpoint and end
pkill -TERM -f -- "--config $work/mosbench/config.yaml train" && sleep 10
tar czf "$out/fidelity-gpu.tgz" -C "$(dirname "$results")" "$(basename "$results")"
grep -E "valid ppl|failed|paused|Error" "$out/fidelity.log" | tail -n 30
