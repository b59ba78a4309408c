#!/usr/bin/env bash
# Downloads into .whl/ the wheels that the lent GPU machine lacks for `mosbench train` with an
# MLflow SQLite store (MLFLOW_TRACKING_URI=sqlite:///...) and for the config's schema check.
# That machine has no network; its image (Python 3.12, benchmarks/README.md) has torch, jax,
# optax, numpy, pandas, pyarrow, scipy, statsmodels, PyYAML, psutil, nvidia-ml-py, requests, but
# no mlflow, SQLAlchemy, alembic or jsonschema.
#
# Here, in the repository root (needs PyPI and the project's .venv, made by `make`):
#     echo /.whl/ >> .git/info/exclude   # once: the wheels are carried, never committed
#     bash benchmarks/device_wheels.sh   # about 20 MB, in .whl/
# There, with `.whl` in the call's carry, in the repository root:
#     source benchmarks/device_env.sh    # a venv over the image's packages, plus these wheels
#     MLFLOW_TRACKING_URI=sqlite:////tmp/mlflow.db mosbench train ...
#
# Why mlflow-skinny and not mlflow: the skinny wheel holds all of mlflow's Python code (the
# SQLAlchemy tracking store and its alembic migrations too) but for the tracking server's web
# UI; full mlflow needs about 35 MB of wheels beyond the image (the UI, Flask, gunicorn, docker,
# graphene, huey, skops, ...), the skinny kit 20 MB. mlflow-tracing is not needed either:
# its files are a subset of mlflow-skinny's.
#
# Versions: each wheel's is the one installed in .venv, so the device runs what CI runs
# (mlflow-skinny: mlflow's pin in pyproject.toml). --no-deps with the explicit list below; its
# closure was read off the wheels' Requires-Dist, and the device recipe resolves it with pip, so
# a missing wheel shows there as a clear "No matching distribution" error.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${VENV_PYTHON:-.venv/bin/python}

kit=(
    # what mosbench imports: MLflow's client, its SQLite store, the config's schema check
    mlflow-skinny SQLAlchemy alembic jsonschema
    # SQLAlchemy and alembic's needs (MarkupSafe, for Mako, the image has)
    greenlet Mako
    # mlflow-skinny's needs that the image lacks
    cachetools databricks-sdk google-auth pyasn1-modules pyasn1 cryptography cffi pycparser
    fastapi starlette pydantic pydantic-core annotated-types typing-inspection
    gitpython gitdb smmap importlib-metadata opentelemetry-api opentelemetry-proto
    opentelemetry-sdk opentelemetry-semantic-conventions python-dotenv sqlparse uvicorn
    # jsonschema's needs (attrs the image has)
    jsonschema-specifications referencing rpds-py
    # In the image, but carried in case its version is outside what these wheels ask for
    # (pip takes them only then): pydantic needs typing-extensions>=4.16, databricks-sdk
    # certifi>=2026.10.19 and no protobuf 6.30.0-6.31.0, mlflow-skinny anyio!=4.15.0,
    # importlib-metadata zipp>=3.20. The image's versions of these are not on record. Every
    # other need in the image (annotated-doc, attrs, click, cloudpickle, h11, idna, MarkupSafe,
    # packaging, PyYAML, requests, urllib3, psutil, nvidia-ml-py, numpy, pandas, pyarrow) has
    # no floor or a loose one, which the image's other packages already need met: not carried.
    typing-extensions certifi protobuf anyio zipp
)

# name==version for each, as installed in .venv
pins=$("$py" - "${kit[@]}" <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)

mkdir -p .whl
rm -f .whl/*.whl  # one version of each, or the device's install stops
# Python 3.12 on x86-64 Linux; pip matches each manylinux tag exactly, hence the list
# (greenlet's wheel is 2_24/2_28, the others 2_17 or pure Python).
# shellcheck disable=SC2086  # $pins: one word per wheel
python3 -m pip download --quiet --no-deps --only-binary :all: --dest .whl \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    $pins
ls .whl/*.whl | wc -l | xargs echo "wheels:"
du -sh .whl
