"""N replicas make the update one device makes on the same global batch."""

import json
import subprocess
import sys

from conftest import REPO


def test_two_replicas_equal_one_device_with_clipping():
    done = subprocess.run([sys.executable, str(REPO / "tests" / "data_parallel_check.py")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    # Clipping was active: the gradient step has the clipped norm lr * clip, so an
    # unclipped or per-replica-clipped step would differ.
    assert abs(result["update_norm"] - result["lr_times_clip"]) < 1e-5
    assert result["nll_difference"] < 1e-6
    assert result["weight_difference"] < 1e-6
    assert result["state_difference"] < 1e-6
    # Locked (and embedding) dropout masks differ between replicas; weight drop's is shared.
    assert not result["locked_masks_equal"]
    assert result["weight_drop_masks_equal"]
