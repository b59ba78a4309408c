"""Dynamic evaluation's settings: the paper grid runs the reference README's.

The algorithm itself is checked against a float64 NumPy oracle, for every
engine, in the conformance suite (``test_engine_conformance.py``).
"""

import yaml

from conftest import REPO
from mosbench.config import validate_config

# The reference README's settings (zihangdai/mos): PTB passes --lamb 0.075 and keeps the
# defaults lr 0.002, epsilon 0.001; WikiText-2 passes --epsilon 0.002 and keeps lamb 0.02.
# Statistics at batch 100 over the whole training data, adaptation at batch 1, bptt 5.
REFERENCE_DYNAMIC_EVAL = {
    "ptb": {"lr": 0.002, "lamb": 0.075, "epsilon": 0.001},
    "wikitext2": {"lr": 0.002, "lamb": 0.02, "epsilon": 0.002},
}
REFERENCE_LOOP = {"bptt": 5, "batch_size": 1, "stat_batch_size": 100, "stat_max_batches": None}


def dynamic_eval_mismatches(config):
    """(dataset, key, ours, reference) wherever the MoS presets differ from the README."""
    found = []
    for dataset, expected in REFERENCE_DYNAMIC_EVAL.items():
        options = config["presets"][dataset]["awd-lstm-mos"]["dynamic_eval"]
        for key, value in {**expected, **REFERENCE_LOOP}.items():
            if options[key] != value:
                found.append((dataset, key, options[key], value))
    return found


def full_config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_paper_grid_runs_dynamic_evaluation_with_the_readme_settings():
    assert dynamic_eval_mismatches(validate_config(full_config())) == []


def test_the_old_wikitext2_lamb_planted_back_fails():
    config = full_config()
    config["presets"]["wikitext2"]["awd-lstm-mos"]["dynamic_eval"]["lamb"] = 0.075
    assert dynamic_eval_mismatches(validate_config(config)) == [
        ("wikitext2", "lamb", 0.075, 0.02)]
