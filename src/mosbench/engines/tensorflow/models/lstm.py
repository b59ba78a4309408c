"""Plain LSTM language model: the baseline of the study.

Embedding -> dropout -> ``nlayers`` LSTM layers, each followed by dropout ->
softmax decoder, tied to the embedding by default (Press & Wolf 2017; Inan et
al. 2017). With 650 units and dropout 0.5 this is Zaremba et al.'s (2014)
"medium" model. Dropout here is ordinary (a fresh mask per time step, on the
non-recurrent connections only, as Zaremba et al.); the AWD models add the
variational kinds.

Initialisation follows PyTorch's defaults as the reference uses them: LSTM
weights and biases uniform(+-1/sqrt(nhid)), embedding uniform(+-init_range),
decoder bias zero.
"""

import math

import keras
import tensorflow as tf
from keras import ops

from mosbench.engines.tensorflow.models.fast_lstm import lstm_sequence
from mosbench.engines.tensorflow.models.tied_softmax import decoder_nll


class LSTMLanguageModel(keras.Model):
    """Next-word model whose recurrent state the caller carries between windows.

    Args:
        vocab_size: number of word types.
        emsize: embedding size (equal to ``nhid`` when tied).
        nhid: hidden units of every LSTM layer.
        nlayers: number of stacked LSTM layers.
        dropout: drop rate on the embedding output and after every layer.
        tie_weights: decode with the transposed embedding matrix.
        init_range: embedding initialised uniform(-init_range, init_range).
        xla_decoder: compile the decoder's loss (:meth:`nll`) with XLA.
        use_cudnn: ``"auto"`` runs Keras' LSTM layers (cuDNN) when a GPU is
            visible and the hand-differentiated recurrence otherwise, ``True``
            insists on cuDNN (the layers raise instead of falling back),
            ``False`` always runs the recurrence.

    Call arguments:
        tokens: int tensor ``(batch, time)``.
        states: list of ``(h, c)`` per layer, each ``(batch, nhid)``; see
            :meth:`initial_state`.
        training: whether dropout is active.

    :meth:`nll` takes the targets too and returns their per-token NLL in
    place of the log-probabilities: the fast path of training and evaluation.

    Returns:
        ``(log_probs, new_states, (raw_last, dropped_last))``: log-probabilities
        ``(batch, time, vocab_size)``, the states to carry on, and the last
        layer's output before and after dropout (the interface of every model).
    """

    def __init__(self, vocab_size, emsize, nhid, nlayers, dropout=0.5, tie_weights=True,
                 init_range=0.1, xla_decoder=False, use_cudnn="auto", **kwargs):
        super().__init__(**kwargs)
        if use_cudnn not in ("auto", True, False):
            raise ValueError(f"use_cudnn must be 'auto', True or False, got {use_cudnn!r}")
        self.use_cudnn = use_cudnn
        # --- layers ---
        self.vocab_size, self.nhid, self.nlayers = vocab_size, nhid, nlayers
        self.embedding = keras.layers.Embedding(
            vocab_size, emsize,
            embeddings_initializer=keras.initializers.RandomUniform(-init_range, init_range),
        )
        self.drop = keras.layers.Dropout(dropout)
        bound = 1.0 / math.sqrt(nhid)
        self.rnns = [
            keras.layers.LSTM(
                nhid, return_sequences=True, return_state=True,
                kernel_initializer=keras.initializers.RandomUniform(-bound, bound),
                recurrent_initializer=keras.initializers.RandomUniform(-bound, bound),
                bias_initializer=keras.initializers.RandomUniform(-bound, bound),
                unit_forget_bias=False, use_cudnn=use_cudnn,
            )
            for _ in range(nlayers)
        ]
        self.tie_weights = tie_weights
        self.decoder = None if tie_weights else keras.layers.Dense(vocab_size, use_bias=False)
        self.decoder_bias = self.add_weight(shape=(vocab_size,), initializer="zeros",
                                            name="decoder_bias")
        # --- config ---
        self._config = dict(vocab_size=vocab_size, emsize=emsize, nhid=nhid, nlayers=nlayers,
                            dropout=dropout, tie_weights=tie_weights, init_range=init_range,
                            xla_decoder=xla_decoder, use_cudnn=use_cudnn)

    def initial_state(self, batch_size):
        zeros = ops.zeros((batch_size, self.nhid))
        return [(zeros, zeros) for _ in range(self.nlayers)]

    def build(self, tokens_shape, states_shape=None):
        # The LSTM and decoder weights are read directly, not through calls: build them here.
        self.embedding.build(tokens_shape)
        for layer, rnn in enumerate(self.rnns):
            rnn.build((None, None, self._config["emsize"] if layer == 0 else self.nhid))
        if self.decoder is not None:
            self.decoder.build((None, self.nhid))

    def features(self, tokens, states, training=False):
        """Everything before the decoder: ``(dropped_last, new_states, raw_last)``."""
        x = self.drop(self.embedding(tokens), training=training)  # (B, T, E)
        fused = self.use_cudnn is True or (  # Keras picks cuDNN on a GPU, raises if True
            self.use_cudnn == "auto" and bool(tf.config.list_logical_devices("GPU")))
        new_states = []
        for rnn, (h, c) in zip(self.rnns, states, strict=True):
            if fused:
                raw, h, c = rnn(x, initial_state=[h, c], training=training)  # (B, T, H)
            else:  # the same layer's weights through the hand-differentiated recurrence
                cell = rnn.cell
                raw, (h, c) = lstm_sequence(x, h, c, cell.kernel, cell.recurrent_kernel,
                                            cell.bias)
            new_states.append((h, c))
            x = self.drop(raw, training=training)
        return x, new_states, raw

    def decoder_matrix(self):
        """``(vocab, nhid)``: the embedding when tied, else the decoder's transposed kernel."""
        if self.tie_weights:
            return self.embedding.embeddings
        return ops.transpose(self.decoder.kernel)

    def call(self, tokens, states, training=False):
        x, new_states, raw = self.features(tokens, states, training)
        logits = ops.matmul(x, ops.transpose(self.decoder_matrix()))  # (B, T, V)
        log_probs = ops.log_softmax(ops.cast(logits + self.decoder_bias, "float32"), axis=-1)
        return log_probs, new_states, (raw, x)

    def nll(self, tokens, targets, states, training=False):
        """Per-token NLL of ``targets`` ``(batch, time)`` through the fused softmax loss."""
        x, new_states, raw = self.features(tokens, states, training)
        nll = decoder_nll(x, self.decoder_matrix(), self.decoder_bias, targets,
                          self._config["xla_decoder"], training)
        return nll, new_states, (raw, x)

    def build_for(self, batch_size=1):
        """Create the weights by one call on a dummy batch."""
        self(ops.zeros((batch_size, 1), dtype="int32"), self.initial_state(batch_size))
        return self

    def get_config(self):
        return {**super().get_config(), **self._config}
