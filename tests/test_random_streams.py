"""The job's seed reaches every random stream of each engine; each draw keeps the reference's rule.

A stream that ignored the seed (weights or a dropout generator seeded from a fixed
number, or drawn before the seed is set) would make every seed share it: seeds would
agree too well, and a change to the order of draws on it would move every seed's
result together. So, for each engine (:data:`mosbench.engines.FRAMEWORKS`):

* **Seed reach**: changing only the seed changes every initial tensor and every mask
  stream (input, between-layer, output and latent locked dropout, each layer's
  weight drop of W_hh, embedding dropout), and the same seed repeats them exactly.
  Compiled training steps of two ``small_batch_size`` chunks draw from exactly
  these streams, one fresh set of masks per chunk: each step's loss is the mean of
  two training-mode forwards of a fresh engine of its seed on the chunks, whose
  next masks are then the stepped engine's. The window lengths follow the seed too.
* **Each draw against the reference's rule** (zihangdai/mos and salesforce/awd-lstm-lm:
  ``locked_dropout.py``, ``embed_regularize.py``, ``weight_drop.py``, ``model.py``
  ``init_weights``, the chunk loop and window lengths of ``main.py``): drop rate and
  1/(1-p) scaling of each mask; locked masks one per sequence and feature, shared
  over time, fresh per call; weight drop one mask of the whole matrix per forward
  (so the rows of a batch share it); embedding dropout whole word types, shared by
  every occurrence in the forward; the window lengths' mixture; the initialisers'
  ranges and first two moments per tensor (embedding uniform(+-init_range), each LSTM
  layer's four tensors uniform(+-1/sqrt(its hidden size)), the head's linear maps
  uniform(+-1/sqrt(fan_in)), the decoder bias zero); no two tensors or mask sites
  drawing the same numbers, and (PyTorch, whose CPU generator is one Mersenne Twister
  for both) the masks not replaying the initialisation's numbers.

Masks are observed, not mocked: each engine's own model draws them at its own
dropout sites, from the generators its training step uses (:class:`TensorFlowStreams`,
:class:`PyTorchStreams`, :class:`JaxStreams`; an engine added later adds its adapter
here, and its embedding-dropout draw to :mod:`mosbench.engines.mask_draws`, which
benchmarks/fidelity_probe.py shares), and in whole training-mode forwards and steps with
fixed weights and inputs. Statistical
bounds are five standard errors (about one false alarm in two million checks).
"""

import math

import numpy as np
import pytest

from mosbench.engines import FRAMEWORKS, load_engine
from mosbench.engines.mask_draws import embedding_factors
from mosbench.training.bptt import epoch_windows, restore_rng, sample_seq_len
from mosbench.training.train import fresh_state

VOCAB = 50
# Distinct rates per stream, so that a rate wired to the wrong site shows in its statistics.
RATES = dict(dropouti=0.15, dropouth=0.25, dropout=0.35, wdrop=0.45, dropoute=0.3,
             dropoutl=0.55)
# Three layers (two between-layer sites) of different widths, so that each tensor's
# initialisation range is its own: 1/sqrt(12), 1/sqrt(12), 1/sqrt(10) for the LSTMs.
HP = dict(emsize=8, nhid=12, nhidlast=10, nlayers=3, n_experts=3, init_range=0.1,
          alpha=2.0, beta=1.0, wdecay=0.0, clip=0.25, lr=1.0, small_batch_size=2, **RATES)
LOCKED = ("dropouti", "dropouth0", "dropouth1", "dropout", "dropoutl")
WEIGHT_DROP = tuple(f"wdrop{layer}" for layer in range(HP["nlayers"]))
STREAMS = (*LOCKED, *WEIGHT_DROP, "dropoute")


def _rate(site):
    return RATES[site.rstrip("0123456789")]


# ------------------------------------------------------------- the engines' own draws


class TensorFlowStreams:
    """A TensorFlow engine's dropout sites, drawn through its model's layers and seeds."""

    def __init__(self, engine):
        import tensorflow as tf

        self.tf, self.engine, self.model = tf, engine, engine.model

    def locked(self, site, batch, time, features):
        """One mask of a locked-dropout site as ``(batch, time, features)``."""
        m = self.model
        layer = {"dropouti": m.input_drop, "dropout": m.output_drop,
                 "dropoutl": m.head.contexts.drop}.get(site) or m.hidden_drops[int(site[-1])]
        return layer(self.tf.ones((batch, time, features)), training=True).numpy()

    def weight_drop(self, layer):
        """One weight-drop mask of layer ``layer``'s hidden-to-hidden matrix."""
        rnn = self.model.rnns[layer]
        return (rnn.dropped_recurrent_kernel(True) / rnn.recurrent_kernel).numpy()

    def embedding(self, tokens):
        """``(batch, time)`` factors one embedding-dropout draw gives the looked-up words."""
        return embedding_factors(self.engine, tokens)

    def forward(self, x, y):
        """Per-token NLL of a training-mode forward from zero states."""
        states = self.model.initial_state(x.shape[0])
        nll, _, _ = self.model.nll(self.tf.constant(x), self.tf.constant(y), states,
                                   training=True)
        return nll.numpy()

    def set_rate(self, stream, rate):
        """Set one stream's rate (every layer's, for ``dropouth`` and ``wdrop``)."""
        m = self.model
        layers = {"dropouti": [m.input_drop], "dropouth": m.hidden_drops,
                  "dropout": [m.output_drop], "dropoutl": [m.head.contexts.drop]}
        if stream == "wdrop":
            for rnn in m.rnns:
                rnn.weight_dropout = rate
        elif stream == "dropoute":
            m.dropoute = rate
        else:
            for layer in layers[stream]:
                layer.rate = rate

    def initial_tensors(self):
        """``{name: (initial values, uniform bound or 0)}`` covering every trainable weight."""
        m, hp = self.model, self.engine.hparams
        rules = {"embedding": (m.embedding.embeddings, hp["init_range"]),
                 "decoder bias": (m.head.bias, 0.0)}
        for layer, rnn in enumerate(m.rnns):
            bound = 1 / math.sqrt(rnn.units)
            for name in ("kernel", "recurrent_kernel", "input_bias", "recurrent_bias"):
                rules[f"lstm{layer} {name}"] = (getattr(rnn, name), bound)
        contexts, bound = m.head.contexts, 1 / math.sqrt(hp["nhidlast"])
        rules.update({"prior weight": (contexts.prior.kernel, bound),
                      "latent weight": (contexts.latent.kernel, bound),
                      "latent bias": (contexts.latent.bias, bound)})
        assert sorted(id(v) for v, _ in rules.values()) == sorted(
            id(v) for v in m.trainable_weights), "a weight without its initialisation rule"
        return {name: (v.numpy(), bound) for name, (v, bound) in rules.items()}


class PyTorchStreams:
    """A PyTorch engine's dropout sites, drawn with the generators its training step uses."""

    def __init__(self, engine):
        import torch

        from mosbench.engines.pytorch.models import masks

        self.torch, self.masks, self.engine = torch, masks, engine
        self.model = engine.model.train()

    def _drawing(self):
        return self.masks.drawn_from(**self.engine.replica.generators)

    def locked(self, site, batch, time, features):
        m = self.model
        layer = {"dropouti": m.input_drop, "dropout": m.output_drop,
                 "dropoutl": m.head.contexts.latent_drop}.get(site) or m.hidden_drops[int(site[-1])]
        with self._drawing(), self.torch.no_grad():  # time-major, as the model's layers
            return layer(self.torch.ones(time, batch, features)).numpy().transpose(1, 0, 2)

    def weight_drop(self, layer):
        rnn = self.model.rnns[layer]
        with self._drawing(), self.torch.no_grad():
            return (rnn.recurrent_weight() / rnn.weight_hh_raw).numpy()

    def embedding(self, tokens):
        return embedding_factors(self.engine, tokens)

    def forward(self, x, y):
        ids = [self.torch.from_numpy(a.astype(np.int64)) for a in (x, y)]
        with self._drawing(), self.torch.no_grad():
            nll, _, _ = self.model.nll(*ids, self.model.initial_state(x.shape[0]))
        return nll.numpy()

    def set_rate(self, stream, rate):
        m = self.model
        layers = {"dropouti": [m.input_drop], "dropouth": m.hidden_drops,
                  "dropout": [m.output_drop], "dropoutl": [m.head.contexts.latent_drop]}
        if stream == "wdrop":
            for rnn in m.rnns:
                rnn.weight_dropout = rate
        elif stream == "dropoute":
            m.dropoute = rate
        else:
            for layer in layers[stream]:
                layer.rate = rate

    def initial_tensors(self):
        m, hp = self.model, self.engine.hparams
        rules = {"embedding": (m.embedding.weight, hp["init_range"]),
                 "decoder bias": (m.head.decoder_bias, 0.0)}
        for layer, rnn in enumerate(m.rnns):
            bound = 1 / math.sqrt(rnn.hidden_size)
            for name in ("weight_ih", "weight_hh_raw", "bias_ih", "bias_hh"):
                rules[f"lstm{layer} {name}"] = (getattr(rnn, name), bound)
        contexts, bound = m.head.contexts, 1 / math.sqrt(hp["nhidlast"])
        rules.update({"prior weight": (contexts.prior.weight, bound),
                      "latent weight": (contexts.latent.weight, bound),
                      "latent bias": (contexts.latent.bias, bound)})
        assert sorted(id(p) for p, _ in rules.values()) == sorted(
            id(p) for p in m.parameters()), "a weight without its initialisation rule"
        return {name: (p.detach().numpy().copy(), bound) for name, (p, bound) in rules.items()}


class JaxStreams:
    """A JAX engine's dropout sites: each probe is one training-mode forward's key.

    The engine's steps spend one draw of its counter per chunk's forward
    (``fold_in(mask_root, draw)``); each probe here spends the next one, so the
    probes and the steps read the same sequence of keys.
    """

    def __init__(self, engine):
        import jax
        import jax.numpy as jnp

        from mosbench.engines.jax.models import masks

        self.jax, self.jnp, self.masks, self.engine = jax, jnp, masks, engine
        self.model = engine.model

    def _key(self):
        key = self.jax.random.fold_in(self.engine.mask_root, self.engine.draws)
        self.engine.draws += 1
        return key

    def locked(self, site, batch, time, features):
        m, masks = self.model, self.masks
        number, rate = {"dropouti": (masks.INPUT, m.dropouti), "dropout": (masks.OUTPUT, m.dropout),
                        "dropoutl": (masks.LATENT, m.head.contexts.dropoutl)}.get(site) or (
            masks.HIDDEN + int(site[-1]), m.dropouth)
        ones = self.jnp.ones((time, batch, features))  # time-major, as the model's sites
        mask = masks.locked(ones, masks.site_key(self._key(), number), rate)
        return np.asarray(mask).transpose(1, 0, 2)

    def weight_drop(self, layer):
        raw = self.engine.params[f"rnn.{layer}.w_hh"]
        key = self.masks.site_key(self._key(), self.masks.WEIGHT_DROP + layer)
        return np.asarray(self.masks.weight_drop(raw, key, self.model.wdrop) / raw)

    def embedding(self, tokens):  # spends the next key, as _key does
        return embedding_factors(self.engine, tokens, self.model.dropoute)

    def forward(self, x, y):
        states = self.model.initial_state(x.shape[0])
        nll, _, _ = self.model.nll(self.engine.params, self.jnp.asarray(x), self.jnp.asarray(y),
                                   states, self._key())
        return np.asarray(nll)

    def set_rate(self, stream, rate):
        import dataclasses

        m = self.model
        if stream == "dropoutl":
            contexts = dataclasses.replace(m.head.contexts, dropoutl=rate)
            self.model = dataclasses.replace(m, head=dataclasses.replace(m.head,
                                                                         contexts=contexts))
        else:
            self.model = dataclasses.replace(m, **{stream: rate})

    def initial_tensors(self):
        hp, params = self.engine.hparams, self.engine.params
        names = {"embedding": "embedding", "decoder.b": "decoder bias", "prior.w": "prior weight",
                 "latent.w": "latent weight", "latent.b": "latent bias"}
        rules = {}
        for name, values in params.items():
            if name.startswith("rnn."):
                _, layer, part = name.split(".")
                rules[f"lstm{layer} {part}"] = (values, self.model.sizes[int(layer)] ** -0.5)
            else:
                bound = {"embedding": hp["init_range"], "decoder.b": 0.0}.get(
                    name, hp["nhidlast"] ** -0.5)
                rules[names[name]] = (values, bound)
        assert len(rules) == len(params), "a weight without its initialisation rule"
        return {name: (np.asarray(v).copy(), bound) for name, (v, bound) in rules.items()}


ADAPTERS = {"tensorflow": TensorFlowStreams, "pytorch": PyTorchStreams, "jax": JaxStreams}


@pytest.fixture(params=FRAMEWORKS)
def framework(request):
    name = request.param
    pytest.importorskip({"tensorflow": "tensorflow", "pytorch": "torch"}.get(name, name))
    assert name in ADAPTERS, f"the {name} engine has no adapter in this file: add one"
    return name


def built(framework, seed, hp=None, batch=4):
    """A fresh engine of ``seed``, its model built and its training prepared; and its streams."""
    hp = {**HP, **(hp or {})}
    engine = load_engine(framework, seed=seed)
    engine.build("awd-lstm-mos", VOCAB, hp)
    engine.prepare_training(hp, batch)
    engine.hparams = hp
    return engine, ADAPTERS[framework](engine)


def _draws(streams, probes=2):
    """Every site's next ``probes`` masks, in one fixed order."""
    tokens = np.arange(24, dtype=np.int32).reshape(3, 8) % VOCAB
    out = {}
    for _ in range(probes):
        for site in STREAMS:
            if site in LOCKED:
                mask = streams.locked(site, 3, 4, 16)
            elif site in WEIGHT_DROP:
                mask = streams.weight_drop(int(site[-1]))
            else:
                mask = streams.embedding(tokens)
            out.setdefault(site, []).append(mask)
    return out


def _agreement(a, b):
    """Fraction of entries where two masks agree (dropped in both or kept in both)."""
    return float(np.mean((a == 0) == (b == 0)))


def _close_to(observed, expected, n, what):
    """|observed - expected| within five standard errors of a proportion over n draws."""
    bound = 5 * math.sqrt(expected * (1 - expected) / n)
    assert abs(observed - expected) <= bound, \
        f"{what}: {observed:.4f}, expected {expected:.4f} +- {bound:.4f} ({n} draws)"


# ------------------------------------------------------------------------- seed reach


def test_the_seed_reaches_every_initial_tensor_and_mask_stream(framework):
    """Seed 28 twice and seed 29: every tensor and site repeats with 28 and moves with 29."""
    first, again, other = (built(framework, seed)[1] for seed in (28, 28, 29))
    inits = [s.initial_tensors() for s in (first, again, other)]
    for name, (values, bound) in inits[0].items():
        assert np.array_equal(values, inits[1][name][0]), f"{name}: seed 28 did not repeat"
        if bound:
            same = float(np.mean(values == inits[2][name][0]))
            assert same < 0.01, f"{name}: {same:.0%} of the values equal under seeds 28 and 29"
        else:
            assert not values.any() and not inits[2][name][0].any(), f"{name} is not zero"
    draws = [_draws(s) for s in (first, again, other)]
    for site in STREAMS:
        for n, (mine, repeat, theirs) in enumerate(zip(*(d[site] for d in draws), strict=True)):
            assert np.array_equal(mine, repeat), f"{site}, draw {n + 1}: seed 28 did not repeat"
            assert not np.array_equal(mine, theirs), \
                f"{site}, draw {n + 1}: seeds 28 and 29 drew the same mask"
        assert not np.array_equal(draws[0][site][0], draws[0][site][1]), \
            f"{site}: two draws gave the same mask"


def test_training_steps_draw_one_set_of_masks_per_chunk_from_the_seeded_streams(framework):
    """Two compiled steps of two ``small_batch_size`` chunks, every dropout on, against a replay.

    At learning rate 0 (the weights stay) and from zero states, a fresh engine of the
    same seed runs four training-mode forwards of two rows, the chunks of both steps:
    each step's loss is the mean of its two forwards' NLL (so not a mask baked into
    the compiled step), and afterwards every site draws the same next mask in both
    engines. So the steps draw the sites' seeded streams (which the test above moves
    with the seed), one fresh set per chunk, as the reference's chunk loop calls the
    model once per chunk.
    """
    rng = np.random.default_rng(5)
    x, y = (rng.integers(0, VOCAB, (4, 6)).astype(np.int32) for _ in range(2))
    engine, stepped = built(framework, 28)
    replay = built(framework, 28)[1]
    for step in (1, 2):
        loss, _ = engine.train_step(x, y, engine.initial_state(4), 0.0, False)
        chunks = [replay.forward(x[rows], y[rows]) for rows in (slice(0, 2), slice(2, 4))]
        assert loss == pytest.approx(float(np.mean(chunks)), rel=1e-5), f"step {step}"
        if step == 1:
            first = loss
    assert abs(loss - first) > 1e-4, "the second step drew the first step's masks"
    after_steps, after_forwards = _draws(stepped, probes=1), _draws(replay, probes=1)
    for site in STREAMS:
        assert np.array_equal(after_steps[site][0], after_forwards[site][0]), \
            f"{site}: the steps did not draw what their chunks' forwards draw"


def test_the_window_lengths_follow_the_seed():
    """The procedure's generator (``train.fresh_state``) gives every engine its windows."""

    def lengths(seed):
        rng = restore_rng(fresh_state({"lr": 1.0}, seed)["rng"])
        return [length for _, length, _ in epoch_windows(rng, 20000, 70, True, 40)]

    first, again, other = lengths(28), lengths(28), lengths(29)
    assert first == again
    assert first != other
    assert np.mean(np.array(first[:200]) == np.array(other[:200])) < 0.2


def test_window_lengths_follow_the_reference_rule():
    """main.py: base bptt with probability 0.95, else bptt/2; max(5, int(N(base, 5))), capped."""
    rng = np.random.default_rng(1)
    lengths = np.array([sample_seq_len(rng, 70, 110) for _ in range(20000)])
    half = lengths < 53  # between N(35, 5) and N(70, 5)
    _close_to(float(half.mean()), 0.05, lengths.size, "share of half-length windows")
    for base, drawn in ((70, lengths[~half]), (35, lengths[half])):
        # int() truncates: the mean of int(N(base, 5)) is base - 1/2
        assert abs(drawn.mean() - (base - 0.5)) <= 5 * 5 / math.sqrt(drawn.size), base
        assert abs(drawn.std() - 5) <= 0.5, base
    assert min(sample_seq_len(rng, 8, 20) for _ in range(2000)) == 5
    assert max(sample_seq_len(rng, 70, 72) for _ in range(2000)) == 72


# ------------------------------------------------- each draw against the reference's rule


def test_locked_dropout_masks_one_per_sequence_shared_over_time(framework):
    """locked_dropout.py: a (1, batch, features) Bernoulli(1-p) mask / (1-p), per call."""
    _, streams = built(framework, 3)
    batch, time, features = 40, 5, 50
    masks = {}
    for site in LOCKED:
        p = _rate(site)
        first, second = (streams.locked(site, batch, time, features) for _ in range(2))
        masks[site] = first
        assert (first[:, 1:] == first[:, :1]).all(), f"{site}: the mask changes over time"
        kept = first[first != 0]
        np.testing.assert_allclose(kept, 1 / (1 - p), rtol=1e-6, err_msg=f"{site}: scaling")
        n = batch * features
        _close_to(float(np.mean(first[:, 0] == 0)), p, n, f"{site}: drop rate")
        q = p * p + (1 - p) * (1 - p)  # two independent masks agree this often
        _close_to(_agreement(first[1:, 0], first[:-1, 0]), q, n - features,
                  f"{site}: agreement of neighbouring sequences")
        _close_to(_agreement(first[:, 0], second[:, 0]), q, n,
                  f"{site}: agreement of two calls")
    for a, b in zip(LOCKED, LOCKED[1:], strict=False):  # sites with their own streams
        p, r = _rate(a), _rate(b)
        _close_to(_agreement(masks[a][:, 0], masks[b][:, 0]), p * r + (1 - p) * (1 - r),
                  batch * features, f"agreement of the {a} and {b} masks")


def test_weight_drop_masks_the_whole_matrix_once_per_forward(framework):
    """weight_drop.py: dropout of the raw W_hh (every entry), one new mask per forward."""
    _, streams = built(framework, 3)
    p = RATES["wdrop"]
    q = p * p + (1 - p) * (1 - p)
    per_layer = {}
    for layer in range(HP["nlayers"]):
        masks = np.stack([streams.weight_drop(layer) for _ in range(6)])
        per_layer[layer] = masks
        kept = masks[masks != 0]
        np.testing.assert_allclose(kept, 1 / (1 - p), rtol=1e-5, err_msg=f"layer {layer}")
        _close_to(float(np.mean(masks == 0)), p, masks.size, f"layer {layer}: drop rate")
        _close_to(_agreement(masks[1:], masks[:-1]), q, masks[1:].size,
                  f"layer {layer}: agreement of successive masks")
    _close_to(_agreement(per_layer[0], per_layer[1]), q, per_layer[0].size,
              "agreement of the first two layers' masks")


def test_embedding_dropout_drops_whole_words_shared_by_every_occurrence(framework):
    """embed_regularize.py: a (vocab, 1) mask / (1-p) on the embedding matrix, per call."""
    _, streams = built(framework, 3)
    p = RATES["dropoute"]
    tokens = (np.arange(8 * 25, dtype=np.int32).reshape(8, 25) * 7) % VOCAB  # 4 times each
    draws = []
    for _ in range(40):
        factors = streams.embedding(tokens)
        per_word = {}
        for word, factor in zip(tokens.ravel(), factors.ravel(), strict=True):
            per_word.setdefault(int(word), set()).add(float(factor))
        assert all(len(f) == 1 for f in per_word.values()), \
            "one word's occurrences in a forward were dropped differently"
        draws.append(np.array([per_word[w].pop() for w in range(VOCAB)]))
    draws = np.stack(draws)
    np.testing.assert_allclose(draws[draws != 0], 1 / (1 - p), rtol=1e-6)
    _close_to(float(np.mean(draws == 0)), p, draws.size, "word drop rate")
    _close_to(_agreement(draws[1:], draws[:-1]), p * p + (1 - p) * (1 - p), draws[1:].size,
              "agreement of successive draws")


def test_in_a_forward_only_weight_drop_and_embedding_dropout_are_shared_by_the_rows(framework):
    """Rows 4-7 repeat rows 0-3; one model, each stream at 0.5 in turn, the others at 0.

    Every stream changes the training-mode NLL of the dropless model; weight drop (one
    W_hh per forward) and embedding dropout (word types) leave equal rows equal, the
    locked dropouts (one mask per sequence) do not. (Embeddings uniform(+-1) here, so
    that dropping them shows in the NLL of an untrained model.)
    """
    _, streams = built(framework, 12, {"init_range": 1.0}, batch=8)
    rng = np.random.default_rng(2)
    x, y = (np.tile(rng.integers(0, VOCAB, (4, 6)).astype(np.int32), (2, 1)) for _ in range(2))
    for stream in RATES:
        streams.set_rate(stream, 0.0)
    plain = streams.forward(x, y)
    for stream in RATES:
        streams.set_rate(stream, 0.5)
        nll = streams.forward(x, y)
        streams.set_rate(stream, 0.0)
        assert float(np.abs(nll - plain).max()) > 1e-3, f"{stream} at 0.5 changed nothing"
        rows_apart = float(np.abs(nll[:4] - nll[4:]).max())
        if stream in ("wdrop", "dropoute"):
            assert rows_apart < 1e-6, f"{stream}: equal rows got different masks"
        else:
            assert rows_apart > 1e-3, f"{stream}: equal rows shared a mask"


def test_initial_tensors_have_the_reference_ranges_and_moments(framework):
    """model.py init_weights and PyTorch's LSTM/Linear defaults, tensor by tensor.

    Uniform(-a, a): every value within a, the largest within a(1 - 14/n) of it (fails
    with probability e**-14), mean and variance within five standard errors of 0 and
    a**2/3; zero tensors all zero; no two tensors correlated beyond five standard errors.
    """
    _, streams = built(framework, 4)
    tensors = streams.initial_tensors()
    expected = {"embedding": HP["init_range"], "decoder bias": 0.0,
                "prior weight": HP["nhidlast"] ** -0.5, "latent weight": HP["nhidlast"] ** -0.5,
                "latent bias": HP["nhidlast"] ** -0.5}
    for layer, units in enumerate([HP["nhid"]] * (HP["nlayers"] - 1) + [HP["nhidlast"]]):
        expected.update({n: units ** -0.5 for n in tensors if n.startswith(f"lstm{layer} ")})
    assert {n: b for n, (_, b) in tensors.items()} == pytest.approx(expected)
    uniform = {}
    for name, (values, a) in tensors.items():
        w = values.astype(np.float64).ravel()
        n = w.size
        if a == 0:
            assert not w.any(), f"{name} is not zero"
            continue
        assert np.abs(w).max() <= a * (1 + 1e-6), f"{name}: a value beyond {a:.4f}"
        assert np.abs(w).max() >= a * (1 - 14 / n), f"{name}: the range is narrower than {a:.4f}"
        assert abs(w.mean()) <= 5 * a / math.sqrt(3 * n), f"{name}: mean {w.mean():.4f}"
        assert abs(w.var() - a * a / 3) <= 5 * a * a * math.sqrt(4 / 45 / n), \
            f"{name}: variance {w.var():.5f}, expected {a * a / 3:.5f}"
        uniform[name] = w / a
    names = sorted(uniform)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            m = min(uniform[first].size, uniform[second].size)
            r = float(np.corrcoef(uniform[first][:m], uniform[second][:m])[0, 1])
            assert abs(r) <= 5 / math.sqrt(m), f"{first} and {second} correlate ({r:.3f})"


def test_pytorch_masks_do_not_replay_the_initial_weights_draws():
    """On the CPU, PyTorch's generator is one Mersenne Twister, initialisation's and masks' alike.

    The reference draws its masks from where its initialisation left that generator.
    A mask generator seeded with the job's seed itself starts where the initialisation
    started and repeats its numbers: the first masks are then functions of initial
    values (``bernoulli_`` spends two numbers per entry, ``uniform_`` one, so mask i
    correlates with value 2i, about -0.1 at p = 0.5). The masks' generators take a seed
    of their own, derived from the job's (``replica.mask_seed``).
    """
    torch = pytest.importorskip("torch")
    engine, _ = built("pytorch", 6)
    generator = torch.Generator().manual_seed(0)
    generator.set_state(engine.replica.generators["shared"].get_state())
    masks = torch.empty(20000).bernoulli_(0.5, generator=generator).numpy()
    torch.manual_seed(6)  # the state the model's initialisation drew from
    initial = torch.empty(40000).uniform_(-0.1, 0.1).numpy()
    for step in (1, 2):
        r = float(np.corrcoef(masks, initial[::step][:masks.size])[0, 1])
        assert abs(r) <= 5 / math.sqrt(masks.size), \
            f"the masks repeat the initialisation's numbers (every {step}: r = {r:.3f})"
