import hashlib
import json
import math

import numpy as np
import pytest

from mosbench.data.synthetic import (
    SPLITS,
    entropy_rate,
    generate_synthetic,
    sample_splits,
    transition_matrix,
    validate_params,
)
from mosbench.errors import MosbenchError

SMALL = {"tokens": {"train": 20000, "valid": 3000, "test": 3000}, "seed": 7}


def tokenise(path):
    """What the downstream tokeniser does: split each line, append <eos>."""
    tokens = []
    for line in path.read_text(encoding="utf-8").splitlines():
        tokens += line.split() + ["<eos>"]
    return tokens


def test_rows_are_distributions_with_positive_entries():
    P, words = transition_matrix({"vocab_size": 120, "successors": 10})
    assert P.shape == (120, 120) and P.dtype == np.float64
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert P.min() > 0
    assert words[0] == "<eos>" and words[1] == "w0001" and len(set(words)) == 120
    # every non-start context ends the sentence with the same probability
    np.testing.assert_allclose(P[1:, 0], 0.06)


def test_entropy_rate_of_a_hand_solved_chain():
    # pi = (1/4, 1/2, 1/4); row entropies ln2, 1.5 ln2, ln2 (zeros count as 0 log 0 = 0)
    P = np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]])
    assert entropy_rate(P) == pytest.approx(1.25 * math.log(2), rel=1e-12)


def test_entropy_rate_matches_a_long_sample():
    params = validate_params({"tokens": {"train": 200000, "valid": 1, "test": 1}})
    P, _ = transition_matrix(params)
    chain = sample_splits(P, params["tokens"], params["seed"])["train"]
    contexts = np.concatenate(([0], chain[:-1]))
    empirical = -np.log(P[contexts, chain]).mean()
    assert empirical == pytest.approx(entropy_rate(P), rel=0.01)


@pytest.mark.parametrize("params", [{}, {"vocab_size": 100, "successors": 5, "seed": 3}])
def test_log_probability_matrix_is_full_rank(params):
    P, _ = transition_matrix(params)
    assert np.linalg.matrix_rank(np.log(P)) == P.shape[0]


def test_files_reproduce_the_chain_and_the_oracle(tmp_path):
    info = generate_synthetic("demo", SMALL, tmp_path)
    assert json.loads((tmp_path / "source.json").read_text()) == info
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    assert info["logprob_rank"] == 300
    assert info["optimal_ppl"] == pytest.approx(math.exp(info["entropy_rate_nats"]))

    P, words = transition_matrix(SMALL)
    index = {w: i for i, w in enumerate(words)}
    for split in SPLITS:
        path = tmp_path / f"{split}.txt"
        stream = tokenise(path)
        requested = SMALL["tokens"][split]
        # at least the requested count, extended only to the end of that sentence
        assert len(stream) == info["files"][split]["tokens"] >= requested
        assert stream[-1] == "<eos>" and "<eos>" not in stream[requested - 1 : -1]
        assert info["files"][split]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        # each split follows an <eos> (the start, or the previous split's last token)
        ids = np.array([index[w] for w in stream])
        contexts = np.concatenate(([0], ids[:-1]))
        log_ppl = -np.log(P[contexts, ids]).mean()
        assert log_ppl == pytest.approx(math.log(info["oracle_ppl"][split]), rel=1e-9)
        assert info["oracle_ppl"][split] == pytest.approx(info["optimal_ppl"], rel=0.1)


def test_empty_sentences_survive_the_round_trip(tmp_path):
    # a high eos_prob and smoothing make <eos> after <eos> common
    params = {**SMALL, "vocab_size": 20, "successors": 3, "smoothing": 0.5, "eos_prob": 0.5}
    generate_synthetic("demo", params, tmp_path)
    P, words = transition_matrix(params)
    sampled = sample_splits(P, validate_params(params)["tokens"], params["seed"])
    for split in SPLITS:
        text = (tmp_path / f"{split}.txt").read_text()
        assert "\n\n" in text or text.startswith("\n")
        assert tokenise(tmp_path / f"{split}.txt") == [words[i] for i in sampled[split]]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        generate_synthetic(name, {**SMALL, "seed": seed}, tmp_path / name)
    for split in SPLITS:
        a, b, c = ((tmp_path / n / f"{split}.txt").read_bytes() for n in "abc")
        assert a == b and a != c


@pytest.mark.parametrize(
    "key, value",
    [
        ("vocab_size", 2),
        ("vocab_size", 30.0),
        ("successors", 0),
        ("successors", 300),
        ("smoothing", 0.0),
        ("smoothing", 1.0),
        ("eos_prob", 0),
        ("eos_prob", 1.0),
        ("zipf_exponent", -1),
        ("seed", "x"),
        ("order", 2),
        ("kind", "text"),
        ("tokens", {"train": 10, "valid": 10}),
        ("tokens.valid", {"train": 10, "valid": 0, "test": 10}),
    ],
)
def test_bad_params_name_the_key(key, value, tmp_path):
    with pytest.raises(MosbenchError) as error:
        generate_synthetic("demo", {key.split(".")[0]: value}, tmp_path)
    assert str(error.value).startswith(f"sources.demo.{key} = ")
    assert "expected" in str(error.value)
    assert not list(tmp_path.iterdir())


def test_unknown_keys_are_rejected():
    with pytest.raises(MosbenchError, match=r"^sources\.demo: unknown key\(s\) sucessors"):
        generate_synthetic("demo", {"sucessors": 5}, "unused")
