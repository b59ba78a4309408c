"""The workload every engine builds: model names, the presets' model keys, rank bounds.

The ``{model}`` wildcard's values and how a preset describes each model; the
TensorFlow and PyTorch model registries both read this, so the two frameworks
build the same four models from the same keys. Also which preset keys only
evaluation reads (:data:`EVALUATION_KEYS`): the workflow passes training the
preset without them, so changing one reruns evaluate but no training job.
"""

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


def training_hparams(preset):
    """``preset`` without :data:`EVALUATION_KEYS`: what the train stage and its probe read."""
    return {key: value for key, value in preset.items() if key not in EVALUATION_KEYS}


def head_dimension(name, hparams):
    """The rank bound d of a model's log-probability matrix (d+1), or None for MoS."""
    if name == "lstm":
        return hparams["emsize"]
    return None if MODELS[name] == "mos" else hparams["emsize"]
