"""TensorFlow's compiled steps: training (data-parallel), evaluation, prediction.

The procedure never sees these: :class:`~mosbench.engines.tensorflow.engine.TensorFlowEngine`
calls them with its tensors.
"""

import tensorflow as tf

from mosbench.engines.replicas import replica_rows
from mosbench.engines.tensorflow.models.activation_regularisation import (
    activation_penalty,
    temporal_activation_penalty,
)
from mosbench.workload import training_spec


def make_train_step(model, optimizer, batch_size, hparams, averager=None, strategy=None):
    """A compiled step on one window: returns the mean NLL and the state to carry on.

    Inputs, targets and states are global (the whole batch); with N replicas
    each takes a contiguous share of the rows (:func:`replica_rows`: shares
    differ by at most one row when N does not divide the batch, so the
    published batch sizes run on any GPU count). The minimised loss adds AR and TAR to the
    NLL; each replica processes its rows in ``small_batch_size`` chunks whose
    gradients are summed (each weighted by its share of the global batch, as
    the reference), the replicas' gradients are all-reduced, and only then
    clipped by their global norm, so N devices make exactly the update one
    device makes on the same global batch (Keras' ``clipnorm`` would clip
    each replica's part before the sum). With ``averager`` the step also folds
    the new weights into the NT-ASGD average.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    shares = replica_rows(batch_size, replicas)
    spec = training_spec(hparams, batch_size)
    small, alpha, beta = spec.small_batch_size, spec.alpha, spec.beta
    variables = model.trainable_variables

    def replica_step(inputs, targets, states):
        context = tf.distribute.get_replica_context()
        # Each replica is traced on its own, so its index is known while tracing.
        first, last = shares[tf.get_static_value(context.replica_id_in_sync_group)]
        grads, total_nll, chunk_states = None, 0.0, []
        for start in range(first, last, small):
            end = min(start + small, last)
            rows = slice(start, end)
            with tf.GradientTape() as tape:
                sliced = [(h[rows], c[rows]) for h, c in states]
                token_nlls, new_states, (raw, dropped) = model.nll(
                    inputs[rows], targets[rows], sliced, training=True)
                nll = tf.reduce_mean(token_nlls)
                loss = nll
                if alpha:
                    loss += activation_penalty(dropped, alpha)
                if beta:
                    loss += temporal_activation_penalty(raw, beta)
                loss *= (end - start) / batch_size
            chunk_grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
            # The first chunk's gradients as they are: no zero tensors to add them to.
            grads = chunk_grads if grads is None else [
                g + c for g, c in zip(grads, chunk_grads, strict=True)]
            total_nll += nll * (end - start) / batch_size
            chunk_states.append(new_states)
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)  # the global gradient
        # Clip the norm of all gradients together, as torch.nn.utils.clip_grad_norm_.
        if spec.clip:
            grads, _ = tf.clip_by_global_norm(grads, spec.clip)
        # Keras sums the replicas' gradients again inside apply(): give it each one's share.
        optimizer.apply([g / replicas for g in grads], variables)
        if averager is not None:
            averager.update()
        local_states = [tuple(tf.concat([s[layer][i] for s in chunk_states], 0)
                              for i in range(2)) for layer in range(len(states))]
        return total_nll, local_states

    states_spec = [tuple(tf.TensorSpec(s.shape, tf.float32) for s in layer)
                   for layer in model.initial_state(batch_size)]
    window = tf.TensorSpec((batch_size, None), tf.int32)  # any window length: one trace

    @tf.function(input_signature=[window, window, states_spec, tf.TensorSpec((), tf.float32)])
    def step(inputs, targets, states, lr):
        optimizer.learning_rate.assign(lr)
        nll, states = strategy.run(replica_step, args=(inputs, targets, states))
        # The replicas' rows back into one batch, in order (shares may differ in size).
        parts = strategy.experimental_local_results(states)
        states = [tuple(tf.concat([part[layer][i] for part in parts], 0) for i in range(2))
                  for layer in range(len(parts[0]))]
        return strategy.reduce(tf.distribute.ReduceOp.SUM, nll, axis=None), states

    return step


def make_strategy(gpus, devices=None):
    """Data parallelism over ``devices`` (or ``gpus`` GPUs); one device otherwise."""
    if devices:
        return tf.distribute.MirroredStrategy(devices)
    if gpus >= 1:
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(gpus)])
    return tf.distribute.get_strategy()


def make_eval_step(model):
    """A compiled step returning the summed loss of a window and the next state.

    The time dimension is left unknown in the signature, so the short last
    window reuses the same graph.
    """

    @tf.function(reduce_retracing=True)
    def step(inputs, targets, states):
        nll, states, _ = model.nll(inputs, targets, states, training=False)
        return tf.reduce_sum(nll), states

    return step


def make_predict_step(model):
    """The next word after one token at batch size 1 (the latency figure), state carried."""

    @tf.function
    def predict(token, states):
        log_probs, states, _ = model(token, states, training=False)
        return tf.argmax(log_probs[:, -1], axis=-1), states

    return predict


def make_log_prob_step(model):
    """A window's ``(batch * time, vocab)`` log-probabilities (the rank analysis)."""

    @tf.function(reduce_retracing=True)
    def rows(inputs, states):
        log_probs, states, _ = model(inputs, states, training=False)
        return tf.reshape(log_probs, (-1, tf.shape(log_probs)[-1])), states

    return rows


def make_gradient_step(model):
    """A window's mean NLL without dropout and its gradient (dynamic evaluation)."""

    @tf.function(reduce_retracing=True)
    def step(inputs, targets, states):
        with tf.GradientTape() as tape:
            nll, states, _ = model.nll(inputs, targets, states, training=False)
            loss = tf.reduce_mean(nll)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
        return loss, grads, states

    return step
