"""Local jobs get GPUs of their own: lock files per device, CUDA_VISIBLE_DEVICES set."""

import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from mosbench.errors import MosbenchError
from mosbench.gpu_slots import assign_devices, claim, machine_gpus

FOUR = ["0", "1", "2", "3"]


def test_claims_never_share_a_device(tmp_path):
    first = claim(2, FOUR, lock_dir=tmp_path)
    second = claim(2, FOUR, lock_dir=tmp_path)
    assert first.devices == ["0", "1"] and second.devices == ["2", "3"]
    with pytest.raises(MosbenchError, match="no 1 free GPU"):
        claim(1, FOUR, lock_dir=tmp_path, poll_s=0.01, timeout_s=0.05)
    first.release()
    with claim(1, FOUR, lock_dir=tmp_path) as third:
        assert third.devices == ["0"]


def test_a_waiting_claim_gets_the_devices_once_freed(tmp_path):
    held = claim(2, ["0", "1"], lock_dir=tmp_path)
    started = time.monotonic()
    waiter = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mosbench.gpu_slots import claim; "
         "print(claim(2, ['0', '1'], lock_dir=sys.argv[1], poll_s=0.05).devices)", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert waiter.poll() is None  # still waiting
    held.release()
    out, err = waiter.communicate(timeout=30)
    assert out.strip() == "['0', '1']" and "waiting for 2 free GPU(s)" in err
    assert time.monotonic() - started >= 1.0


def test_a_killed_job_frees_its_devices(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mosbench.gpu_slots import claim; "
         "c = claim(1, ['7'], lock_dir=sys.argv[1]); print('held', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(MosbenchError):
        claim(1, ["7"], lock_dir=tmp_path, poll_s=0.01, timeout_s=0.05)
    holder.kill()
    holder.wait()
    assert claim(1, ["7"], lock_dir=tmp_path, timeout_s=5).devices == ["7"]


def _job(lock_dir, log, hold_s):
    with claim(1, ["0", "1"], lock_dir=lock_dir, poll_s=0.01) as c:
        start = time.monotonic()
        time.sleep(hold_s)
        with open(log, "a") as f:
            f.write(f"{c.devices[0]} {start} {time.monotonic()}\n")


def test_concurrent_jobs_take_turns(tmp_path):
    log = tmp_path / "log"
    jobs = [multiprocessing.Process(target=_job, args=(tmp_path / "locks", log, 0.2))
            for _ in range(6)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(30)
        assert job.exitcode == 0
    spans = [line.split() for line in log.read_text().splitlines()]
    assert len(spans) == 6
    for device in "01":
        mine = sorted((float(a), float(b)) for d, a, b in spans if d == device)
        assert all(end <= start for (_, end), (start, _) in zip(mine, mine[1:], strict=False))


def test_more_gpus_than_the_machine_has_is_an_error(tmp_path):
    with pytest.raises(MosbenchError, match="gpus=3 was asked for, but this machine has 2"):
        claim(3, ["0", "1"], lock_dir=tmp_path)


def test_the_machine_gpus_respect_cuda_visible_devices():
    assert machine_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert machine_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert machine_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]
    assert isinstance(machine_gpus({}), list)  # NVML's count; none on a machine without GPUs


def test_assign_sets_cuda_visible_devices(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6"}
    assert assign_devices(2, env, lock_dir=tmp_path) == ["4", "5"]
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5"
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6"}
    assert assign_devices(1, env, lock_dir=tmp_path) == ["6"]  # 4 and 5 are still held
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6"}
    assert assign_devices(0, env, lock_dir=tmp_path) == []
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU job sees no GPU at all


def test_under_slurm_jobs_share_out_their_allocation(tmp_path):
    """A local executor inside salloc: jobs get the allocation's GPUs in turn, not all GPU 0."""
    allocation = {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "1,3"}
    first, second, cpu = dict(allocation), dict(allocation), dict(allocation)
    assert assign_devices(1, first, lock_dir=tmp_path) == ["1"]
    assert assign_devices(1, second, lock_dir=tmp_path) == ["3"]
    assert (first["CUDA_VISIBLE_DEVICES"], second["CUDA_VISIBLE_DEVICES"]) == ("1", "3")
    assert assign_devices(0, cpu, lock_dir=tmp_path) == [] and cpu["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(MosbenchError, match="no 1 free GPU"):  # both held: a third waits
        claim(1, ["1", "3"], lock_dir=tmp_path / "slurm-42", poll_s=0.01, timeout_s=0.05)
    # Another allocation on the node whose cgroup also numbers its GPU 1 is not kept waiting.
    other = {"SLURM_JOB_ID": "43", "CUDA_VISIBLE_DEVICES": "1"}
    assert assign_devices(1, other, lock_dir=tmp_path) == ["1"]
    assert sorted(os.listdir(tmp_path)) == ["slurm-42", "slurm-43"]
    assert os.stat(tmp_path / "slurm-42").st_mode & 0o1777 == 0o1777
