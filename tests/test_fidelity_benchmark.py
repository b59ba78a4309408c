"""benchmarks/fidelity.py: its verdicts, its kept runs, its runs on GPUs and at once.

The verdicts on planted numbers (a difference, none, too few runs): per-seed
validation losses of two sides, compared with Welch's interval and the two
one-sided tests at the default margin of 1 % of perplexity. The kept runs:
one file per code key, so runs of two commits live side by side, and a kept
run found again by the code hash of the commit it was trained at. ``--gpus`` and
``--parallel``: a CPU run's key unchanged and a GPU run's its own, the refusals,
the arguments `mosbench train` gets, and one test that trains: tiny PyTorch runs
two at a time through fidelity's own engine path in one work folder (about 40 s
on a busy 2-core machine).
"""

import contextlib
import functools
import importlib.util
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import yaml

from conftest import REPO, TINY_CONFIG, tiny_tensorflow_engine

pytest.importorskip("statsmodels", reason="benchmarks/fidelity.py needs statsmodels")

SPEC = importlib.util.spec_from_file_location("fidelity", REPO / "benchmarks" / "fidelity.py")
fidelity = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fidelity)

MARGIN = math.log(1.01)  # the default: 1 % of perplexity
SPREAD = 0.002  # seed-to-seed spread of the loss, nats: about 0.2 % of perplexity


def losses(mean, n, seed):
    return mean + np.random.default_rng(seed).normal(0.0, SPREAD, n)


def test_a_planted_difference_names_the_lower_side_with_its_interval():
    base, other = losses(6.0, 5, 1), losses(6.0 - 0.05, 5, 2)  # about 4.9 % lower ppl
    c = fidelity.compare("tensorflow", base, "pytorch", other, MARGIN)
    assert c["diff"] < 0 and c["ci_high"] < 0
    found = c["verdict"]
    assert found.startswith("pytorch lower than tensorflow by ")
    by, low, high = map(float, re.findall(r"(\d+\.\d+)", found))
    assert low < by < high and low < 100 * -math.expm1(-0.05) < high


def test_the_baseline_can_be_the_lower_side():
    c = fidelity.compare("tensorflow", losses(6.0, 5, 3), "pytorch", losses(6.05, 5, 4), MARGIN)
    assert c["verdict"].startswith("tensorflow lower than pytorch by ")


def test_equal_sides_are_equivalent_within_the_margin():
    c = fidelity.compare("tensorflow", losses(6.0, 5, 5), "pytorch", losses(6.0, 5, 6), MARGIN)
    assert c["p_tost"] < 0.05
    assert c["verdict"] == "equivalent within ±1 % ppl"


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_seeds_are_inconclusive(n):
    # n = 2 with a wide spread: neither a difference nor equivalence can be shown
    base = losses(6.0, n, 7) if n == 1 else np.array([6.0, 6.03])
    other = losses(6.0, n, 8) if n == 1 else np.array([6.01, 5.99])
    c = fidelity.compare("tensorflow", base, "pytorch", other, MARGIN)
    assert c["verdict"] == f"inconclusive (n = {n}, {n})"


def test_the_margin_is_given_in_nats_or_as_a_share_of_perplexity():
    assert fidelity.margin_type("2%") == pytest.approx(math.log(1.02))
    assert fidelity.margin_type("0.01") == 0.01
    for bad in ("0", "-1%", "one"):
        with pytest.raises(Exception, match="margin|expected"):
            fidelity.margin_type(bad)


def ok_run(side, seed, loss):
    return {"side": side, "seed": seed, "status": "ok", "valid_loss": loss}


def test_runs_of_two_code_versions_are_kept_side_by_side(tmp_path):
    old, new = (fidelity.run_key("jax", 30, {"lr": 20}, None, code) for code in ("a1", "b2"))
    fidelity.store_run(tmp_path, ok_run("jax", 30, 6.1), old)
    fidelity.store_run(tmp_path, ok_run("jax", 30, 6.2), new)
    assert fidelity.stored_run(tmp_path, "jax", 30, old)["valid_loss"] == 6.1
    assert fidelity.stored_run(tmp_path, "jax", 30, new)["valid_loss"] == 6.2
    assert fidelity.stored_run(tmp_path, "jax", 31, old) is None
    assert not list((tmp_path / "runs").glob("*.partial"))


def test_a_run_kept_under_the_earlier_one_file_per_seed_name_is_still_found(tmp_path):
    key = fidelity.run_key("pytorch", 28, {}, None, "c3")
    (tmp_path / "runs").mkdir()
    legacy = tmp_path / "runs" / "pytorch-seed28.json"
    legacy.write_text(json.dumps({"key": key, "record": ok_run("pytorch", 28, 5.8)}))
    assert fidelity.stored_run(tmp_path, "pytorch", 28, key)["valid_loss"] == 5.8
    assert fidelity.stored_run(tmp_path, "pytorch", 28, key[::-1]) is None
    legacy.write_text(json.dumps({"key": key, "record": {**ok_run("pytorch", 28, 5.8),
                                                         "status": "paused"}}))
    assert fidelity.stored_run(tmp_path, "pytorch", 28, key) is None


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_the_code_key_of_an_earlier_commit_is_its_train_code_hash_then(tmp_path):
    """A real git repository holding a copy of the package at two commits."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "src" / "mosbench", repo / "src" / "mosbench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git(tmp_path, "init", "-q", str(repo))
    for args in (("add", "-A"), ("-c", "user.name=t", "-c", "user.email=t@t", "commit",
                                 "-qm", "first")):
        git(repo, *args)
    first = git(repo, "rev-parse", "--short", "HEAD")
    engine = repo / "src" / "mosbench" / "engines" / "jax" / "engine.py"
    then = fidelity.code_hash("train", "jax", root=repo / "src" / "mosbench")
    engine.write_text(engine.read_text() + "\n# an edit\n")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "second")
    now = fidelity.code_hash("train", "jax", root=repo / "src" / "mosbench")
    assert now != then

    assert fidelity.code_hash_at(first, "jax", tmp_path / "scratch", repo) == (first, then)
    assert fidelity.code_hash_at("HEAD", "jax", tmp_path / "scratch", repo)[1] == now
    # The other engines' code did not change between the commits.
    assert (fidelity.code_hash_at(first, "pytorch", tmp_path / "scratch", repo)[1]
            == fidelity.code_hash("train", "pytorch", root=repo / "src" / "mosbench"))
    with pytest.raises(ValueError, match="--code jax=nosuchrev: not a commit"):
        fidelity.code_hash_at("nosuchrev", "jax", tmp_path / "scratch", repo)


def test_code_revisions_are_named_per_side_and_only_for_chosen_sides():
    frameworks = ["tensorflow", "jax"]
    assert fidelity.parse_code_revisions(["jax=484512b"], frameworks) == {"jax": "484512b"}
    for bad, why in ((["jax"], "expected SIDE=REV"), (["torch=abc"], "not one of --frameworks"),
                     (["jax=a", "jax=b"], "given twice")):
        with pytest.raises(ValueError, match=why):
            fidelity.parse_code_revisions(bad, frameworks)


HP = {"bptt": 10, "variable_bptt": True, "max_seq_len_delta": 4}


def write_log(path, seed, block_loss, every=3, valid=6.1234, resumed=False):
    """A `mosbench train` log whose windows have the losses ``block_loss(step)``."""
    lengths = [n for _, n, _ in fidelity.epoch_windows(np.random.default_rng(seed), 400, 10,
                                                       True, 4)]
    lines = ["resuming at epoch 1, window position 40"] if resumed else []
    total = tokens = 0
    for step, n in enumerate(lengths, 1):
        total, tokens = total + block_loss(step) * n, tokens + n
        if step % every == 0:
            lines.append(f"train epoch 1/1 | step {step}/~{len(lengths)} {step}% | "
                         f"loss {total / tokens:.3f} | 90 tok/s | elapsed 0:00:01")
    lines.append(f"wrote results/train/x; best valid loss {valid:.4f}")
    path.write_text("\n".join(lines) + "\n")
    return len(lengths)


def test_block_losses_are_recovered_from_the_running_means_of_a_log(tmp_path):
    log = tmp_path / "run.log"
    write_log(log, 3, lambda step: 7.0 if step <= 6 else 6.0)
    progress = fidelity.progress_losses(log, valid_loss=6.1234)
    assert [step for step, _ in progress][:3] == [3, 6, 9]
    blocks = fidelity.block_losses(progress, 400, HP, 3)
    assert blocks[3] == pytest.approx(7.0, abs=2e-3) and blocks[6] == pytest.approx(7.0, abs=2e-3)
    assert blocks[9] == pytest.approx(6.0, abs=5e-3) and blocks[12] == pytest.approx(6.0, abs=8e-3)
    # the log of another run (another last validation loss), a resumed run's, no log
    assert fidelity.progress_losses(log, valid_loss=6.2) is None
    write_log(log, 3, lambda step: 7.0, resumed=True)
    assert fidelity.progress_losses(log) is None
    assert fidelity.progress_losses(tmp_path / "absent.log") is None


def test_the_curve_table_compares_each_side_block_by_block(tmp_path):
    records = []
    for side, offset in (("tensorflow", 0.0), ("pytorch", -0.1)):
        for seed in (1, 2):
            log = tmp_path / f"{side}-{seed}.log"
            write_log(log, seed, lambda step, o=offset: 7.0 + (o if step > 6 else 0.0))
            records.append({"side": side, "seed": seed, "status": "ok",
                            "train_progress": fidelity.progress_losses(log)})
    lines = fidelity.curve_table(records, ["tensorflow", "pytorch"], HP, 400)
    assert lines[0].startswith("| windows | tensorflow (n = 2) | pytorch (n = 2) |")
    first, third = lines[2], lines[4]
    assert first.startswith("| 1-3 |") and "+0.000 (0/2)" in first
    assert third.startswith("| 7-9 |") and third.endswith("(2/2) |")
    assert float(third.split("|")[4].split()[0]) == pytest.approx(-0.1, abs=5e-3)
    assert fidelity.curve_table(records[:2], ["tensorflow", "pytorch"], HP, 400) == []


def test_the_reference_s_interval_losses_join_the_curve_table_at_its_own_blocks(tmp_path):
    records = []
    for seed in (1, 2):
        log = tmp_path / f"tf-{seed}.log"
        write_log(log, seed, lambda step: 7.0 if step <= 6 else 6.0)
        records.append({"side": "tensorflow", "seed": seed, "status": "ok",
                        "train_progress": fidelity.progress_losses(log)})
        log = tmp_path / f"ref-{seed}.log"
        log.write_text("".join(f"| epoch   1 |   {step}/  40 batches | lr 20.00 | ms/batch 2.0 "
                               f"| loss  {loss:.2f} | ppl  99.00\n"
                               for step, loss in ((6, 7.1), (12, 6.2), (18, 6.0)))
                       + "fidelity: valid loss per token 6.5\n")
        assert fidelity.interval_losses(log, valid_loss=6.4) is None  # another run's log
        records.append({"side": "reference", "seed": seed, "status": "ok",
                        "train_intervals": fidelity.interval_losses(log, valid_loss=6.5)})
    lines = fidelity.curve_table(records, ["tensorflow", "reference"], HP, 400)
    assert [line.split(" |")[0] for line in lines[2:5]] == ["| 1-6", "| 7-12", "| 13-18"]
    assert "+0.100 (0/2)" in lines[2]  # 7.1 against 7.0, each seed
    assert float(lines[3].split("|")[4].split()[0]) == pytest.approx(0.2, abs=8e-3)


def test_another_mask_source_is_another_run_and_native_keys_are_unchanged():
    hp = {"lr": 20.0}
    native = fidelity.run_key("pytorch", 28, hp, 100, fidelity.masked_code("abc", "native"))
    assert native == fidelity.run_key("pytorch", 28, hp, 100, "abc")
    keys = {fidelity.run_key("pytorch", 28, hp, 100, fidelity.masked_code("abc", m))
            for m in fidelity.MASKS}
    assert len(keys) == len(fidelity.MASKS)


def test_each_subset_of_mask_sites_is_its_own_run_and_all_sites_is_the_plain_source():
    every = fidelity.MASK_SITES["tensorflow"]
    assert fidelity.chosen_sites(None, "tensorflow") is None
    assert fidelity.chosen_sites(list(reversed(every)), "tensorflow") is None
    assert fidelity.chosen_sites(["embedding", "locked"], "tensorflow") == ("locked", "embedding")
    hp = {"lr": 20.0}
    keys = {fidelity.run_key("tensorflow", 28, hp, 100, fidelity.masked_code(
        "abc", "numpy", fidelity.chosen_sites(sites, "tensorflow")))
        for sites in (None, every, ["weight-drop"], ["locked", "embedding"],
                      ["embedding", "locked"], ["locked"])}
    assert len(keys) == 4  # all (twice), weight-drop, locked+embedding (twice), locked
    assert fidelity.mask_environment("numpy", "tensorflow", 28, ("locked", "embedding"))[
        "MOSBENCH_MASK_SITES"] == "locked,embedding"
    assert "MOSBENCH_MASK_SITES" not in fidelity.mask_environment("numpy", "tensorflow", 28)


@pytest.mark.parametrize("argv, words", [
    (["--masks", "tf-stateless", "--frameworks", "pytorch", "--no-reference"],
     ["--masks tf-stateless", "pytorch", "allowed: tensorflow"]),
    (["--masks", "torch-rand", "--frameworks", "tensorflow", "--no-reference"],
     ["--masks torch-rand", "tensorflow", "allowed: pytorch"]),
    (["--masks", "numpy", "--frameworks", "pytorch", "jax", "--no-reference"],
     ["jax", "allowed: pytorch, tensorflow"]),
    (["--masks", "numpy", "--frameworks", "pytorch"], ["--no-reference"]),
    (["--mask-sites", "locked", "--frameworks", "tensorflow", "--no-reference"],
     ["--mask-sites", "give --masks"]),
    (["--masks", "numpy", "--mask-sites", "locked", "--frameworks", "tensorflow", "pytorch",
      "--no-reference"], ["--mask-sites", "pytorch", "allowed for tensorflow only"]),
    (["--masks", "numpy", "--mask-sites", "dropconnect", "--no-reference"],
     ["--mask-sites", "dropconnect", "embedding", "locked", "weight-drop"]),
])
def test_a_mask_source_an_engine_lacks_is_refused_by_name(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        fidelity.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err


def test_mask_environment_routes_the_train_process_s_masks_through_numpy(tmp_path):
    """A process started with the environment ``run_engine`` gives ``mosbench train`` draws
    PyTorch's masks from NumPy: the values are NumPy's, in call order, for that seed."""
    pytest.importorskip("torch")
    script = ("import torch; from mosbench.engines.pytorch.models import masks; "
              "print([masks.dropout_mask(torch.zeros(1), (2, 5), r).tolist() "
              "for r in (0.4, 0.5)])")
    env = {**os.environ, **fidelity.mask_environment("numpy", "pytorch", 28)}
    done = subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, check=True)
    assert "pytorch's dropout masks from numpy" in done.stderr
    draw = fidelity.mask_sources.numpy_masks(28)
    expected = [draw((2, 5), 0.4).tolist(), draw((2, 5), 0.5).tolist()]
    assert json.loads(done.stdout) == expected
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True,
                           text=True, check=True)
    assert "mask_sources" not in plain.stderr and json.loads(plain.stdout) != expected


def test_torch_rand_masks_keep_the_rate_and_follow_the_engine_s_generator(monkeypatch):
    torch = pytest.importorskip("torch")
    from mosbench.engines.pytorch.models import masks
    monkeypatch.setattr(masks, "dropout_mask", masks.dropout_mask)  # restored afterwards
    fidelity.mask_sources.install_pytorch("torch-rand", 0)

    def drawn(seed):
        generator = torch.Generator().manual_seed(seed)
        with masks.drawn_from(generator, generator):
            return masks.dropout_mask(torch.zeros(1), (400, 500), 0.4)

    mask = drawn(3)
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / 0.6)]
    assert abs((mask > 0).float().mean().item() - 0.6) < 0.005  # sd 0.0007
    assert torch.equal(mask, drawn(3)) and not torch.equal(mask, drawn(4))
    uniform = torch.rand((400, 500), generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask > 0, uniform >= 0.4)


@pytest.fixture
def keras_seams(monkeypatch):
    """``{site: (owner, attribute)}`` of the Keras mask seams the sources replace, each
    restored after the test."""
    pytest.importorskip("tensorflow")
    from mosbench.engines.tensorflow.models import embedding_dropout, locked_dropout
    from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM
    seams = {"embedding": (embedding_dropout, "dropout_mask"),
             "locked": (locked_dropout, "dropout_mask"),
             "weight-drop": (WeightDropLSTM, "dropped_recurrent_kernel")}
    for owner, name in seams.values():
        monkeypatch.setattr(owner, name, getattr(owner, name))
    return seams


def test_numpy_masks_reach_every_keras_mask_site_inside_a_compiled_step(keras_seams):
    import tensorflow as tf

    from mosbench.engines.tensorflow.models import embedding_dropout, locked_dropout
    from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM
    module = fidelity.mask_sources
    module.install_tensorflow(11)

    @tf.function
    def step(n):
        return (locked_dropout.dropout_mask((1, n, 3), 0.5, None),
                embedding_dropout.dropout_mask((n, 1), 0.1, None))

    got = [m.numpy() for m in step(tf.constant(4))] + [m.numpy() for m in step(tf.constant(4))]
    layer = types.SimpleNamespace(weight_dropout=0.5, recurrent_kernel=tf.ones((2, 3)),
                                  seed_generator=None)
    got.append(WeightDropLSTM.dropped_recurrent_kernel(layer, True).numpy())
    draw = module.numpy_masks(11)
    expected = [draw((1, 4, 3), 0.5), draw((4, 1), 0.1), draw((1, 4, 3), 0.5), draw((4, 1), 0.1),
                draw((2, 3), 0.5)]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(  # evaluation: the raw kernel
        WeightDropLSTM.dropped_recurrent_kernel(layer, False).numpy(), np.ones((2, 3)))


@pytest.mark.parametrize("sites", [("weight-drop",), ("locked", "embedding")])
def test_mask_sites_replace_only_the_named_keras_seams(sites, keras_seams):
    import tensorflow as tf

    from mosbench.engines.tensorflow.models import locked_dropout
    from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM
    seams = keras_seams
    own = {site: getattr(owner, name) for site, (owner, name) in seams.items()}
    fidelity.mask_sources.install("numpy", "tensorflow", 11, list(sites))
    replaced = {site for site, (owner, name) in seams.items()
                if getattr(owner, name) is not own[site]}
    assert replaced == set(sites)
    draw = fidelity.mask_sources.numpy_masks(11)
    if "weight-drop" in sites:
        layer = types.SimpleNamespace(weight_dropout=0.5, recurrent_kernel=tf.ones((2, 3)),
                                  seed_generator=None)
        got = WeightDropLSTM.dropped_recurrent_kernel(layer, True).numpy()
        np.testing.assert_array_equal(got, draw((2, 3), 0.5))
    else:
        got = locked_dropout.dropout_mask((1, 4, 3), 0.5, None).numpy()
        np.testing.assert_array_equal(got, draw((1, 4, 3), 0.5))


@pytest.mark.parametrize("framework, sites, words", [
    ("tensorflow", ["dropconnect"], ["dropconnect", "weight-drop, locked, embedding"]),
    ("tensorflow", [], ["MOSBENCH_MASK_SITES"]),
    ("pytorch", ["locked"], ["locked", "one seam"]),
])
def test_mask_sites_an_engine_lacks_stop_the_process_by_name(framework, sites, words):
    with pytest.raises(SystemExit) as exit_:
        fidelity.mask_sources.install("numpy", framework, 11, sites)
    assert all(word in str(exit_.value) for word in words), exit_.value


def _compare_module():
    spec = importlib.util.spec_from_file_location(
        "fidelity_compare", REPO / "benchmarks" / "fidelity_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arms_from_kept_runs_and_from_perplexities_share_one_table(tmp_path, capsys):
    compare = _compare_module()
    kept = tmp_path / "wd"
    for seed, loss in ((28, 5.85), (29, 5.93), (30, 5.88)):
        fidelity.store_run(kept, {"side": "tensorflow", "seed": seed, "status": "ok",
                                  "valid_loss": loss}, f"k{seed}")
    fidelity.store_run(kept, {"side": "tensorflow", "seed": 31, "status": "failed"}, "k31")
    own = [379.78, 421.28, 479.99, 428.74]
    assert compare.main(["--arm", "own=" + ",".join(map(str, own)), "--arm", f"wd={kept}"]) == 0
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert rows["own (baseline)"][1:3] == ["4", f"{np.mean(np.log(own)):.4f}"]
    wd = rows["wd"]
    assert wd[1] == "3"  # the failed run left out
    assert float(wd[4]) == pytest.approx(np.mean([5.85, 5.93, 5.88]) - np.mean(np.log(own)),
                                         abs=1e-4)
    assert "lower than own" in wd[8]


@pytest.mark.parametrize("arms, words", [
    (["own=380,abc"], ["--arm own", "neither a folder nor perplexities"]),
    (["own=0.5,2"], ["--arm own", "above 1"]),
    (["380,390"], ["NAME=SOURCE"]),
    (["a=380,390", "a=400,410"], ["each NAME once"]),
])
def test_a_malformed_arm_is_refused_by_name(arms, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        _compare_module().main([a for arm in arms for a in ("--arm", arm)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err


def test_a_folder_of_two_sides_is_not_one_arm(tmp_path, capsys):
    for side in ("tensorflow", "pytorch"):
        fidelity.store_run(tmp_path, {"side": side, "seed": 28, "status": "ok",
                                      "valid_loss": 6.0}, side)
    with pytest.raises(SystemExit):
        _compare_module().main(["--arm", f"mixed={tmp_path}", "--arm", "b=380,390"])
    assert "holds runs of pytorch, tensorflow" in capsys.readouterr().err


def test_all_pairs_pair_by_seed_and_agree_with_statsmodels(tmp_path, capsys):
    """A list arm from --first-seed and a folder arm at other seeds: paired over the
    two seeds they share; Welch with Holm, Tukey (checked against statsmodels' own
    implementation), the spreads' test with Holm, and the ANOVA over the three arms."""
    import scipy.stats as st
    from statsmodels.stats.multicomp import pairwise_tukeyhsd
    from statsmodels.stats.multitest import multipletests

    kept = tmp_path / "b"
    b = {30: 5.95, 31: 6.02, 32: 5.88, 33: 6.05}
    for seed, loss in b.items():
        fidelity.store_run(kept, {"side": "pytorch", "seed": seed, "status": "ok",
                                  "valid_loss": loss}, f"k{seed}")
    a = dict(zip(range(28, 32), np.log([379.78, 421.28, 479.99, 428.74]), strict=True))
    c = dict(zip(range(28, 33), np.log([350.5, 360.1, 371.9, 349.0, 366.6]), strict=True))
    assert _compare_module().main([
        "--all-pairs", "--first-seed", "28", "--arm", "a=379.78,421.28,479.99,428.74",
        "--arm", f"b={kept}", "--arm", "c=350.5,360.1,371.9,349.0,366.6"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")
            for line in out.splitlines()
            if " - " in line.split(" | ")[0] and not line.startswith("| pair")}
    assert list(rows) == ["a - b", "a - c", "b - c"]

    d = np.array([a[s] - b[s] for s in (30, 31)])
    assert rows["a - b"][1] == "30, 31"
    paired = st.ttest_1samp(d, 0.0)
    assert rows["a - b"][2].startswith(f"{d.mean():+.3f} [")
    assert rows["a - b"][3] == f"{paired.pvalue:.3f}"
    assert rows["a - b"][4] == f"{(d < 0).sum()} of 2"
    assert rows["a - c"][1] == "28-31" and rows["b - c"][1] == "30-32"

    samples = {"a": list(a.values()), "b": list(b.values()), "c": list(c.values())}
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    welch = [st.ttest_ind(samples[x], samples[y], equal_var=False).pvalue for x, y in pairs]
    holm = multipletests(welch, method="holm")[1]
    hsd = pairwise_tukeyhsd(np.concatenate(list(samples.values())),
                            np.repeat(list(samples), [len(v) for v in samples.values()]))
    for k, (x, y) in enumerate(pairs):  # statsmodels: group2 - group1, pairs in this order
        assert rows[f"{x} - {y}"][5:7] == [f"{welch[k]:.3f}", f"{holm[k]:.3f}"]
        low, high = -hsd.confint[k][::-1]
        assert rows[f"{x} - {y}"][7] == f"{-hsd.meandiffs[k]:+.3f} [{low:+.3f}, {high:+.3f}]"
        assert rows[f"{x} - {y}"][8] == f"{hsd.pvalues[k]:.3f}"
    spread = [st.levene(samples[x], samples[y], center="median").pvalue for x, y in pairs]
    spread_holm = multipletests(spread, method="holm")[1]
    for k, (x, y) in enumerate(pairs):
        ratio = np.std(samples[x], ddof=1) / np.std(samples[y], ddof=1)
        assert rows[f"{x} - {y}"][9:12] == [f"{ratio:.2f}", f"{spread[k]:.3f}",
                                            f"{spread_holm[k]:.3f}"]
    anova = st.f_oneway(*samples.values())
    assert f"(n 4, 4, 5): F {anova.statistic:.2f}, p {anova.pvalue:.3f}" in out
    alike = st.levene(*samples.values(), center="median")
    assert f"(Brown-Forsythe): W {alike.statistic:.2f}, p {alike.pvalue:.3f}" in out


def test_all_pairs_tells_a_narrow_arm_from_a_wide_one(capsys):
    """A planted spread: the same draws, one arm at a tenth of the other's scale (a seed
    that reaches fewer streams would narrow an arm so); two arms of one scale are not told
    apart."""
    z = np.array([0.3, -1.2, 0.8, -0.1, 1.5, -0.7, 0.2, -1.6, 1.1, -0.4, 0.6, -0.9])
    arm = {"wide": 400 * np.exp(0.08 * z), "also wide": 400 * np.exp(0.08 * z[::-1]),
           "narrow": 400 * np.exp(0.008 * z)}
    _compare_module().main(["--all-pairs"] + [a for name, v in arm.items()
                                              for a in ("--arm", f"{name}=" + ",".join(
                                                  f"{x:.4f}" for x in v))])
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")
            for line in capsys.readouterr().out.splitlines() if line.startswith("| wide - ")
            or line.startswith("| also wide - ")}
    assert float(rows["wide - narrow"][9]) == pytest.approx(10, rel=0.01)
    assert float(rows["wide - narrow"][11]) < 0.05
    assert float(rows["also wide - narrow"][11]) < 0.05
    assert float(rows["wide - also wide"][9]) == pytest.approx(1, rel=0.01)
    assert float(rows["wide - also wide"][10]) > 0.5


def test_all_pairs_needs_two_arms_of_two_seeds(capsys):
    with pytest.raises(SystemExit) as exit_:
        _compare_module().main(["--all-pairs", "--arm", "a=380,390", "--arm", "b=400"])
    assert exit_.value.code == 2
    assert "--all-pairs needs two arms or more" in capsys.readouterr().err


def test_tf_stateless_masks_are_drawn_in_the_graph_from_seeds_the_host_counts(keras_seams):
    """Inside a compiled step: the rate and scaling kept, a new mask per call, the same
    sequence for the same seed and another for another seed; at the named sites only."""
    import tensorflow as tf

    from mosbench.engines.tensorflow.models import locked_dropout
    from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM
    own_weight_drop = WeightDropLSTM.dropped_recurrent_kernel

    def masks(seed):
        fidelity.mask_sources.install("tf-stateless", "tensorflow", seed, ["locked"])

        @tf.function
        def step(n):
            return locked_dropout.dropout_mask((n, 1, 300), 0.4, None)

        return [step(tf.constant(200)).numpy() for _ in range(3)]

    first, again, other = masks(5), masks(5), masks(6)
    assert WeightDropLSTM.dropped_recurrent_kernel is own_weight_drop
    for mask in first:
        assert mask.shape == (200, 1, 300)
        np.testing.assert_allclose(np.unique(mask), [0.0, 1 / 0.6], rtol=1e-6)
        assert abs(np.mean(mask > 0) - 0.6) < 0.01  # sd 0.0009
    assert not np.array_equal(first[0], first[1])
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_tf_site_seeds_key_each_site_s_generator_steps_with_a_numpy_drawn_site_seed():
    """``[S_i, t]`` as the engine keys it: ``t`` the site generator's (which advances as the
    engine's), ``S_i`` NumPy's next draw for a site first seen; ``tf-engine`` keeps Keras's
    ``S_i`` and gives the engine's own mask."""
    tf = pytest.importorskip("tensorflow")
    import keras

    from mosbench.engines.tensorflow.models.replica_dropout import dropout_mask
    module = fidelity.mask_sources
    draw = module.tf_site_masks(7)
    first, second = keras.random.SeedGenerator(101), keras.random.SeedGenerator(202)
    got = [draw((50, 30), 0.4, g).numpy() for g in (first, second, first)]
    rng = np.random.default_rng([7, 4242])
    s1, s2 = (int(s) for s in rng.integers(1, 10**9, size=2, endpoint=True))

    def rule(site_seed, t):
        keep = tf.random.stateless_uniform((50, 30), seed=tf.constant([site_seed, t], tf.int64))
        return (tf.cast(keep >= 0.4, tf.float32) / 0.6).numpy()

    for mask, expected in zip(got, [rule(s1, 0), rule(s2, 0), rule(s1, 1)], strict=True):
        np.testing.assert_array_equal(mask, expected)
    assert [int(v) for v in first.state.numpy()] == [101, 2]  # advanced as the engine's
    assert not np.array_equal(got[0], rule(101, 0))
    own = module.tf_site_masks(7, "own")
    mine, twin = keras.random.SeedGenerator(101), keras.random.SeedGenerator(101)
    for _ in range(2):
        np.testing.assert_array_equal(own((50, 30), 0.4, mine).numpy(),
                                      dropout_mask((50, 30), 0.4, twin).numpy())


def tiny_tensorflow_run(seed, steps=3):
    """Three real training steps of a tiny TensorFlow AWD-LSTM-MoS: their losses and each
    mask generator's state ``(S_i, t)`` after them."""
    import keras

    engine = tiny_tensorflow_engine(seed)
    window = np.random.default_rng(1).integers(0, 50, (4, 9)).astype(np.int32)
    states, losses = engine.initial_state(4), []
    for _ in range(steps):
        nll, states = engine.train_step(window[:, :-1], window[:, 1:], states, 1.0, False)
        losses.append(float(nll))
    generators = sorted(tuple(int(v) for v in value.state.numpy())
                        for layer in engine.model._flatten_layers()  # the model too
                        for value in vars(layer).values()
                        if isinstance(value, keras.random.SeedGenerator))
    engine.close()
    return losses, generators


def test_tf_engine_gives_the_native_steps_back_and_tf_site_seeds_only_their_masks(keras_seams):
    """The control: every mask through the seams from the engine's own generators, the same
    losses to the last bit; tf-site-seeds: other losses, the generators stepped alike."""
    pytest.importorskip("tensorflow")
    native, generators = tiny_tensorflow_run(28)
    assert len(generators) == 9 and len({s for s, _ in generators}) == 9
    assert all(t == 6 for _, t in generators)  # 3 steps of 2 chunks
    fidelity.mask_sources.install("tf-engine", "tensorflow", 28)
    assert tiny_tensorflow_run(28) == (native, generators)
    fidelity.mask_sources.install("tf-site-seeds", "tensorflow", 28)
    keyed, keyed_generators = tiny_tensorflow_run(28)
    assert keyed_generators == generators
    assert all(a != b for a, b in zip(native, keyed, strict=True))
    fidelity.mask_sources.install("tf-site-seeds", "tensorflow", 28)
    assert tiny_tensorflow_run(28)[0] == keyed  # the same mask seed: the same run
    fidelity.mask_sources.install("tf-site-seeds", "tensorflow", 29)
    assert tiny_tensorflow_run(28)[0] != keyed


def mask_generators_in_order(generators):
    """``generators`` in the order Keras made them (it numbers their names as it does)."""
    def made(generator):
        tail = generator.name.rpartition("_")[2]
        return int(tail) if tail.isdigit() else 0

    return sorted(generators, key=made)


def test_tf_crossed_seeds_key_each_site_with_the_seed_keras_gave_it_in_the_next_run(keras_seams):
    """Run 28 under tf-crossed-seeds keys each site with the ``S_i`` Keras gave the same site
    in run 29 (run 29's masks), its generators and weights its own; a seed Keras did not
    draw is refused by name."""
    pytest.importorskip("tensorflow")
    import keras

    def site_seeds(seed):
        engine = tiny_tensorflow_engine(seed)
        generators = {id(value): value for layer in engine.model._flatten_layers()
                      for value in vars(layer).values()
                      if isinstance(value, keras.random.SeedGenerator)}
        seeds = [int(g.state.numpy()[0]) for g in mask_generators_in_order(generators.values())]
        engine.close()
        return seeds

    own, following = site_seeds(28), site_seeds(29)
    assert len(own) == 9 and len(set(own + following)) == 18
    native, generators = tiny_tensorflow_run(28)
    draw = fidelity.mask_sources.install("tf-crossed-seeds", "tensorflow", 28)
    crossed, crossed_generators = tiny_tensorflow_run(28)
    traced = mask_generators_in_order(g for g, _ in draw.site_seeds.values())
    assert [int(g.state.numpy()[0]) for g in traced] == own
    assert [draw.site_seeds[id(g)][1] for g in traced] == following
    assert crossed_generators == generators  # stepped alike
    assert all(a != b for a, b in zip(native, crossed, strict=True))
    with pytest.raises(SystemExit, match="seed 0 is not among .* seeds Keras draws for seed 28"):
        fidelity.mask_sources.keras_seed_of_next_run(28)(0)


# --- on GPUs, several runs at once ---

def test_a_cpu_run_keeps_its_key_and_a_gpu_run_has_its_own():
    hp = {"lr": 20.0, "bptt": 70, "emsize": 200}
    # computed by run_key before --gpus existed: the runs kept since are still found
    assert fidelity.run_key("pytorch", 28, hp, 4646, "abc123") == "cd920d87f62f2a6f"
    assert fidelity.run_key("pytorch", 28, hp, 4646, "abc123", gpus=0) == "cd920d87f62f2a6f"
    keys = {fidelity.run_key("pytorch", 28, hp, 4646, "abc123", gpus=g) for g in (0, 1, 2)}
    assert len(keys) == 3


@pytest.mark.parametrize("argv, words", [
    (["--gpus", "1", "--frameworks", "pytorch"], ["--gpus 1", "CPU only", "--no-reference"]),
    (["--parallel", "0", "--no-reference"], ["--parallel", "at least 1"]),
    (["--gpus", "-1", "--no-reference"], ["--gpus at least 0"]),
])
def test_gpus_with_the_reference_and_bad_counts_are_refused_in_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        fidelity.main(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in last and all(word in last for word in words), last


def test_an_engine_run_passes_its_gpus_to_mosbench_train_and_reads_that_run_s_summary(tmp_path):
    """The arguments go through `mosbench`'s own parser, the folder through its layout."""
    from mosbench import cli, paths

    parser = cli.build_parser()
    for gpus in (0, 1, 4):
        argv = fidelity.engine_arguments("jax", 30, gpus)
        assert argv[argv.index("--gpus") + 1] == str(gpus)
        args = parser.parse_args(["--config", str(REPO / "config" / "config.yaml"), *argv])
        assert (args.command, args.framework, args.seed, args.gpus) == ("train", "jax", 30, gpus)
        folder = paths.TRAIN.format(framework=args.framework, dataset=args.dataset,
                                    model=args.model, seed=args.seed, gpus=args.gpus)
        assert fidelity.summary_path(tmp_path, "jax", 30, gpus) == (tmp_path / folder
                                                                     / paths.SUMMARY)
    assert fidelity.engine_log(tmp_path, "jax", 30).name == "jax-seed30.log"  # as before
    assert fidelity.engine_log(tmp_path, "jax", 30, 1).name == "jax-seed30-gpus1.log"


def test_on_a_gpu_jax_runs_share_a_compilation_cache_that_leaves_the_preset_alone(tmp_path):
    """The config written for the runs passes the project's schema either way."""
    plain_path, plain = fidelity.write_config(tmp_path, fidelity.SCALED, 2)
    plain_engines = yaml.safe_load(plain_path.read_text()).get("engines")
    cache = tmp_path / "jax-cache"
    cached_path, cached = fidelity.write_config(tmp_path, fidelity.SCALED, 2, jax_cache=cache)
    engines = yaml.safe_load(cached_path.read_text())["engines"]
    assert engines["jax"]["compilation_cache"] == str(cache.resolve())
    assert "compilation_cache" not in ((plain_engines or {}).get("jax") or {})
    assert cached == plain  # the preset, and so every run's key, is the same


def test_several_runs_on_a_gpu_leave_jax_its_memory_to_share(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    assert fidelity.engine_environment(1, 4) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert fidelity.engine_environment(1, 1) == {}  # alone on its GPU: JAX's default
    assert fidelity.engine_environment(0, 4) == {}  # the CPU
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
    assert fidelity.engine_environment(1, 4) == {}  # the user's choice stands


def test_the_machine_lines_name_the_gpu_and_say_parallel_runs_time_nothing():
    from mosbench.measurement.provenance import gpu_description

    assert not any(line.startswith(("gpu:", "parallel:"))
                   for line in fidelity.machine_lines(2))
    lines = fidelity.machine_lines(2, gpus=1, parallel=4)
    name = gpu_description(1)[1] or "GPU (name unknown)"
    assert f"gpu: 1 x {name} per engine run (mosbench train --gpus 1)" in lines[1]
    assert lines[2].startswith("parallel: up to 4 runs at once")
    assert "say nothing about speed" in lines[2]


def test_two_engine_runs_at_once_share_one_work_folder_each_ending_in_its_place(
        tmp_path, tiny_data):
    """Real `mosbench train` processes, two at a time (``run_all`` with 2), on the tiny
    corpus under fidelity's data set and model names: two PyTorch CPU runs that share one
    new SQLite MLflow store, and between them a run asking for one GPU more than the machine
    has, which `mosbench train` refuses (so its `--gpus` reached it)."""
    torch = pytest.importorskip("torch")
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    preset = {**tiny["presets"]["tiny"]["awd-lstm-mos"], "epochs": 1, "dynamic_eval": None}
    config = {**tiny, "run": {**tiny["run"], "frameworks": ["pytorch"], "datasets": ["ptb"],
                              "models": ["awd-lstm-mos"]},
              "reference": {}, "datasets": {"ptb": {"source": "tiny"}},
              "presets": {"ptb": {"awd-lstm-mos": preset}}}
    work, logs = tmp_path / "work", tmp_path / "logs"
    shutil.copytree(tiny_data, work / "results" / "data" / "ptb")
    logs.mkdir()
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    too_many = torch.cuda.device_count() + 1
    runs = [(1, 0), (3, too_many), (2, 0)]  # (seed, gpus) in the table's order
    spans, ended = {}, []

    def job(position, seed, gpus):
        start = time.monotonic()
        record = fidelity.run_engine("pytorch", seed, work, config_path, logs, gpus=gpus)
        spans[position] = (start, time.monotonic())
        return record

    records = {}

    def finished(position, record):
        ended.append(position)
        records[position] = record

    jobs = {i: functools.partial(job, i, seed, gpus) for i, (seed, gpus) in enumerate(runs)}
    fidelity.run_all(jobs, 2, finished)

    assert sorted(ended) == [0, 1, 2]
    most = max(sum(a <= t < b for a, b in spans.values()) for t, _ in spans.values())
    assert most == 2  # two at once, never three
    first, refused, second = (records[i] for i in range(3))
    for record, seed in ((first, 1), (second, 2)):
        assert record["status"] == "ok", record["status"]
        assert (record["seed"], record["gpus"]) == (seed, 0)
        assert record["log"] == str(logs / f"pytorch-seed{seed}.log")
        assert fidelity.summary_path(work, "pytorch", seed).exists()
        assert math.isfinite(record["valid_loss"])
    assert first["valid_loss"] != second["valid_loss"]  # each its own seed
    assert refused["status"].startswith("failed (exit 2)")
    assert f"gpus={too_many} was asked for" in refused["status"]
    assert (refused["gpus"], refused["log"]) == (too_many,
                                                 str(logs / f"pytorch-seed3-gpus{too_many}.log"))
    with contextlib.closing(sqlite3.connect(work / "results" / "mlflow.db")) as db:
        stored = sorted(db.execute("SELECT name, status FROM runs").fetchall())
    assert stored == [(f"pytorch-ptb-awd-lstm-mos-seed{s}-gpus0", "FINISHED") for s in (1, 2)]


# --- runs under settings that change the kernels ---

def test_a_run_with_the_kernels_changed_is_another_run_and_plain_keys_are_unchanged(
        monkeypatch):
    hp = {"lr": 20.0, "bptt": 70, "emsize": 200}
    for name in fidelity.kernel_env():
        monkeypatch.delenv(name)
    assert fidelity.kernel_env() == {}
    plain = fidelity.run_key("tensorflow", 30, hp, 4646, "abc123", kernels=fidelity.kernel_env())
    assert plain == fidelity.run_key("tensorflow", 30, hp, 4646, "abc123")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a thread count: recorded, not in the key
    assert fidelity.kernel_env() == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    off = fidelity.run_key("tensorflow", 30, hp, 4646, "abc123", kernels=fidelity.kernel_env())
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = fidelity.run_key("tensorflow", 30, hp, 4646, "abc123",
                              kernels=fidelity.kernel_env())
    assert len({plain, off, capped}) == 3
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in fidelity.machine_lines(1)[0]
