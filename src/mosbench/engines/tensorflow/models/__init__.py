"""Keras model registry: each ``{model}`` wildcard value (:mod:`mosbench.workload`) built."""

from mosbench.errors import MosbenchError
from mosbench.workload import AWD_KEYS, MODELS


def build_model(name, vocab_size, hparams, use_cudnn="auto"):
    """Build and initialise the named model from its preset's hyperparameters.

    ``use_cudnn`` goes to every LSTM layer: ``"auto"`` (cuDNN where a GPU is visible),
    ``True`` (cuDNN or an error; the engine's GPU jobs, ``cudnn_lstm.py``), ``False``.
    """
    if name not in MODELS:
        raise MosbenchError(f"unknown model '{name}'; allowed: {list(MODELS)}")
    if name == "lstm":
        from mosbench.engines.tensorflow.models.lstm import LSTMLanguageModel

        model = LSTMLanguageModel(
            vocab_size, hparams["emsize"], hparams["nhid"], hparams["nlayers"],
            dropout=hparams["dropout"], tie_weights=hparams["tie_weights"],
            init_range=hparams["init_range"], xla_decoder=hparams.get("xla_decoder", False),
            use_cudnn=use_cudnn,
        )
    else:
        from mosbench.engines.tensorflow.models.awd_lstm import AWDLanguageModel

        head = MODELS[name]
        mixture = {"n_experts": hparams["n_experts"], "dropoutl": hparams["dropoutl"]} \
            if head != "softmax" else {}
        model = AWDLanguageModel(vocab_size, head=head, use_cudnn=use_cudnn,
                                 xla_decoder=hparams.get("xla_decoder", False),
                                 **{k: hparams[k] for k in AWD_KEYS}, **mixture)
    return model.build_for()

