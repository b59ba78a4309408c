"""An LSTM layer with DropConnect on its hidden-to-hidden matrix (weight drop).

Merity et al. (2018, AWD-LSTM) regularise the recurrent connections by
dropping entries of the hidden-to-hidden matrix W_hh (DropConnect, Wan et al.
2013) rather than the hidden state. The mask is drawn **once per forward
call** and shared by every time step and every sequence in the batch, so the
recurrence itself is an ordinary LSTM with a modified matrix. That is what
keeps the fused cuDNN kernel usable: drop the matrix first, then hand the
dropped tensor to the kernel.
"""

import math

import keras
import tensorflow as tf
from keras import ops

from mosbench.engines.tensorflow.models.fast_lstm import lstm_sequence


class WeightDropLSTM(keras.layers.Layer):
    """One LSTM layer with weight drop, PyTorch's parameterisation and initialisation.

    Semantics:
        - Training: ``W_hh' = dropout(W_hh, weight_dropout)`` (entries zeroed
          with probability p, survivors scaled by 1/(1-p)); one mask per call,
          shared across time steps and batch. The raw ``recurrent_kernel`` is
          the trained variable; gradients reach only the entries the mask kept.
        - Evaluation: the raw matrix, no randomness.
        - Two bias vectors, ``input_bias`` (b_ih) and ``recurrent_bias``
          (b_hh), as PyTorch's LSTM, so parameter counts match the reference;
          they enter the maths only through their sum.
        - Gates in the order input, forget, cell, output (PyTorch's and
          Keras' order); every weight and bias uniform(+-1/sqrt(units)).

    Args:
        units: hidden size H.
        weight_dropout: DropConnect rate p on W_hh (the reference's ``wdrop``).
        use_cudnn: ``"auto"`` uses the fused cuDNN kernel when a GPU is
            visible, ``True`` insists on it (fails instead of falling back),
            ``False`` always runs the generic loop.
        seed: seed of the layer's mask generator.

    Call arguments:
        inputs: ``(batch, time, features)``.
        initial_state: ``(h, c)``, each ``(batch, units)``.
        training: whether the mask is applied.

    Returns:
        ``(outputs, (h, c))`` with outputs ``(batch, time, units)``.

    Example:
        >>> layer = WeightDropLSTM(8, weight_dropout=0.5)
        >>> x = keras.ops.ones((2, 5, 4)); h = keras.ops.zeros((2, 8))
        >>> y, (h, c) = layer(x, (h, h), training=True)

    Reference: Merity, Keskar, Socher, "Regularizing and Optimizing LSTM
    Language Models", ICLR 2018.
    """

    def __init__(self, units, weight_dropout=0.0, use_cudnn="auto", seed=None, **kwargs):
        super().__init__(**kwargs)
        if use_cudnn not in ("auto", True, False):
            raise ValueError(f"use_cudnn must be 'auto', True or False, got {use_cudnn!r}")
        self.units = units
        self.weight_dropout = weight_dropout
        self.use_cudnn = use_cudnn
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        bound = 1.0 / math.sqrt(self.units)

        def weight(shape, name):
            return self.add_weight(shape=shape, name=name,
                                   initializer=keras.initializers.RandomUniform(-bound, bound))

        gates = 4 * self.units
        self.kernel = weight((input_shape[-1], gates), "kernel")  # W_ih transposed
        self.recurrent_kernel = weight((self.units, gates), "recurrent_kernel")  # W_hh^T, raw
        self.input_bias = weight((gates,), "input_bias")
        self.recurrent_bias = weight((gates,), "recurrent_bias")

    def dropped_recurrent_kernel(self, training):
        """The hidden-to-hidden matrix this call uses: masked in training, raw otherwise."""
        if training and self.weight_dropout > 0:
            return keras.random.dropout(self.recurrent_kernel, self.weight_dropout,
                                        seed=self.seed_generator)
        return ops.convert_to_tensor(self.recurrent_kernel)

    def call(self, inputs, initial_state, training=False):
        h0, c0 = initial_state
        recurrent = self.dropped_recurrent_kernel(training)
        bias = self.input_bias + self.recurrent_bias
        if self._cudnn_wanted():
            from keras.src.backend.tensorflow.rnn import lstm as fused_lstm

            try:
                _, outputs, (h, c) = fused_lstm(
                    inputs, h0, c0, None, self.kernel, recurrent, bias,
                    activation=keras.activations.tanh,
                    recurrent_activation=keras.activations.sigmoid, return_sequences=True)
                return outputs, (h, c)
            except NotImplementedError:
                if self.use_cudnn is True:
                    raise RuntimeError("use_cudnn=True but the cuDNN LSTM kernel is "
                                       "unavailable (no GPU visible?)") from None
        return self._generic(inputs, h0, c0, recurrent, bias)

    def _cudnn_wanted(self):
        if self.use_cudnn is False:
            return False
        return self.use_cudnn is True or bool(tf.config.list_logical_devices("GPU"))

    def _generic(self, inputs, h0, c0, recurrent, bias):
        """The same maths as the fused kernel: one input matmul, a hand-differentiated loop."""
        return lstm_sequence(inputs, h0, c0, self.kernel, recurrent, bias)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "weight_dropout": self.weight_dropout, "use_cudnn": self.use_cudnn,
                "seed": self.seed}
