"""The paper's grid as the references run it: caps, batch splits, precision.

Epoch and finetune caps come from shared/reference/mos-reference.md and the
reference READMEs (salesforce/awd-lstm-lm: ``main.py`` / ``finetune.py``
``--epochs 500`` on PTB and ``750`` on WikiText-2; zihangdai/mos: ``--epochs
1000`` for both scripts on both data sets). MoC, the paper's ablation, runs
with the MoS settings.
"""

import copy

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from mosbench.config import load_config, validate_config
from mosbench.engines.replicas import replica_rows
from mosbench.engines.tensorflow.devices import set_matmul_precision
from mosbench.engines.tensorflow.models import build_model
from mosbench.engines.tensorflow.steps import make_train_step
from mosbench.errors import MosbenchError

# (dataset, model) -> (epochs, finetune_epochs)
REFERENCE_CAPS = {
    ("ptb", "awd-lstm"): (500, 500),
    ("wikitext2", "awd-lstm"): (750, 750),
    ("ptb", "awd-lstm-mos"): (1000, 1000),
    ("wikitext2", "awd-lstm-mos"): (1000, 1000),
    ("ptb", "awd-lstm-moc"): (1000, 1000),
    ("wikitext2", "awd-lstm-moc"): (1000, 1000),
}
PUBLISHED_BATCH = {("ptb", "lstm"): 20, ("wikitext2", "lstm"): 20, ("ptb", "awd-lstm"): 20,
                   ("wikitext2", "awd-lstm"): 80, ("ptb", "awd-lstm-mos"): 12,
                   ("wikitext2", "awd-lstm-mos"): 15, ("ptb", "awd-lstm-moc"): 12,
                   ("wikitext2", "awd-lstm-moc"): 15}


@pytest.fixture(scope="module")
def grid():
    return load_config(REPO / "config" / "config.yaml")


def test_epoch_and_finetune_caps_match_the_references(grid):
    caps = {cell: (grid["presets"][cell[0]][cell[1]]["epochs"],
                   grid["presets"][cell[0]][cell[1]]["finetune_epochs"])
            for cell in REFERENCE_CAPS}
    assert caps == REFERENCE_CAPS


def test_the_grid_keeps_the_published_batches_on_every_gpu_count(grid):
    assert grid["run"]["gpus"] == [1, 2, 4, 8]
    for (dataset, model), batch in PUBLISHED_BATCH.items():
        assert grid["presets"][dataset][model]["batch_size"] == batch
        for gpus in grid["run"]["gpus"]:  # every cell splits, evenly or not
            shares = replica_rows(batch, gpus)
            sizes = [end - first for first, end in shares]
            assert sum(sizes) == batch and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
            assert [first for first, _ in shares[1:]] == [end for _, end in shares[:-1]]


def test_replica_rows_split_like_a_balanced_data_parallel():
    assert replica_rows(12, 8) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 9), (9, 10), (10, 11),
                                   (11, 12)]
    assert replica_rows(15, 2) == [(0, 8), (8, 15)]
    assert replica_rows(20, 1) == [(0, 20)]
    with pytest.raises(MosbenchError, match="smaller than the 8 devices"):
        replica_rows(4, 8)


def test_a_cell_that_cannot_run_is_refused_at_load_naming_every_cell(grid):
    config = copy.deepcopy(grid)
    config["run"]["gpus"] = [1, 16]
    config["cluster"]["max_gpus"] = 16
    with pytest.raises(MosbenchError) as caught:
        validate_config(config)
    message = str(caught.value)
    assert "run.gpus" in message and "batch_size" in message
    for dataset, batch in (("ptb", 12), ("wikitext2", 15)):
        for model in ("awd-lstm-mos", "awd-lstm-moc"):
            assert f"{dataset} {model} gpus=16 (batch_size {batch})" in message
    assert " lstm gpus" not in message and "awd-lstm gpus" not in message  # 20 and 80 split


def test_matmul_precision_defaults_to_strict_float32(grid):
    for models in grid["presets"].values():
        for values in models.values():
            assert values["matmul_precision"] == "float32"


@pytest.mark.parametrize("precision", ["float32", "tf32", "mixed_bfloat16"])
def test_matmul_precision_is_applied(precision):
    try:
        set_matmul_precision(precision)
        assert tf.config.experimental.tensor_float_32_execution_enabled() == (precision == "tf32")
        policy = keras.mixed_precision.global_policy().name
        assert policy == ("mixed_bfloat16" if precision == "mixed_bfloat16" else "float32")
    finally:
        set_matmul_precision("float32")


HP = dict(emsize=8, nhid=16, nhidlast=16, nlayers=2, dropout=0.1, dropouth=0.1, dropouti=0.1,
          dropoute=0.1, wdrop=0.1, init_range=0.5, n_experts=3, dropoutl=0.1, alpha=2.0,
          beta=1.0, clip=0.25, small_batch_size=None, tie_weights=True)


@pytest.mark.cpu_bfloat16
@pytest.mark.parametrize("model_name", ["lstm", "awd-lstm", "awd-lstm-moc", "awd-lstm-mos"])
def test_every_model_trains_in_mixed_bfloat16_with_float32_weights(model_name):
    hp = dict(HP, nhid=8, nlayers=1) if model_name == "lstm" else dict(HP)
    if model_name == "awd-lstm":
        hp["nhidlast"] = 8
    tokens = np.random.default_rng(0).integers(0, 30, (4, 11)).astype("int32")
    losses = {}
    try:
        for precision in ("mixed_bfloat16", "float32"):
            set_matmul_precision(precision)
            keras.utils.set_random_seed(1)
            model = build_model(model_name, 30, hp)
            optimizer = keras.optimizers.SGD(1.0)
            optimizer.build(model.trainable_variables)
            step = make_train_step(model, optimizer, 4, hp)
            nll, states = step(tf.constant(tokens[:, :-1]), tf.constant(tokens[:, 1:]),
                               model.initial_state(4), tf.constant(1.0))
            losses[precision] = float(nll)
            assert {v.dtype for v in model.trainable_variables} == {"float32"}
            # the carried state keeps float32, so the next window runs the same traced step
            assert {s.dtype for state in states for s in state} == {tf.float32}
            step(tf.constant(tokens[:, :-1]), tf.constant(tokens[:, 1:]), states,
                 tf.constant(1.0))
    finally:
        set_matmul_precision("float32")
    # bfloat16 has 8 bits of mantissa: the same loss to about a percent
    assert losses["mixed_bfloat16"] == pytest.approx(losses["float32"], rel=0.02)
