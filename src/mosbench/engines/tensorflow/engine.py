"""The TensorFlow / Keras 3 engine (:class:`mosbench.engines.interface.Engine`).

Keras models (``models/``), steps compiled with ``tf.function`` (``steps.py``),
``MirroredStrategy`` over the job's GPUs, Keras' SGD, the iterate average as
shadow variables (``averaging.py``). Arrays cross the interface as NumPy;
states stay TensorFlow tensors between steps.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from mosbench.engines.interface import AdaptiveCarry, Engine, canonical_weights, check_arrays
from mosbench.engines.tensorflow import input_pipeline, steps
from mosbench.engines.tensorflow.averaging import IterateAverage
from mosbench.engines.tensorflow.devices import configure_devices, set_matmul_precision
from mosbench.engines.tensorflow.models.cudnn_lstm import build_for_job
from mosbench.engines.tensorflow.models.expert_contexts import MixtureHead
from mosbench.engines.tensorflow.models.lstm import LSTMLanguageModel
from mosbench.workload import training_spec, weight_shapes

MIB = 2**20


def canonical_parts(model):
    """``{canonical name: (variable, transposed)}`` of a built Keras model.

    Keras kernels are ``(in, out)``, the canonical matrices ``(out, in)``:
    every kernel is transposed; the gate order is the same.
    """
    parts = {"embedding": (model.embedding.embeddings, False)}
    for layer, rnn in enumerate(model.rnns):
        prefix = f"rnn.{layer}."
        if isinstance(model, LSTMLanguageModel):  # keras.layers.LSTM: one bias
            cell = rnn.cell
            parts.update({prefix + "w_ih": (cell.kernel, True),
                          prefix + "w_hh": (cell.recurrent_kernel, True),
                          prefix + "b": (cell.bias, False)})
        else:
            parts.update({prefix + "w_ih": (rnn.kernel, True),
                          prefix + "w_hh": (rnn.recurrent_kernel, True),
                          prefix + "b_ih": (rnn.input_bias, False),
                          prefix + "b_hh": (rnn.recurrent_bias, False)})
    if isinstance(model, LSTMLanguageModel):
        if model.decoder is not None:
            parts["decoder.w"] = (model.decoder.kernel, True)
        parts["decoder.b"] = (model.decoder_bias, False)
        return parts
    if isinstance(model.head, MixtureHead):
        contexts = model.head.contexts
        parts.update({"prior.w": (contexts.prior.kernel, True),
                      "latent.w": (contexts.latent.kernel, True),
                      "latent.b": (contexts.latent.bias, False)})
    parts["decoder.b"] = (model.head.bias, False)
    return parts


class TensorFlowEngine(Engine):
    framework = "tensorflow"
    _input_s = 0.0  # seconds train_step has spent on its input

    def __init__(self, *, gpus=0, threads=None, precision="float32", deterministic=False,
                 seed=0, devices=None):
        self.gpus = gpus
        self.device = configure_devices(gpus, threads)
        set_matmul_precision(precision)
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(seed)
        self.strategy = steps.make_strategy(gpus, devices)
        self.model = None
        self._eval_step = self._predict = self._rows = self._gradient = None

    @classmethod
    def framework_versions(cls):
        build = tf.sysconfig.get_build_info()  # what the wheel was built against
        return {"framework_version": tf.__version__, "cuda": build.get("cuda_version"),
                "cudnn": build.get("cudnn_version"), "libraries": {"keras": keras.__version__}}

    # --- the model -------------------------------------------------------------------------

    def build(self, model_name, vocab_size, hparams):
        with tf.device(self.device), self.strategy.scope():
            # On a GPU the LSTMs must run cuDNN's kernel, as the PyTorch engine's do: a silent
            # fallback to a loop would time another algorithm.
            self.model = build_for_job(model_name, vocab_size, hparams, self.gpus)
        self._canonical = canonical_weights(
            canonical_parts(self.model), self.model.trainable_variables,
            weight_shapes(model_name, vocab_size, hparams), lambda v: v.shape,
            f"the Keras model '{model_name}'")
        self._eval_step = steps.make_eval_step(self.model)
        self._predict = steps.make_predict_step(self.model)
        self._rows = steps.make_log_prob_step(self.model)
        self._gradient = steps.make_gradient_step(self.model)

    @property
    def n_params(self):
        return int(self.model.count_params())

    def weights(self):
        return {w.name: w.to_canonical(w.variable.numpy()) for w in self._canonical}

    def load_weights(self, arrays):
        check_arrays(arrays, {w.name: w.shape for w in self._canonical}, "the weights")
        for w in self._canonical:
            w.variable.assign(w.from_canonical(arrays[w.name]))

    def _framework_order(self, canonical):
        """Canonical per-weight arrays (a list) in the trainable variables' order and layout."""
        ordered = [None] * len(self._canonical)
        for w, array in zip(self._canonical, canonical, strict=True):
            ordered[w.index] = w.from_canonical(array)
        return ordered

    # --- training ----------------------------------------------------------------------------

    def prepare_training(self, hparams, batch_size):
        with tf.device(self.device), self.strategy.scope():
            # Keras' decoupled decay equals PyTorch's coupled weight_decay for plain SGD.
            spec = training_spec(hparams, batch_size)
            self.optimizer = keras.optimizers.SGD(learning_rate=spec.lr,
                                                  weight_decay=spec.wdecay or None)
            self.optimizer.build(self.model.trainable_variables)
            self.averager = IterateAverage(self.model.trainable_variables)
        self._train_steps = {
            average: steps.make_train_step(self.model, self.optimizer, batch_size, hparams,
                                           self.averager if average else None, self.strategy)
            for average in (False, True)}

    def initial_state(self, batch_size):
        with tf.device(self.device):
            return self.model.initial_state(batch_size)

    def train_step(self, inputs, targets, states, lr, average):
        with tf.device(self.device):
            start = time.perf_counter()  # the input: NumPy window to tensors on the device
            inputs, targets = tf.constant(inputs), tf.constant(targets)
            self._input_s += time.perf_counter() - start
            nll, states = self._train_steps[average](
                inputs, targets, states, tf.constant(lr, tf.float32))
        return float(nll), states  # also waits for the step to finish

    def input_seconds(self):
        return self._input_s, None

    def compile_statistics(self):
        """Traces of the engine's ``tf.function`` steps as its compiles, without seconds.

        A trace builds a step's graph, which TensorFlow then optimises, inside the
        step's first call with a new input signature: that call's time is
        ``first_step_s`` (the training step) and cannot be split from running the
        step, so ``compile_s`` is None. Not counted: XLA's compiles of the decoder
        (``xla_decoder``), made at run time per new shape without a trace.
        """
        steps = [*getattr(self, "_train_steps", {}).values(), self._eval_step, self._predict,
                 self._rows, self._gradient]
        traces = sum(s.experimental_get_tracing_count() for s in steps if s is not None)
        return {"compiles": traces, "compile_s": None}, (
            "TensorFlow traces and optimises a step's graph within the step's first call, "
            "whose time (first_step_s) cannot be split from running the step")

    def start_average(self):
        self.averager.restore([v.numpy() for v in self.model.trainable_variables], 0)

    def averaged(self):
        return self.averager.swapped_in()

    def _checkpointed(self):
        """Every variable a resume restores, ``{name: (variable, transposed)}``: the model's
        weights and their average under canonical names, the average's count, the
        optimiser's variables and the dropout generators' seed states."""
        trainable = {id(v) for v in self.model.trainable_variables}
        seeds = [v for v in self.model.variables if id(v) not in trainable]
        return {**{f"model/{w.name}": (w.variable, w.transposed) for w in self._canonical},
                **{f"average/{w.name}": (self.averager.averages[w.index], w.transposed)
                   for w in self._canonical},
                "average/count": (self.averager.count, False),
                **{f"optimizer/{i:03d}": (v, False)
                   for i, v in enumerate(self.optimizer.variables)},
                **{f"rng/{i:03d}": (v, False) for i, v in enumerate(seeds)}}

    def checkpoint_arrays(self):
        return {name: np.ascontiguousarray(np.asarray(v).T) if transposed else np.asarray(v)
                for name, (v, transposed) in self._checkpointed().items()}

    def checkpoint_shapes(self):  # the variables' shapes, without copying their values
        return {n: tuple(v.shape)[::-1] if t else tuple(v.shape)
                for n, (v, t) in self._checkpointed().items()}

    def restore_checkpoint(self, arrays):
        self.check_checkpoint(arrays)
        for name, (variable, transposed) in self._checkpointed().items():
            variable.assign(np.asarray(arrays[name]).T if transposed else arrays[name])

    def state_arrays(self, states):
        return [np.asarray(x) for layer in states for x in layer]

    def states_from_arrays(self, arrays):
        with tf.device(self.device):
            return [(tf.constant(arrays[i]), tf.constant(arrays[i + 1]))
                    for i in range(0, len(arrays), 2)]

    # --- evaluation --------------------------------------------------------------------------

    def eval_window(self, inputs, targets, states):
        with tf.device(self.device):
            loss, states = self._eval_step(tf.constant(inputs), tf.constant(targets), states)
        return float(loss), states

    def predict_next(self, token, states):
        with tf.device(self.device):
            word, states = self._predict(tf.constant([[token]], tf.int32), states)
        return int(word.numpy()[0]), states

    def log_prob_rows(self, inputs, states):
        with tf.device(self.device):
            rows, states = self._rows(tf.constant(inputs), states)
        return rows.numpy().astype(np.float64), states

    def gradient_statistics(self, windows, batch_size):
        squares = [np.zeros(v.shape, np.float64) for v in self.model.trainable_variables]
        states = self.initial_state(batch_size)
        with tf.device(self.device):
            for inputs, targets in windows:
                _, grads, states = self._gradient(tf.constant(inputs), tf.constant(targets),
                                                  states)
                for square, grad in zip(squares, grads, strict=True):
                    square += np.square(grad.numpy(), dtype=np.float64)
        return [w.to_canonical(np.sqrt(squares[w.index])) for w in self._canonical]

    def adaptive_losses(self, windows, statistics, rates, *, lr, lamb, epsilon, carry=None):
        variables = self.model.trainable_variables
        carry = AdaptiveCarry() if carry is None else carry
        if not carry.cache:  # the pass's first chunk: its constants and update, traced once
            if carry.trained is None:
                carry.trained = self.weights()
            rates, statistics, trained = (self._framework_order(arrays) for arrays in (
                rates, statistics, [carry.trained[w.name] for w in self._canonical]))
            decay = [tf.constant(lamb * r, v.dtype) for r, v in zip(rates, variables, strict=True)]
            scale = [tf.constant(lr / (s + epsilon), v.dtype)
                     for s, v in zip(statistics, variables, strict=True)]
            trained = [tf.constant(t, v.dtype) for t, v in zip(trained, variables, strict=True)]

            @tf.function
            def adapt(grads):
                for v, g, s, d, w0 in zip(variables, grads, scale, decay, trained, strict=True):
                    v.assign_add(d * (w0 - v) - s * g)

            carry.cache["adapt"] = adapt
        adapt = carry.cache["adapt"]
        losses = []
        states = None if carry.states is None else self.states_from_arrays(carry.states)
        with tf.device(self.device):
            for inputs, targets in windows:
                states = states or self.model.initial_state(inputs.shape[0])
                loss, grads, states = self._gradient(tf.constant(inputs), tf.constant(targets),
                                                     states)
                losses.append(float(loss))  # scored before the weights see these targets
                adapt(grads)
        if states is not None:
            carry.states = self.state_arrays(states)
        return losses

    # --- measurement -------------------------------------------------------------------------

    def input_pipelines(self, train_path, batch_size, bptt, cache_file):
        return input_pipeline.input_pipelines(train_path, batch_size, bptt, cache_file)

    def allocator_peak_mb(self):
        if self.gpus == 0:
            return None, "gpus=0: a CPU job"
        try:
            visible = len(tf.config.list_logical_devices("GPU"))
            if visible == 0:
                return None, "no GPU visible to TensorFlow"
            peak = sum(tf.config.experimental.get_memory_info(f"GPU:{i}")["peak"]
                       for i in range(min(self.gpus, visible)))
        except Exception as e:
            return None, f"TensorFlow allocator unavailable: {e!r}"
        return peak / MIB, None


ENGINE = TensorFlowEngine
