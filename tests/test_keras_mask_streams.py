"""benchmarks/keras_mask_streams.py's two checks of the TensorFlow engine's own mask draws,
on a tiny engine, each shown to fail on a planted fault."""

import importlib.util
import sys

import numpy as np
import pytest

from conftest import REPO, tiny_tensorflow_engine

pytest.importorskip("tensorflow")
pytest.importorskip("statsmodels", reason="benchmarks/fidelity.py needs statsmodels")

SPEC = importlib.util.spec_from_file_location("keras_mask_streams",
                                              REPO / "benchmarks" / "keras_mask_streams.py")
streams = importlib.util.module_from_spec(SPEC)
sys.modules["keras_mask_streams"] = streams
SPEC.loader.exec_module(streams)


def test_the_engine_s_nine_sites_share_no_stream_and_one_planted_twin_shares_all():
    engine = tiny_tensorflow_engine(28)
    generators = streams.mask_generators(engine.model)
    engine.close()
    assert len(generators) == 9  # embedding, 5 locked (input, 2 hidden, output, latent), 3 wd
    assert [d for _, d in generators.values()].count("int32") == 3  # Keras's weight drop
    sites = {name: (int(g.state.numpy()[0]), dtype) for name, (g, dtype) in generators.items()}
    rows = streams.stream_overlaps(sites, 4096, 2)
    assert len(rows) == 36 * 5 + 9 * 2  # pairs at offsets -1, 0, +1 over 2 steps; self +1
    lines, p_any = streams.overlap_summary(rows, 4096)
    assert max(r["common"] for r in rows) < 4096 / 50 and p_any > 1e-3
    assert "by chance about 2.0" in lines[0]
    first = next(iter(sites))
    twin = {**sites, "twin": (sites[first][0], "int32")}  # one stream, other key dtype
    planted = streams.stream_overlaps(twin, 4096, 2)
    same = [r for r in planted if {r["a"], r["b"]} == {first, "twin"} and r["offset"] == 0]
    assert same and all(r["common"] == 4096 for r in same)
    assert streams.overlap_summary(planted, 4096)[1] < 1e-12


def test_weight_drop_s_backward_moves_only_entries_its_forwards_kept(monkeypatch):
    import keras

    from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM
    window = np.random.default_rng(3).integers(0, 50, (4, 9)).astype(np.int32)

    def check(**hp):
        engine = tiny_tensorflow_engine(28, {"clip": 0.0, "alpha": 0.0, "beta": 0.0, **hp})
        rows = streams.weight_drop_backward(engine, window, 2)
        engine.close()
        return rows

    rows = check()
    assert len(rows) == 2 * 3 and all(r["forwards"] == 2 for r in rows)  # two chunks a step
    assert all(r["moved where dropped"] == 0 for r in rows)
    assert all(r["control"] > 0 and 0.5 < r["moved"] <= r["kept"] for r in rows)
    # planted: the kernel masked by a fixed seed's mask, not the layer's generator's
    monkeypatch.setattr(WeightDropLSTM, "dropped_recurrent_kernel", lambda self, training:
                        keras.random.dropout(self.recurrent_kernel, self.weight_dropout,
                                             seed=5))
    assert any(r["moved where dropped"] > 0 for r in check())
