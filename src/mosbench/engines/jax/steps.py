"""The pure functions the engine jits: training step, evaluation, dynamic evaluation.

Each takes the parameter dict and the carried states ``[(h, c), ...]`` and
returns new ones; nothing is mutated, so a step is a function of its inputs
and a resume from the same arrays, key and draw count repeats it bit for bit.
"""

import jax
import jax.numpy as jnp
import optax


def _real(x, length, rows):
    """``(batch, time)`` True where a padded window is real; None when nothing is padded."""
    if length is None and rows is None:
        return None
    steps = jnp.ones(x.shape[1], bool) if length is None else jnp.arange(x.shape[1]) < length
    kept = jnp.ones(x.shape[0], bool) if rows is None else rows > 0
    return kept[:, None] & steps[None, :]


def _mean(values, real):
    """The mean over ``(batch, time, ...)`` of the real entries (all where ``real`` is None)."""
    if real is None:
        return jnp.mean(values)
    weights = jnp.broadcast_to(real.reshape(real.shape + (1,) * (values.ndim - 2)), values.shape)
    return jnp.sum(jnp.where(weights, values, 0.0)) / jnp.maximum(jnp.sum(weights), 1)


def _penalised(model, spec, compute):
    """The loss of one chunk: mean NLL + AR + TAR, weighted by the chunk's share.

    With ``length`` the window is padded in time, only its first ``length``
    steps count; with ``rows`` (1 or 0 per row) padded rows count for nothing.
    """

    def loss(params, x, y, states, key, share, length, rows):
        nll, new_states, (raw, dropped) = model.nll(params, x, y, states, key, compute, length)
        real = _real(x, length, rows)
        mean = _mean(nll, real)
        total = mean
        if spec.alpha:  # AR on the dropped output
            total = total + spec.alpha * _mean(jnp.square(dropped.astype(jnp.float32)), real)
        if spec.beta:  # TAR on the raw one: the pairs whose later step is real
            raw = raw.astype(jnp.float32)
            total = total + spec.beta * _mean(jnp.square(raw[:, 1:] - raw[:, :-1]),
                                              None if real is None else real[:, 1:])
        return total * share, (mean, new_states)

    return jax.value_and_grad(loss, has_aux=True)


def optimiser(spec):
    """Clip by the global norm, then add the weight decay (coupled L2, as PyTorch's SGD).

    The learning rate changes every step (variable BPTT scales it), so the
    step multiplies by it rather than baking it into the optax chain.
    """
    parts = [optax.clip_by_global_norm(spec.clip)] if spec.clip else []
    if spec.wdecay:
        parts.append(optax.add_decayed_weights(spec.wdecay))
    # optax.chain() of nothing fails (it unzips an empty list): no clip and no decay is
    # the plain gradient.
    return optax.chain(*parts) if parts else optax.identity()


def train_step(model, spec, batch_size, compute, replicas=1):
    """``(params, states, x, y, lr, mask_root, draw, length) -> (params, states, mean NLL)``.

    Chunks of ``small_batch_size`` rows each run one training-mode forward with
    its own mask key (``fold_in(mask_root, draw + chunk)``, so a step of n chunks
    spends n draws) and add their gradient weighted by their rows' share.
    ``length`` is None for a window of its own shape, else the real steps of a
    padded one; ``rows`` is None, or 1 for each real row and 0 for padding (a
    batch that does not split evenly over the replicas).

    With ``replicas`` > 1 the step is one replica's, inside ``shard_map`` over the
    ``data`` axis: it takes its rows of the window and of the states, chunks
    them, and sums the gradients and the NLL over the replicas before the clip,
    so N replicas make the update one device makes.
    """
    local = -(-batch_size // replicas)  # rows per replica, an uneven batch padded
    spans = [(a, min(a + spec.small_batch_size, local))
             for a in range(0, local, spec.small_batch_size)]
    grad = _penalised(model, spec, compute)
    tx = optimiser(spec)

    def step(params, states, x, y, lr, mask_root, draw, length=None, rows=None):
        grads, total, pieces = None, 0.0, []
        for chunk, (a, b) in enumerate(spans):
            key = jax.random.fold_in(mask_root, draw + chunk)
            if replicas > 1:
                key = (key, jax.random.fold_in(key, jax.lax.axis_index("data")))
            part = [(h[a:b], c[a:b]) for h, c in states]
            real = None if rows is None else rows[a:b]
            share = ((b - a) if rows is None else jnp.sum(real)) / batch_size
            (_, (mean, new)), g = grad(params, x[a:b], y[a:b], part, key, share, length, real)
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            total = total + mean * share
            pieces.append(new)
        states = [tuple(jnp.concatenate([p[layer][i] for p in pieces]) for i in range(2))
                  for layer in range(len(states))]
        if replicas > 1:
            grads, total = jax.lax.psum((grads, total), "data")
        updates, _ = tx.update(grads, tx.init(params), params)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        return params, states, total

    return step, len(spans)


def eval_window(model, compute):
    """``(params, x, y, states) -> (summed NLL, states)`` without dropout."""

    def window(params, x, y, states):
        nll, states, _ = model.nll(params, x, y, states, None, compute)
        return nll.sum(), states

    return window


def log_probs(model, compute):
    """``(params, x, states) -> ((batch, time, vocab) log-probabilities, states)``."""

    def rows(params, x, states):
        return model.log_probs(params, x, states, compute)

    return rows


def predict(model, compute):
    """``(params, x, states) -> (most likely next word after the window, states)``."""

    def next_word(params, x, states):
        log_probs, states = model.log_probs(params, x, states, compute)
        return jnp.argmax(log_probs[0, -1]), states

    return next_word


def _mean_nll(model, compute):
    def loss(params, x, y, states):
        nll, states, _ = model.nll(params, x, y, states, None, compute)
        return nll.mean(), states

    return jax.value_and_grad(loss, has_aux=True)


def window_gradient(model, compute):
    """``(params, x, y, states) -> (mean NLL, gradient, states)``, no dropout."""
    grad = _mean_nll(model, compute)

    def gradient(params, x, y, states):
        (loss, states), g = grad(params, x, y, states)
        return loss, g, states

    return gradient


def adaptive_update(model, compute):
    """One dynamic-evaluation window: its loss before the update, then
    ``w += decay * (w_trained - w) - scale * g`` (``decay = lamb * rate``,
    ``scale = lr / (ms + epsilon)``)."""
    grad = _mean_nll(model, compute)

    def update(params, trained, decay, scale, x, y, states):
        (loss, states), g = grad(params, x, y, states)
        params = jax.tree.map(lambda w, t, d, s, gw: w + (d * (t - w) - s * gw),
                              params, trained, decay, scale, g)
        return loss, params, states

    return update
