"""Keras model registry: each ``{model}`` wildcard value (:mod:`mosbench.workload`) built."""

from mosbench.workload import model_arguments


def build_model(name, vocab_size, hparams, use_cudnn="auto"):
    """Build and initialise the named model from its preset's hyperparameters.

    The preset keys are :func:`mosbench.workload.model_arguments`', as every
    engine's, and ``xla_decoder`` (TensorFlow only). ``use_cudnn`` goes to
    every LSTM layer: ``"auto"`` (cuDNN where a GPU is visible), ``True``
    (cuDNN or an error; the engine's GPU jobs, ``cudnn_lstm.py``), ``False``.
    """
    family, arguments = model_arguments(name, hparams)
    options = {"xla_decoder": hparams.get("xla_decoder", False), "use_cudnn": use_cudnn}
    if family == "lstm":
        from mosbench.engines.tensorflow.models.lstm import LSTMLanguageModel

        model = LSTMLanguageModel(vocab_size, **arguments, **options)
    else:
        from mosbench.engines.tensorflow.models.awd_lstm import AWDLanguageModel

        model = AWDLanguageModel(vocab_size, **arguments, **options)
    return model.build_for()
