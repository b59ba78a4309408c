"""PyTorch model registry: the same names and preset keys as the Keras models' registry.

On a GPU, call :func:`assert_fused_lstm` once after moving a model there: it
raises unless the LSTMs really run cuDNN's fused kernel.
"""

from mosbench.engines.pytorch.models.fused_lstm import assert_fused_lstm
from mosbench.errors import MosbenchError
from mosbench.workload import AWD_KEYS, MODELS

__all__ = ["MODELS", "assert_fused_lstm", "build_model"]


def build_model(name, vocab_size, hparams):
    """Build and initialise the named PyTorch model from its preset (on the CPU, float32).

    Reads the same preset keys as the Keras registry; ``xla_decoder`` has no
    PyTorch meaning and is ignored.
    """
    if name not in MODELS:
        raise MosbenchError(f"unknown model '{name}'; allowed: {list(MODELS)}")
    if name == "lstm":
        from mosbench.engines.pytorch.models.lstm import LSTMLanguageModel

        return LSTMLanguageModel(vocab_size, hparams["emsize"], hparams["nhid"],
                                 hparams["nlayers"], dropout=hparams["dropout"],
                                 tie_weights=hparams["tie_weights"],
                                 init_range=hparams["init_range"])
    from mosbench.engines.pytorch.models.awd_lstm import AWDLanguageModel

    head = MODELS[name]
    mixture = {"n_experts": hparams["n_experts"], "dropoutl": hparams["dropoutl"]} \
        if head != "softmax" else {}
    return AWDLanguageModel(vocab_size, head=head, **{k: hparams[k] for k in AWD_KEYS},
                            **mixture)
