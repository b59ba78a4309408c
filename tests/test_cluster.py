"""`snakemake --profile slurm`: what the grid asks SLURM for, and a real SLURM run.

The real run installs Debian's slurm-wlm and munge when missing, starts a
one-node cluster (munged, slurmctld, slurmd) from a slurm.conf written for
this machine, runs the tiny workflow through the project's profile and stops
the daemons it started by their pid files. It needs root; otherwise it is
skipped with the reason. The slurm.conf lives in a temporary folder, linked
from /etc/slurm/slurm.conf while the test runs: the srun inside each job
drops $SLURM_CONF and reads only the default path.
"""

import dataclasses
import importlib.metadata
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time

import mlflow
import pandas as pd
import pytest
import yaml
from test_rerun import planned_jobs, run_snakemake

from conftest import REPO, TINY_CONFIG

GRID = REPO / "config" / "config.yaml"


def test_the_grid_plans_every_job_with_its_cluster_resources(tmp_path, capsys):
    started = time.monotonic()
    # as typed in the README: from the repository root, the profile found as ./slurm
    done = run_snakemake(tmp_path, "--profile", "slurm", "--dry-run", configfile=GRID,
                         env={"SBATCH_PARTITION": "gpu-test", "SBATCH_ACCOUNT": "proj-test"})
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    with capsys.disabled():
        print(f"\n[grid dry run through --profile slurm: {seconds:.1f} s]")
    assert seconds < 120  # seconds in practice; generous for a loaded CI machine

    jobs = planned_jobs(done.stdout)
    by_rule = {rule: [j for j in jobs if j.rule == rule] for rule in {j.rule for j in jobs}}
    assert {rule: len(js) for rule, js in by_rule.items()} == {
        "download_corpus": 2, "tokenise": 2, "data_pipeline": 6, "train": 240, "evaluate": 240,
        "probe": 168, "aggregate": 1}
    config = yaml.safe_load(GRID.read_text())
    run = config["run"]
    # trained to convergence at one GPU count only (run.train_gpus) ...
    trained = {(f, d, m, str(s), "1") for f, d, m, s in itertools.product(
        *(run[key] for key in ("frameworks", "datasets", "models", "seeds")))}
    for rule in ("train", "evaluate"):
        assert {tuple(j.wildcards[k] for k in ("framework", "dataset", "model", "seed", "gpus"))
                for j in by_rule[rule]} == trained
    # ... and probed at every GPU count, strong and (on 2 or more GPUs) weak, per framework
    probed = {(f, d, m, s, str(g)) for f, d, m, s, g in itertools.product(
        run["frameworks"], run["datasets"], run["models"], ("strong", "weak"), run["gpus"])
        if s == "strong" or g >= 2}
    assert {tuple(j.wildcards[k] for k in ("framework", "dataset", "model", "scaling", "gpus"))
            for j in by_rule["probe"]} == probed

    for job in by_rule["train"]:  # the same request whatever the framework
        r, w = job.resources, job.wildcards
        runtime = {("ptb", "lstm"): 480, ("wikitext2", "lstm"): 720}.get(
            (w["dataset"], w["model"]), 2880)
        assert r["gpu"] == w["gpus"] and r["cpus_per_gpu"] == "8" and r["mem_mb"] == "64000"
        assert r["nodes"] == "1"
        assert int(r["runtime"]) == runtime
        assert int(r["wall_time_s"]) == 60 * runtime - min(max(6 * runtime, 300), 1800)
        assert (r["slurm_partition"], r["slurm_account"]) == ("gpu-test", "proj-test")
        assert "gpu_model" not in r  # none configured: any GPU
        assert "slurm_extra" not in r  # training shares nodes
    for job in by_rule["evaluate"]:
        r = job.resources
        assert r["gpu"] == "1" and r["slurm_partition"] == "gpu-test"
        assert (r["runtime"], r["mem_mb"]) == ("120", "16000")
        assert int(r["wall_time_s"]) == 120 * 60 - 12 * 60  # evaluate pauses 12 min before
    for job in by_rule["probe"]:  # minutes, on a whole node (cluster.exclusive)
        r = job.resources
        assert r["gpu"] == job.wildcards["gpus"] and r["runtime"] == "30"
        assert r["slurm_extra"] == "--exclusive" and r["cpus_per_gpu"] == "8"
    # a cell's frameworks are probed one after the other in one SLURM job (a group job)
    assert done.stdout.count("Group job probe-") == 56
    assert "Group job probe-wikitext2-awd-lstm-mos-weak-gpus8" in done.stdout


def test_a_gpu_model_is_asked_for_by_gpu_jobs_only(tmp_path):
    config = yaml.safe_load(GRID.read_text())
    config["run"].update(seeds=[1], gpus=[0, 2])
    config["cluster"]["gpu_model"] = "h100"
    configfile = tmp_path / "h100.yaml"
    configfile.write_text(yaml.safe_dump(config))
    done = run_snakemake(tmp_path, "--dry-run", configfile=configfile)
    assert done.returncode == 0, done.stderr[-3000:]
    for job in planned_jobs(done.stdout):
        if job.rule in ("train", "evaluate"):
            gpus = int(job.wildcards["gpus"])
            assert job.resources.get("gpu_model") == ("h100" if gpus else None)
            assert ("cpus_per_gpu" in job.resources) == (job.rule == "train" and gpus > 0)


def test_probes_are_planned_only_when_asked(tmp_path):
    config = yaml.safe_load(GRID.read_text())
    config["run"].update(datasets=["ptb"], models=["awd-lstm-mos"], seeds=[1, 2], gpus=[0, 1, 4])
    configfile = tmp_path / "probes.yaml"
    frameworks = config["run"]["frameworks"]
    probed = {(f, s, g) for f in frameworks for s, g in
              (("strong", "0"), ("strong", "1"), ("strong", "4"), ("weak", "4"))}
    for enabled, expected in ((False, set()), (True, probed)):
        config["run"]["probes"] = {"enabled": enabled, "steps": 10}
        configfile.write_text(yaml.safe_dump(config))
        done = run_snakemake(tmp_path, "--dry-run", configfile=configfile)
        assert done.returncode == 0, done.stderr[-3000:]
        jobs = planned_jobs(done.stdout)
        probes = [j for j in jobs if j.rule == "probe"]
        assert {(j.wildcards["framework"], j.wildcards["scaling"], j.wildcards["gpus"])
                for j in probes} == expected
        # trained at the smallest GPU count (train_gpus is null), however many are probed
        assert {j.wildcards["gpus"] for j in jobs if j.rule == "train"} == {"0"}
        for job in probes:
            assert job.resources["gpu"] == job.wildcards["gpus"]
            assert job.resources["runtime"] == "30"  # cluster.probe.runtime


# --- a real one-node SLURM -------------------------------------------------------

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


def _slurm_missing():
    """Why no SLURM can be started here, or None (installing it with apt if needed)."""
    if os.geteuid() != 0:
        return f"a real SLURM needs root to install and start it (running as uid {os.geteuid()})"
    if all(shutil.which(d) or os.path.exists(f"/usr/sbin/{d}") for d in DAEMONS):
        return None
    if not shutil.which("apt-get"):
        return "slurm-wlm and munge are not installed and there is no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "slurm-wlm", "munge"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}"
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _munge_works():
    done = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, text=True)
    return done.returncode == 0 and "Success" in done.stdout


def _start_munge():
    """Start munged unless one runs; return its pid file if this call started it."""
    if _munge_works():
        return None
    munge = pwd.getpwnam("munge")
    key = "/etc/munge/munge.key"
    if not os.path.exists(key):
        subprocess.run(["mungekey", "--create", "--keyfile", key], check=True)
    for path, mode in ((key, 0o400), ("/etc/munge", 0o700)):
        os.chown(path, munge.pw_uid, munge.pw_gid)
        os.chmod(path, mode)
    os.makedirs("/run/munge", exist_ok=True)
    os.chown("/run/munge", munge.pw_uid, munge.pw_gid)
    subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True)
    return "/run/munge/munged.pid"


SYSTEM_CONF = "/etc/slurm/slurm.conf"
CONF_NAME = "mosbench-test-slurm.conf"  # a link to it at SYSTEM_CONF is one of ours


def _system_conf_taken():
    """Whether /etc/slurm/slurm.conf belongs to someone else (a configured SLURM)."""
    if os.path.islink(SYSTEM_CONF) and os.readlink(SYSTEM_CONF).endswith(CONF_NAME):
        return False  # left by an interrupted run of this test
    return os.path.lexists(SYSTEM_CONF)


def _write_slurm_conf(root):
    host = socket.gethostname().split(".")[0]
    total_mb = int(subprocess.run(["free", "-m"], capture_output=True, text=True, check=True)
                   .stdout.splitlines()[1].split()[1])
    conf = root / CONF_NAME
    conf.write_text(f"""\
ClusterName=mosbench-test
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MinJobAge=600
NodeName={host} CPUs={os.cpu_count()} RealMemory={max(total_mb - 1024, 1024)} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    os.makedirs(os.path.dirname(SYSTEM_CONF), exist_ok=True)
    if os.path.islink(SYSTEM_CONF):
        os.unlink(SYSTEM_CONF)
    os.symlink(conf, SYSTEM_CONF)
    return conf


def _wait_for(ready, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} not ready after {timeout} s"
        time.sleep(0.5)


def _stop(pid_file):
    """End the daemon whose pid ``pid_file`` holds, and wait for it."""
    try:
        pid = int(open(pid_file).read().split()[0])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.2)
    if os.path.exists(f"/proc/{pid}"):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node SLURM; its environment points the clients at it."""
    reason = _slurm_missing() or (
        f"{SYSTEM_CONF} exists: this machine has a SLURM configuration of its own"
        if _system_conf_taken() else None)
    if reason:
        print(f"SKIPPED the real SLURM test: {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    started = []
    try:
        started.append(_start_munge())
        _wait_for(_munge_works, "munged")
        conf = _write_slurm_conf(root)
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([f"/usr/sbin/{daemon}", "-f", str(conf)], check=True)
            started.append(str(root / f"{daemon}.pid"))

        def idle():
            return subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                  text=True).stdout.strip() == "idle"

        _wait_for(idle, "the SLURM node")
        yield root
    finally:
        if len(started) > 1:  # no job outlives the cluster
            subprocess.run(["scancel", "--user", "root"], capture_output=True, timeout=30)
        for pid_file in reversed(started):
            if pid_file:
                _stop(pid_file)
        if os.path.islink(SYSTEM_CONF) and os.readlink(SYSTEM_CONF).endswith(CONF_NAME):
            os.unlink(SYSTEM_CONF)


@pytest.mark.slow
def test_the_tiny_workflow_runs_through_slurm_with_the_profile(slurm, tmp_path, capsys):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    # every kind of job once: one framework (the one that starts fastest), model and seed; a
    # cell's probes of several frameworks grouped into one job: the dry runs above
    config["run"].update(frameworks=["pytorch"], models=["lstm"], seeds=[1])
    # what this node can give (a group job of several frameworks' probes asks for the sum)
    config["cluster"] = {"train": {"mem_mb": 1000, "runtime": 10}, "probe": {"runtime": 5},
                         "evaluate": {"mem_mb": 1000, "runtime": 10}}
    configfile = tmp_path / "tiny-slurm.yaml"
    configfile.write_text(yaml.safe_dump(config))
    work, logs = tmp_path / "work", tmp_path / "slurm-logs"
    started = time.monotonic()
    done = run_snakemake(
        work, "--profile", "slurm", "--verbose",
        # no slurmdbd here: squeue (with the long MinJobAge) for status, no account
        "--slurm-status-command", "squeue", "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-logdir", str(logs), "--slurm-keep-successful-logs",
        "--default-resources", "mem_mb=1000", "runtime=10",
        configfile=configfile,
        # jobs on other machines need a store named: here, on purpose, the one node's SQLite file
        env={"SBATCH_PARTITION": "debug",
             "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'results' / 'mlflow.db'}"})
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert "log to the SQLite store" in done.stderr  # asked for, and warned about
    with capsys.disabled():
        print(f"\n[tiny workflow through SLURM: {seconds:.0f} s]")

    runs = pd.read_csv(work / "results" / "aggregate" / "runs.csv")
    assert len(runs) == 1 and runs["test_ppl"].notna().all()
    mlflow.set_tracking_uri(f"sqlite:///{work / 'results' / 'mlflow.db'}")
    assert set(mlflow.search_runs(experiment_names=["mosbench-test"])["status"]) == {"FINISHED"}

    # Data pipeline, train, evaluate and the probes went through sbatch, with the profile's
    # and config's requests: the cell's probes as one group job
    calls = [line for line in output.splitlines() if "sbatch call: sbatch" in line]
    assert len(calls) == 4 and output.count("has been submitted with SLURM jobid") == 4
    for call in calls:
        flags = call.split(" --wrap")[0]
        minutes = 5 if "group_probe" in flags else 10  # the config's cluster block
        assert " -p debug" in flags and "--requeue" in flags and f" -t {minutes} " in flags, flags
        assert " --mem 1000" in flags and "--gpus" not in flags, flags  # CPU jobs
    assert sum("rule_train_wildcards" in call and "--nodes=1" in call for call in calls) == 1
    # ... and SLURM ran them: all four completed, local rules never submitted
    jobs = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%k|%T"], capture_output=True,
                          text=True, check=True).stdout.split()
    names = [j.split("|")[0] for j in jobs]
    groups = [n for n in names if "probe-tiny-" in n]  # named after their group
    assert len(groups) == 1 and "probe-tiny-lstm-strong-gpus0" in groups[0]
    assert sorted(n.split("_wildcards")[0] for n in names if n not in groups) == [
        "rule_data_pipeline", "rule_evaluate", "rule_train"]
    assert {j.split("|")[1] for j in jobs} == {"COMPLETED"}
    probes = sorted(p.relative_to(work / "results" / "probe").parts[:2]
                    for p in (work / "results" / "probe").rglob("probe.json"))
    assert probes == [("pytorch", "tiny")]
    assert len(list(logs.glob("rule_train/*/*.log"))) == 1


# --- the profile's requeue / retry decision (profiles/slurm/config.yaml says why) -------

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"


def test_the_profile_leaves_preemption_to_slurm_and_paused_jobs_to_snakemake_s_retries():
    from snakemake_executor_plugin_slurm import ExecutorSettings

    profile = yaml.safe_load(PROFILE.read_text())
    # SLURM requeues preempted and node-failed jobs under their own id; the plugin then
    # keeps waiting on them instead of also reporting a failure for Snakemake to resubmit.
    assert profile["slurm-requeue"] is True and not profile.get("slurm-no-requeue")
    # Time-limited or paused (exit 75) training is never requeued by SLURM: only a
    # retry resubmits it to resume from its checkpoint.
    assert profile["retries"] >= 1
    assert profile["slurm-keep-successful-logs"] is True  # a run's pauses stay on record
    # every slurm-* key is a setting of the plugin (a misspelt one would be an error at start)
    fields = {f.name for f in dataclasses.fields(ExecutorSettings)}
    keys = [k for k in profile if k.startswith("slurm-")]
    assert keys and all(k.removeprefix("slurm-").replace("-", "_") in fields for k in keys)
    # The decision rests on how these versions map SLURM states (PREEMPTED, REQUEUED and
    # NODE_FAIL with requeue: still running; TIMEOUT, FAILED: failed) and on Snakemake
    # running the job itself with --retries 0: re-read the profile's comment on an upgrade.
    assert importlib.metadata.version("snakemake-executor-plugin-slurm") == "2.8.0"
    assert importlib.metadata.version("snakemake") == "9.27.1"
