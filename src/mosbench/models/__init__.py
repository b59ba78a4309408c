"""Model registry: the values of the ``{model}`` wildcard and how each is built."""

from mosbench.errors import MosbenchError

# wildcard value -> output head of the AWD family (None: the plain LSTM baseline)
MODELS = {"lstm": None, "awd-lstm": "softmax", "awd-lstm-moc": "moc", "awd-lstm-mos": "mos"}
AWD_KEYS = ("emsize", "nhid", "nhidlast", "nlayers", "dropout", "dropouth", "dropouti",
            "dropoute", "wdrop", "init_range")


def build_model(name, vocab_size, hparams, use_cudnn="auto"):
    """Build and initialise the named model from its preset's hyperparameters."""
    if name not in MODELS:
        raise MosbenchError(f"unknown model '{name}'; allowed: {list(MODELS)}")
    if name == "lstm":
        from mosbench.models.lstm import LSTMLanguageModel

        model = LSTMLanguageModel(
            vocab_size, hparams["emsize"], hparams["nhid"], hparams["nlayers"],
            dropout=hparams["dropout"], tie_weights=hparams["tie_weights"],
            init_range=hparams["init_range"], xla_decoder=hparams.get("xla_decoder", False),
        )
    else:
        from mosbench.models.awd_lstm import AWDLanguageModel

        head = MODELS[name]
        mixture = {"n_experts": hparams["n_experts"], "dropoutl": hparams["dropoutl"]} \
            if head != "softmax" else {}
        model = AWDLanguageModel(vocab_size, head=head, use_cudnn=use_cudnn,
                                 xla_decoder=hparams.get("xla_decoder", False),
                                 **{k: hparams[k] for k in AWD_KEYS}, **mixture)
    return model.build_for()


def head_dimension(name, hparams):
    """The rank bound d of a model's log-probability matrix (d+1), or None for MoS."""
    if name == "lstm":
        return hparams["emsize"]
    return None if MODELS[name] == "mos" else hparams["emsize"]
