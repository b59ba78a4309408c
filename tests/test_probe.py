"""The weak-scaling probe keeps the per-device batch and times real train steps."""

import json
import subprocess
import sys

from conftest import REPO


def test_probe_keeps_the_per_device_batch_on_one_and_two_devices(tiny_data):
    done = subprocess.run([sys.executable, str(REPO / "tests" / "weak_scaling_check.py"),
                           str(tiny_data)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert (one["devices"], one["global_batch"]) == (1, 4)
    assert (two["devices"], two["global_batch"]) == (2, 8)
    for probe in (one, two):
        assert probe["per_device_batch"] == 4 and probe["timed_steps"] == 5
        assert probe["tokens_per_s"] > 0 and probe["step_time_median_s"] > 0
        # tokens/s counts the global batch's tokens over the timed steps (their mean)
        per_median_step = probe["global_batch"] * probe["bptt"] / probe["step_time_median_s"]
        assert per_median_step / 3 < probe["tokens_per_s"] < per_median_step * 3
