# Sourced on the lent GPU machine, in the repository root, with `.whl` in the call's carry
# (benchmarks/device_wheels.sh fills it):
#     source benchmarks/device_env.sh && mosbench --config config/demo.yaml train ...
# Makes $DEVICE_VENV (default /tmp/venv): the image's python3 with all its packages (torch, jax,
# numpy, ...), plus what the wheels in .whl/ add where the image lacks a package or has a version
# they can't take (pip resolves against the image, offline), plus mosbench from src/; puts its
# bin/ (python, mosbench) first on PATH. Not `set -e`: it is sourced; it returns 1 on failure.
# Where a venv can't be made, the fallback is what the GPU checks do (benchmarks/README.md):
#     python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#     export PYTHONPATH=$PWD/src:/tmp/site
_device_env() {
    local py=${PYTHON:-python3} venv=${DEVICE_VENV:-/tmp/venv} site
    # --without-pip: the image's pip, on its path through the .pth below, installs into it
    # (no ensurepip needed, which a distribution's python3 may lack)
    "$py" -m venv --system-site-packages --without-pip "$venv" || return 1
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # The image's python3 is itself a venv (/opt/torch/.venv): a venv made from it sees the
    # base interpreter's site-packages, not that venv's, so this .pth adds the image's (after
    # the new venv's own, so that a wheel installed here wins), and pip counts them installed.
    "$py" -c 'import site, sys; print("import site; " + "; ".join(
        f"site.addsitedir({p!r})" for p in site.getsitepackages() if p.startswith(sys.prefix)))' \
        >"$site/_image_site.pth" || return 1
    "$venv/bin/python" -m pip install --quiet --no-index --find-links .whl \
        --no-compile --no-cache-dir mlflow-skinny SQLAlchemy alembic jsonschema || return 1
    # mosbench from the working tree, as `pip install -e` would (that needs
    # setuptools>=77); after pip, which would otherwise warn of mosbench's unmet pins.
    echo "$PWD/src" >"$site/_mosbench_src.pth"
    printf '#!%s\nimport sys\nfrom mosbench.cli import main\nsys.exit(main())\n' \
        "$venv/bin/python" >"$venv/bin/mosbench" && chmod +x "$venv/bin/mosbench"
    export PATH="$venv/bin:$PATH"
}
_device_env
