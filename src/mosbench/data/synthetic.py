"""A synthetic corpus whose best achievable perplexity is known exactly.

The source is a first-order Markov chain over ``vocab_size`` word types, token 0
being the sentence end ``<eos>`` and the others named ``w0001``, ``w0002``, ...
(the number is the word's popularity rank). Each row of the transition matrix
``P`` (context = previous token) is built as follows:

* ``successors`` distinct words get Dirichlet(1) weights. One of them is the
  context's "own" word (a random permutation gives every word one context);
  the others are drawn without replacement with probability proportional to
  a Zipf popularity ``rank ** -zipf_exponent``. The sentence-start row draws
  all of them by popularity. The random support differs from row to row,
  which makes ``log P`` full rank: a softmax with hidden size ``d`` can only
  produce log-probability matrices of rank ``<= d + 1``, a Mixture of
  Softmaxes is not limited that way (Yang et al., 2018).
* A ``smoothing`` mass is spread over all words by popularity, so every entry of
  ``P`` is positive and every log-probability finite (hence ``smoothing > 0``).
* From every word, ``<eos>`` follows with probability ``eos_prob``, so sentence
  lengths are geometric with mean ``1 / eos_prob`` tokens (``<eos>`` included).
* The row of ``<eos>`` is the sentence-start distribution. An empty sentence
  (``<eos>`` after ``<eos>``) is allowed but rare, ``smoothing * eos_prob``, so
  that this entry stays positive too.

The entropy rate is ``H = -sum_s pi_s sum_w P[s, w] log P[s, w]`` with ``pi``
the stationary distribution, found by solving a linear system; ``exp(H)`` is
the perplexity of the true model on an infinitely long sample.

One chain is sampled, starting after a virtual ``<eos>``, and cut into train,
valid and test at the first sentence end at or after each requested token
count. Each sentence is written as one line without its ``<eos>``; a
tokeniser that appends ``<eos>`` to every line (blank lines included) gives
back the sampled chain exactly.
"""

import hashlib
import math
from bisect import bisect_right
from itertools import islice
from pathlib import Path

import numpy as np

from mosbench.errors import MosbenchError
from mosbench.io import all_or_nothing, atomic_path, write_json

EOS = "<eos>"
SPLITS = ("train", "valid", "test")

# Demo defaults, chosen by fitting models to P directly (weighted by pi):
# the optimal perplexity is 34.9; the best softmax reaches 56 with d=16 and
# 40 with d=32, while a mixture of 8 softmaxes with d=16 reaches 34.9, and
# a smoothed bigram count model trained on the 200k tokens gets 37. Fewer
# successors (e.g. 12) let a d=32 softmax come within 1% of optimal.
DEFAULTS = {
    "kind": "synthetic",
    "order": 1,
    "vocab_size": 300,
    "successors": 48,
    "zipf_exponent": 1.0,
    "smoothing": 0.02,
    "eos_prob": 0.06,
    "tokens": {"train": 200000, "valid": 20000, "test": 20000},
    "seed": 1234,
}


def _is_int(value):
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value):
    return (_is_int(value) or isinstance(value, float | np.floating)) and math.isfinite(value)


def validate_params(params, where="sources.synthetic"):
    """Return ``params`` merged over :data:`DEFAULTS`; raise MosbenchError if a value is bad."""
    if not isinstance(params, dict):
        raise MosbenchError(f"{where}: expected a mapping of parameters, got {params!r}")
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise MosbenchError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(DEFAULTS)}"
        )
    p = {**DEFAULTS, **params}

    def fail(key, expected):
        raise MosbenchError(f"{where}.{key} = {p[key]!r}: expected {expected}")

    if p["kind"] != "synthetic":
        fail("kind", "'synthetic'")
    if not _is_int(p["order"]) or p["order"] != 1:
        fail("order", "1 (only first-order chains are supported)")
    if not _is_int(p["vocab_size"]) or p["vocab_size"] < 3:
        fail("vocab_size", "an integer >= 3")
    if not _is_int(p["successors"]) or not 1 <= p["successors"] < p["vocab_size"]:
        fail("successors", f"an integer with 1 <= successors < vocab_size ({p['vocab_size']})")
    if not _is_number(p["zipf_exponent"]) or p["zipf_exponent"] < 0:
        fail("zipf_exponent", "a number >= 0")
    if not _is_number(p["smoothing"]) or not 0 < p["smoothing"] < 1:
        fail("smoothing", "a number with 0 < smoothing < 1 (it keeps every log-probability finite)")
    if not _is_number(p["eos_prob"]) or not 0 < p["eos_prob"] < 1:
        fail("eos_prob", "a number with 0 < eos_prob < 1")
    if not _is_int(p["seed"]) or p["seed"] < 0:
        fail("seed", "a non-negative integer")
    tokens = p["tokens"]
    if not isinstance(tokens, dict) or set(tokens) != set(SPLITS):
        fail("tokens", f"a mapping with exactly the keys {', '.join(SPLITS)}")
    for split in SPLITS:
        if not _is_int(tokens[split]) or tokens[split] <= 0:
            raise MosbenchError(
                f"{where}.tokens.{split} = {tokens[split]!r}: expected an integer > 0"
            )
    return p


def word_list(vocab_size):
    width = max(4, len(str(vocab_size - 1)))
    return [EOS] + [f"w{i:0{width}d}" for i in range(1, vocab_size)]


def transition_matrix(params):
    """Return the transition matrix ``P`` (rows sum to 1, all entries > 0) and the word list."""
    p = validate_params(params)
    vocab, k = p["vocab_size"], p["successors"]
    eos_prob, smoothing = p["eos_prob"], p["smoothing"]
    rng = np.random.default_rng([p["seed"], 0])

    popularity = np.arange(1, vocab, dtype=np.float64) ** -p["zipf_exponent"]
    popularity /= popularity.sum()
    # Word distribution of each row, over the non-eos words 1..vocab-1.
    # Every word is a likely successor of at least one context (a random
    # permutation pairs words with contexts 1..vocab-1): otherwise rare words
    # never drawn would have columns spanning only two dimensions, and log P
    # would lose rank. Like "Hong Kong", a rare word gets a context of its own.
    own = rng.permutation(vocab - 1)
    words = np.empty((vocab, vocab - 1))
    for s in range(vocab):
        if s == 0:  # sentence start: all successors by popularity
            support = rng.choice(vocab - 1, size=k, replace=False, p=popularity)
        else:
            rest = popularity.copy()
            rest[own[s - 1]] = 0.0
            more = rng.choice(vocab - 1, size=k - 1, replace=False, p=rest / rest.sum())
            support = np.append(more, own[s - 1])
        row = smoothing * popularity
        row[support] += (1 - smoothing) * rng.dirichlet(np.ones(k))
        words[s] = row

    P = np.empty((vocab, vocab))
    P[1:, 0] = eos_prob
    P[1:, 1:] = (1 - eos_prob) * words[1:]
    P[0, 0] = smoothing * eos_prob  # rare empty sentences, but log P stays finite
    P[0, 1:] = (1 - P[0, 0]) * words[0]
    P /= P.sum(axis=1, keepdims=True)  # remove rounding drift
    return P, word_list(vocab)


def stationary_distribution(P):
    """Solve ``pi P = pi``, ``sum(pi) = 1`` (unique as all entries of ``P`` are positive)."""
    n = P.shape[0]
    A = P.T - np.eye(n)
    A[-1] = 1.0  # one balance equation is redundant: replace it by the normalisation
    b = np.zeros(n)
    b[-1] = 1.0
    return np.linalg.solve(A, b)


def entropy_rate(P):
    """Entropy rate of the chain with transition matrix ``P``, in nats per token."""
    P = np.asarray(P, dtype=np.float64)
    pi = stationary_distribution(P)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(P > 0, P * np.log(P), 0.0)  # 0 log 0 = 0
    return float(-(pi @ plogp.sum(axis=1)))


def _walk(P, rng, block=1 << 16):
    """Yield the states of the chain started in state 0 (after a virtual <eos>)."""
    cdf = np.cumsum(P, axis=1)
    cdf[:, -1] = 1.0  # uniforms are < 1, so the search never runs off the end
    rows = cdf.tolist()  # bisect on Python lists beats a NumPy call per step
    state = 0
    while True:
        for u in rng.random(block).tolist():
            state = bisect_right(rows[state], u)
            yield state


def sample_splits(P, counts, seed):
    """Sample one chain and cut it after the first <eos> at or after each count."""
    walk = _walk(P, np.random.default_rng([seed, 1]))
    out = {}
    for split in SPLITS:
        tokens = list(islice(walk, counts[split]))
        while tokens[-1] != 0:
            tokens.append(next(walk))
        out[split] = np.array(tokens, dtype=np.int64)
    return out


def _text(tokens, words):
    """One line per sentence, without its <eos>; a repeated <eos> gives a blank line."""
    ends = np.flatnonzero(tokens == 0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    names = np.array(words, dtype=object)
    lines = [" ".join(names[tokens[a:b]]) for a, b in zip(starts, ends, strict=True)]
    return "\n".join(lines) + "\n"


def generate_synthetic(name, params, raw_dir):
    """Write ``{train,valid,test}.txt`` and ``source.json`` under ``raw_dir``; return the latter."""
    where = f"sources.{name}"
    p = validate_params(params, where)
    P, words = transition_matrix(p)
    H = entropy_rate(P)
    splits = sample_splits(P, p["tokens"], p["seed"])

    raw_dir = Path(raw_dir)
    # A failed (re)run leaves none of the files, not old ones mixed with new ones.
    outputs = [raw_dir / f"{split}.txt" for split in SPLITS] + [raw_dir / "source.json"]
    with all_or_nothing(*outputs):
        logP = np.log(P)
        files, oracle = {}, {}
        prev = 0  # the chain starts after a virtual <eos>; each split ends with one
        for split in SPLITS:
            tokens = splits[split]
            contexts = np.concatenate(([prev], tokens[:-1]))
            oracle[split] = float(np.exp(-logP[contexts, tokens].mean()))
            prev = tokens[-1]
            data = _text(tokens, words).encode("utf-8")
            with atomic_path(raw_dir / f"{split}.txt") as tmp:
                tmp.write_bytes(data)
            files[split] = {"sha256": hashlib.sha256(data).hexdigest(), "tokens": int(tokens.size)}

        info = {
            "name": name,
            "kind": "synthetic",
            "params": p,
            "entropy_rate_nats": H,
            "optimal_ppl": math.exp(H),
            "oracle_ppl": oracle,
            "logprob_rank": int(np.linalg.matrix_rank(logP)),
            "files": files,
        }
        write_json(raw_dir / "source.json", info)  # last: its presence means the files are complete
    return info
