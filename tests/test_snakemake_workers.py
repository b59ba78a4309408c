"""PyTorch's data-parallel workers start whatever the job's main module is.

* Under the real ``snakemake``, from a ``script:`` whose top level needs the
  ``snakemake`` object (as workflow/scripts/train.py does): two CPU replicas
  train a step, equal to one process' step row for row.
* From ``python -c``; a worker's stderr reaches the job's log (fd 2 after
  :func:`mosbench.io.redirect_output`), and a crashed worker is a
  ``WorkerError`` naming the replica and the signal that killed it.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
HP = dict(emsize=12, nhid=12, nlayers=2, dropout=0.0, tie_weights=True, init_range=0.5,
          alpha=0.0, beta=0.0, wdecay=1e-3, clip=0.1, lr=20.0, small_batch_size=4)

SNAKEFILE = f"""
rule train:
    output: "loss.json"
    log: "train.log"
    params: hparams={HP!r}
    script: "job.py"
"""

# No `if __name__ == "__main__"` guard, like train.py: a worker that ran this file
# would need the `snakemake` object, or would train a job of its own.
JOB = """
import json, os
import numpy as np
from mosbench.io import redirect_output

redirect_output(snakemake.log[0])
from mosbench.engines import load_engine

hp = snakemake.params.hparams
ids = np.random.default_rng(3).integers(0, 40, (4, 7))
x, y = ids[:, :-1], ids[:, 1:]
result = {}
for name, devices in (("one", None), ("two", ["cpu", "cpu"])):
    with load_engine("pytorch", devices=devices, threads=1, seed=1) as engine:
        engine.build("lstm", 40, hp)
        engine.prepare_training(hp, 4)
        loss, states = engine.train_step(x, y, engine.initial_state(4), 1.0, False)
        result[name] = {"loss": loss, "states": [a.tolist() for a in engine.state_arrays(states)],
                        "pids": [p.pid for p in engine.workers.processes] if engine.workers
                        else []}
result["job_pid"] = os.getpid()
with open(snakemake.output[0], "w") as f:
    json.dump(result, f)
"""


@pytest.mark.slow
def test_two_replicas_train_under_snakemake(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "job.py").write_text(JOB)
    done = subprocess.run([str(SNAKEMAKE), "--snakefile", str(tmp_path / "Snakefile"),
                           "--directory", str(tmp_path), "--cores", "2"],
                          capture_output=True, text=True, timeout=300)
    log = tmp_path / "train.log"
    assert done.returncode == 0, (done.stderr[-3000:],
                                  log.read_text()[-3000:] if log.exists() else "no log")
    result = json.loads((tmp_path / "loss.json").read_text())
    one, two = result["one"], result["two"]
    assert math.isfinite(two["loss"]) and two["loss"] > 0
    assert abs(two["loss"] / one["loss"] - 1) < 1e-6
    # Rows 2-3 of the states were computed by the worker: equal to one process' rows.
    assert len(two["pids"]) == 1 and two["pids"][0] != result["job_pid"]
    for a, b in zip(one["states"], two["states"], strict=True):
        assert len(b) == 4
        assert max(abs(p - q) for ra, rb in zip(a, b, strict=True)
                   for p, q in zip(ra, rb, strict=True)) < 1e-6


PYTHON_C = """
import os, signal, sys, numpy as np
from mosbench.engines import load_engine
from mosbench.engines.pytorch.distributed import WorkerError
from mosbench.io import redirect_output

redirect_output(sys.argv[1])
hp = {hp!r}
ids = np.random.default_rng(3).integers(0, 40, (4, 7))
engine = load_engine("pytorch", devices=["cpu", "cpu"], threads=1)
engine.build("lstm", 40, hp)
engine.prepare_training(hp, 4)
loss, states = engine.train_step(ids[:, :-1], ids[:, 1:], engine.initial_state(4), 1.0, False)
print("loss", loss, "rows", engine.state_arrays(states)[0].shape[0], flush=True)
# A crash, maybe mid-collective: the next step, whichever way it finds out, names it.
os.kill(engine.workers.processes[0].pid, signal.SIGSEGV)
try:
    engine.train_step(ids[:, :-1], ids[:, 1:], states, 1.0, False)
except WorkerError as error:
    print("error:", error, flush=True)
engine.close()
"""


def test_python_c_starts_two_replicas_and_their_stderr_reaches_the_log(tmp_path):
    log = tmp_path / "job.log"
    env = {**os.environ, "PYTHONFAULTHANDLER": ""}  # the worker's own choice, not inherited
    done = subprocess.run([sys.executable, "-c", PYTHON_C.format(hp=HP), str(log)],
                          capture_output=True, text=True, timeout=120, env=env)
    text = log.read_text() if log.exists() else ""
    assert done.returncode == 0, (done.stderr[-3000:], text[-3000:])
    step = re.search(r"^loss (\S+) rows (\d+)$", text, re.MULTILINE)
    assert step and math.isfinite(float(step[1])) and step[2] == "4", text[-3000:]
    named = re.search(r"^error: replica 1 \(pid \d+\) was killed by SIGSEGV \(faulthandler's "
                      r"report of where is above in the job's log\)$", text, re.MULTILINE)
    assert named, text[-3000:]
    # faulthandler's report, written by the worker to its fd 2: the job's log
    assert "Fatal Python error: Segmentation fault" in text
    assert not done.stderr.strip()  # nothing bypassed the log
