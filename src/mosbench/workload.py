"""The workload every engine builds: model names, the presets' model keys, rank bounds.

The ``{model}`` wildcard's values and how a preset describes each model; the
TensorFlow and PyTorch model registries both read this, so the two frameworks
build the same four models from the same keys. Also which preset keys only
evaluation reads (:data:`EVALUATION_KEYS`): the workflow passes training the
preset without them, so changing one reruns evaluate but no training job.
And the canonical weights every engine saves and loads (:func:`weight_shapes`).
"""

import dataclasses

from mosbench.errors import MosbenchError

# wildcard value -> output head of the AWD family (None: the plain LSTM baseline)
MODELS = {"lstm": None, "awd-lstm": "softmax", "awd-lstm-moc": "moc", "awd-lstm-mos": "mos"}
# Model groups the ease-of-use inventory names as a component's users.
ALL = tuple(MODELS)
AWD = tuple(m for m, head in MODELS.items() if head)
MIXTURES = tuple(m for m, head in MODELS.items() if head in ("moc", "mos"))
MOS = tuple(m for m, head in MODELS.items() if head == "mos")
AWD_KEYS = ("emsize", "nhid", "nhidlast", "nlayers", "dropout", "dropouth", "dropouti",
            "dropoute", "wdrop", "init_range")
# Preset keys that only the evaluate stage reads (test perplexity's batch, the rank
# analysis, dynamic evaluation). Training reads every other key, eval_batch_size
# included (validation after each epoch).
EVALUATION_KEYS = ("dynamic_eval", "rank_contexts", "test_batch_size")
# The preset's matmul_precision values, which every engine applies (Engine's `precision`).
PRECISIONS = ("float32", "tf32", "mixed_bfloat16")


def check_precision(precision):
    """Raise a MosbenchError unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise MosbenchError(f"unknown matmul_precision '{precision}'; allowed: {list(PRECISIONS)}")


def check_model(name):
    """Raise a MosbenchError unless ``name`` is one of :data:`MODELS`."""
    if name not in MODELS:
        raise MosbenchError(f"unknown model '{name}'; allowed: {list(MODELS)}")


def model_arguments(name, hparams):
    """``(family, keyword arguments)`` that build the named model from its preset.

    ``family``: ``"lstm"`` (the plain baseline: ``emsize``, ``nhid``,
    ``nlayers``, ``dropout``, ``tie_weights``, ``init_range``) or ``"awd"``
    (``head`` and :data:`AWD_KEYS`, plus ``n_experts`` and ``dropoutl`` for a
    mixture head). Every engine's model registry builds from these, so the
    frameworks read the same preset keys.
    """
    check_model(name)
    if name == "lstm":
        return "lstm", {k: hparams[k] for k in ("emsize", "nhid", "nlayers", "dropout",
                                                "tie_weights", "init_range")}
    head = MODELS[name]
    mixture = {"n_experts": hparams["n_experts"], "dropoutl": hparams["dropoutl"]} \
        if head != "softmax" else {}
    return "awd", {"head": head, **{k: hparams[k] for k in AWD_KEYS}, **mixture}


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
    """What a training step reads from a preset, with the defaults of absent keys.

    ``lr``: SGD's initial learning rate (None where the preset has none:
    ``Engine.train_step`` takes each step's rate anyway); ``wdecay``: L2 weight decay (0: none);
    ``clip``: the global gradient norm cap (None: no clip); ``alpha``,
    ``beta``: AR and TAR weights (0: off); ``small_batch_size``: the rows of
    one gradient-accumulation chunk (the whole global batch when the preset
    has none).
    """

    lr: float | None
    wdecay: float
    clip: float | None
    alpha: float
    beta: float
    small_batch_size: int


def training_spec(hparams, batch_size):
    """The :class:`TrainingSpec` of a preset trained at global ``batch_size``."""
    lr = hparams.get("lr")
    return TrainingSpec(lr=None if lr is None else float(lr),
                        wdecay=float(hparams.get("wdecay") or 0.0), clip=hparams.get("clip"),
                        alpha=float(hparams.get("alpha") or 0.0),
                        beta=float(hparams.get("beta") or 0.0),
                        small_batch_size=hparams.get("small_batch_size") or batch_size)


def training_hparams(preset):
    """``preset`` without :data:`EVALUATION_KEYS`: what the train stage and its probe read."""
    return {key: value for key, value in preset.items() if key not in EVALUATION_KEYS}


def head_dimension(name, hparams):
    """The rank bound d of a model's log-probability matrix (d+1), or None for MoS."""
    if name == "lstm":
        return hparams["emsize"]
    return None if MODELS[name] == "mos" else hparams["emsize"]


# --- canonical weights -------------------------------------------------------------------------
#
# Every engine's ``weights()`` and ``load_weights()`` speak these names and shapes, so a
# ``model.weights.npz`` written by one framework loads into any other, and tests compare
# frameworks weight for weight without a pairwise mapping. The scheme:
#
# * names are dotted paths of the model's parts, numbered from 0 where there are several:
#   ``embedding``; per LSTM layer ``rnn.<l>.w_ih``, ``rnn.<l>.w_hh`` and its biases;
#   the mixture heads' ``prior.w``, ``latent.w``, ``latent.b``; the output layer's
#   ``decoder.w`` (an untied baseline only) and ``decoder.b``;
# * every matrix is ``(out, in)``, as the reference (zihangdai/mos, PyTorch) stores it,
#   so ``y = x @ w.T + b``; the embedding is ``(vocab, emsize)`` and doubles as the tied
#   decoder, which makes the tied and untied decoders the same layout;
# * LSTM gates are stacked along ``out`` in the order input, forget, cell, output;
#   the AWD layers have two biases (``b_ih``, ``b_hh``, as cuDNN and the reference);
#   the baseline's layers one (``b``, as Keras' LSTM; an engine whose kernel wants two
#   passes zeros as the second);
# * weight drop masks ``w_hh`` on the fly: the stored ``w_hh`` is the raw (undropped) one;
# * float32, in the order :func:`weight_shapes` lists them (the order of
#   ``Engine.gradient_statistics``' arrays too).


def _lstm_layer(shapes, layer, inputs, units, biases):
    prefix = f"rnn.{layer}."
    shapes[prefix + "w_ih"] = (4 * units, inputs)
    shapes[prefix + "w_hh"] = (4 * units, units)
    for bias in biases:
        shapes[prefix + bias] = (4 * units,)


def weight_shapes(name, vocab_size, hparams):
    """``{canonical name: shape}`` of the named model's trainable weights, in canonical order.

    Reads the same preset keys as the engines' model registries; the
    parameter count of a model is the sum of these shapes' sizes.
    """
    check_model(name)
    emsize, nlayers = hparams["emsize"], hparams["nlayers"]
    shapes = {"embedding": (vocab_size, emsize)}
    if name == "lstm":
        nhid = hparams["nhid"]
        for layer in range(nlayers):
            _lstm_layer(shapes, layer, emsize if layer == 0 else nhid, nhid, ("b",))
        if not hparams["tie_weights"]:
            shapes["decoder.w"] = (vocab_size, nhid)
        shapes["decoder.b"] = (vocab_size,)
        return shapes
    sizes = [hparams["nhid"]] * (nlayers - 1) + [hparams["nhidlast"]]
    for layer, (inputs, units) in enumerate(zip([emsize] + sizes[:-1], sizes, strict=True)):
        _lstm_layer(shapes, layer, inputs, units, ("b_ih", "b_hh"))
    if MODELS[name] in ("moc", "mos"):
        experts = hparams["n_experts"]
        shapes["prior.w"] = (experts, sizes[-1])
        shapes["latent.w"] = (experts * emsize, sizes[-1])
        shapes["latent.b"] = (experts * emsize,)
    shapes["decoder.b"] = (vocab_size,)
    return shapes


def parameter_count(name, vocab_size, hparams):
    """Trainable parameters of the named model: the sizes of :func:`weight_shapes` summed."""
    count = 0
    for shape in weight_shapes(name, vocab_size, hparams).values():
        size = 1
        for n in shape:
            size *= n
        count += size
    return count
