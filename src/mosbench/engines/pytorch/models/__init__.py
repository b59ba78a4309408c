"""PyTorch model registry: the same names and preset keys as the Keras models' registry.

On a GPU, call :func:`assert_fused_lstm` once after moving a model there: it
raises unless the LSTMs really run cuDNN's fused kernel.
"""

from mosbench.engines.pytorch.models.fused_lstm import assert_fused_lstm
from mosbench.workload import MODELS, model_arguments

__all__ = ["MODELS", "assert_fused_lstm", "build_model"]


def build_model(name, vocab_size, hparams):
    """Build and initialise the named PyTorch model from its preset (on the CPU, float32).

    The preset keys are :func:`mosbench.workload.model_arguments`', as every
    engine's; ``xla_decoder`` has no PyTorch meaning and is ignored.
    """
    family, arguments = model_arguments(name, hparams)
    if family == "lstm":
        from mosbench.engines.pytorch.models.lstm import LSTMLanguageModel

        return LSTMLanguageModel(vocab_size, **arguments)
    from mosbench.engines.pytorch.models.awd_lstm import AWDLanguageModel

    return AWDLanguageModel(vocab_size, **arguments)
