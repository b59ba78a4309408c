"""The probes time real train steps: strong scaling keeps the global batch, weak the per-device
one; every timed block is kept, and the memory and provenance figures are there or explained."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from mosbench.errors import MosbenchError
from mosbench.measurement.probe import global_batch, run_probe


def test_probes_on_one_and_two_devices(tiny_data):
    done = subprocess.run([sys.executable, str(REPO / "tests" / "probe_check.py"),
                           str(tiny_data)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, strong, weak = (json.loads(line) for line in done.stdout.strip().splitlines()[-3:])
    assert (one["devices"], one["global_batch"]) == (1, 4)
    assert (strong["scaling"], strong["devices"], strong["global_batch"]) == ("strong", 2, 4)
    assert strong["per_device_batch"] == 2
    assert (weak["scaling"], weak["devices"], weak["global_batch"]) == ("weak", 2, 8)
    assert weak["per_device_batch"] == 4
    for probe in (one, strong, weak):
        assert probe["timed_steps"] == 4 and probe["repeats"] == 2 and probe["warmup_steps"] == 1
        assert len(probe["tokens_per_s_blocks"]) == 2 and min(probe["tokens_per_s_blocks"]) > 0
        # the headline is the median block (of two: their mean)
        assert probe["tokens_per_s"] == pytest.approx(sum(probe["tokens_per_s_blocks"]) / 2)
        # tokens/s counts the global batch's tokens; the median step agrees within a factor 3
        per_median_step = probe["global_batch"] * probe["bptt"] / probe["step_time_median_s"]
        assert per_median_step / 3 < probe["tokens_per_s"] < per_median_step * 3
        assert probe["warmup_s"] > 0
        # a CPU job: no allocator peak and no GPU memory, each with its reason
        assert probe["allocator_peak_mb"] is None
        assert probe["absent"]["allocator_peak_mb"].startswith("gpus=0")
        assert probe["host_rss_peak_mb"] > 0
        assert probe["provenance"]["framework"] == "tensorflow"
        assert probe["provenance"]["cpu_model"]


def test_global_batch_per_scaling_mode():
    hp = {"batch_size": 12}
    assert [global_batch(hp, "strong", n) for n in (1, 2, 8)] == [12, 12, 12]
    assert [global_batch(hp, "weak", n) for n in (1, 2, 8)] == [12, 24, 96]
    with pytest.raises(MosbenchError, match="unknown scaling 'sideways'; allowed"):
        global_batch(hp, "sideways", 2)


def test_a_split_too_short_for_the_batch_is_refused(tiny_data):
    hp = {"batch_size": 1000, "bptt": 10}  # 6 tokens per stream
    with pytest.raises(MosbenchError, match="too few tokens for a batch of 1000 x 11"):
        run_probe(tiny_data, model_name="lstm", hparams=hp, seed=1, gpus=0,
                  framework="tensorflow")
