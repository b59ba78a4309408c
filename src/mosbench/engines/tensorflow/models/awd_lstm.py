"""AWD-LSTM language models with a softmax, MoC or MoS output layer.

The architecture of salesforce/awd-lstm-lm (Merity et al. 2018) and its MoS
extension zihangdai/mos (Yang et al. 2018): embedding dropout -> locked
dropout -> ``nlayers`` weight-dropped LSTMs with locked dropout between them
-> locked dropout -> output head tied to the embedding.
"""

import keras
from keras import ops

from mosbench.engines.tensorflow.models.embedding_dropout import embedding_dropout
from mosbench.engines.tensorflow.models.locked_dropout import LockedDropout
from mosbench.engines.tensorflow.models.mixture_of_contexts import MixtureOfContexts
from mosbench.engines.tensorflow.models.mixture_of_softmaxes import MixtureOfSoftmaxes
from mosbench.engines.tensorflow.models.tied_softmax import TiedSoftmax
from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM

HEADS = ("softmax", "moc", "mos")


class AWDLanguageModel(keras.Model):
    """AWD-LSTM with a tied softmax, Mixture-of-Contexts or Mixture-of-Softmaxes head.

    Args:
        vocab_size: number of word types.
        emsize: embedding size (the reference's ``emsize``).
        nhid: hidden size of every LSTM layer but the last.
        nhidlast: hidden size of the last LSTM layer; must equal ``emsize``
            for the softmax head, whose decoder is the transposed embedding.
        nlayers: number of LSTM layers.
        dropout: locked dropout on the last LSTM output.
        dropouth: locked dropout between LSTM layers.
        dropouti: locked dropout on the embedded input.
        dropoute: embedding (word-type) dropout.
        wdrop: DropConnect rate on every hidden-to-hidden matrix.
        head: ``"softmax"``, ``"moc"`` or ``"mos"``.
        n_experts: K, for MoC and MoS.
        dropoutl: locked dropout on the K latent contexts (MoC, MoS).
        init_range: embedding initialised uniform(-init_range, init_range).
        use_cudnn: passed to every :class:`WeightDropLSTM`.
        xla_decoder: compile the softmax and MoC heads' loss with XLA.

    Call arguments:
        tokens: int ``(batch, time)``.
        states: list of ``(h, c)`` per layer (see :meth:`initial_state`).
        training: whether the dropouts are active.

    :meth:`nll` takes the targets too and returns their per-token NLL in
    place of the log-probabilities: the fast path of training and evaluation.

    Returns:
        ``(log_probs, new_states, (raw_last, dropped_last))``: log-probabilities
        ``(batch, time, vocab)``, the states to carry on, and the last layer's
        output before and after its dropout (for TAR and AR).
    """

    def __init__(self, vocab_size, emsize, nhid, nhidlast, nlayers, dropout=0.4, dropouth=0.25,
                 dropouti=0.4, dropoute=0.1, wdrop=0.5, head="softmax", n_experts=1,
                 dropoutl=0.0, init_range=0.1, use_cudnn="auto", xla_decoder=False, **kwargs):
        super().__init__(**kwargs)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if head == "softmax" and nhidlast != emsize:
            raise ValueError(f"a tied softmax needs nhidlast == emsize, got {nhidlast} "
                             f"and {emsize}")
        # --- layers ---
        self.embedding = keras.layers.Embedding(
            vocab_size, emsize,
            embeddings_initializer=keras.initializers.RandomUniform(-init_range, init_range))
        self.embedding_seed = keras.random.SeedGenerator()
        self.dropoute = dropoute
        self.input_drop = LockedDropout(dropouti)
        self.hidden_drops = [LockedDropout(dropouth) for _ in range(nlayers - 1)]
        self.output_drop = LockedDropout(dropout)
        self.sizes = [nhid] * (nlayers - 1) + [nhidlast]
        self.rnns = [WeightDropLSTM(units, wdrop, use_cudnn=use_cudnn) for units in self.sizes]
        if head == "softmax":
            self.head = TiedSoftmax(vocab_size, xla_decoder=xla_decoder)
        elif head == "moc":
            self.head = MixtureOfContexts(vocab_size, n_experts, emsize, dropoutl,
                                          xla_decoder=xla_decoder)
        else:  # XLA made the MoS head slower (benchmarks/README.md)
            self.head = MixtureOfSoftmaxes(vocab_size, n_experts, emsize, dropoutl)
        # --- config ---
        self._config = dict(vocab_size=vocab_size, emsize=emsize, nhid=nhid, nhidlast=nhidlast,
                            nlayers=nlayers, dropout=dropout, dropouth=dropouth,
                            dropouti=dropouti, dropoute=dropoute, wdrop=wdrop, head=head,
                            n_experts=n_experts, dropoutl=dropoutl, init_range=init_range,
                            use_cudnn=use_cudnn, xla_decoder=xla_decoder)

    def build(self, tokens_shape, states_shape=None):
        # The embedding matrix is read directly (for embedding dropout), so build it first;
        # everything else builds on the first call.
        self.embedding.build(tokens_shape)

    def initial_state(self, batch_size):
        return [(ops.zeros((batch_size, units)), ops.zeros((batch_size, units)))
                for units in self.sizes]

    def features(self, tokens, states, training=False):
        """Everything before the head: ``(dropped_last, new_states, raw_last)``."""
        x = embedding_dropout(self.embedding.embeddings, tokens, self.dropoute,
                              self.embedding_seed, training)  # (B, T, E)
        x = self.input_drop(x, training=training)
        new_states = []
        for layer, (rnn, state) in enumerate(zip(self.rnns, states, strict=True)):
            raw, new = rnn(x, state, training=training)  # (B, T, H_layer)
            # Keras casts a layer's tensor arguments to its compute dtype (bfloat16 under a
            # mixed policy); the carried state keeps the dtype it came in with.
            new_states.append(tuple(ops.cast(n, s.dtype) for n, s in zip(new, state, strict=True)))
            if layer < len(self.rnns) - 1:
                x = self.hidden_drops[layer](raw, training=training)
        return self.output_drop(raw, training=training), new_states, raw

    def call(self, tokens, states, training=False):
        dropped, new_states, raw = self.features(tokens, states, training)
        log_probs = self.head(dropped, self.embedding.embeddings, training=training)
        return log_probs, new_states, (raw, dropped)

    def nll(self, tokens, targets, states, training=False):
        """Per-token NLL of ``targets`` ``(batch, time)``; otherwise as :meth:`call`.

        What training and evaluation use: the head's fused loss, which never
        writes the (batch, time, vocab) log-probabilities.
        """
        dropped, new_states, raw = self.features(tokens, states, training)
        nll = self.head.nll(dropped, self.embedding.embeddings, targets, training=training)
        return nll, new_states, (raw, dropped)

    def build_for(self, batch_size=1):
        """Create the weights by one call on a dummy batch."""
        self(ops.zeros((batch_size, 2), dtype="int32"), self.initial_state(batch_size))
        return self

    def get_config(self):
        return {**super().get_config(), **self._config}
