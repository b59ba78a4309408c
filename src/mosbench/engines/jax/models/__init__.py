"""JAX model registry: the same names and preset keys as the other engines' registries."""

from mosbench.workload import model_arguments, weight_shapes


def build_model(name, vocab_size, hparams, cudnn=False):
    """The named model's description (parameters are made by its ``init``); ``cudnn``: its
    LSTM layers on cuDNN (``recurrence.choose_cudnn`` says when)."""
    family, arguments = model_arguments(name, hparams)
    shapes = weight_shapes(name, vocab_size, hparams)
    if family == "lstm":
        from mosbench.engines.jax.models.lstm import LSTMLanguageModel

        return LSTMLanguageModel.create(shapes, cudnn=cudnn, **arguments)
    from mosbench.engines.jax.models.awd_lstm import AWDLanguageModel

    return AWDLanguageModel.create(shapes, cudnn=cudnn, **arguments)
