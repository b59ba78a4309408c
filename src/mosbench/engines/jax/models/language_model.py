"""The base of the JAX language models: their outputs through the head, written once.

A model (``lstm.py``, ``awd_lstm.py``) gives ``features``, the time-major
``(dropped last output, new states, raw last output)`` of its layers, and a
``head`` that decodes them (``tied_softmax.py``, ``mixture_of_contexts.py``,
``mixture_of_softmaxes.py``); the per-token NLL and the log-probabilities
follow from those two the same way for every model.
"""

import jax.numpy as jnp


class LanguageModel:
    """``nll`` and ``log_probs`` of a model that has ``features`` and a ``head``."""

    def nll(self, params, tokens, targets, states, key=None, compute=jnp.float32, length=None):
        """Per-token NLL ``(batch, time)``, the new states, and the last layer's output
        ``(raw, dropped)`` batch-first (TAR and AR). ``key``: the forward's mask key (None:
        no dropout); ``length``: the real steps of a padded window (the states are those
        after them)."""
        dropped, new_states, raw = self.features(params, tokens, states, key, compute, length)
        nll = self.head.nll(params, dropped, targets.T, key, compute)
        return nll.T, new_states, (raw.swapaxes(0, 1), dropped.swapaxes(0, 1))

    def log_probs(self, params, tokens, states, compute=jnp.float32):
        """``(batch, time, vocab)`` log-probabilities without dropout, and the new states."""
        dropped, new_states, _ = self.features(params, tokens, states, None, compute)
        return self.head.log_probs(params, dropped, None, compute).swapaxes(0, 1), new_states
