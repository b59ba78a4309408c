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

from mosbench.engines.interface import AdaptiveCarry, Engine
from mosbench.engines.tensorflow import input_pipeline, steps
from mosbench.engines.tensorflow.averaging import IterateAverage
from mosbench.engines.tensorflow.devices import configure_devices, set_matmul_precision
from mosbench.engines.tensorflow.models.cudnn_lstm import build_for_job
from mosbench.errors import MosbenchError

MIB = 2**20


def _names(variables):
    """Position-and-name keys: Keras numbers layers per process, so full paths drift."""
    return [f"{i:03d}/{v.path.rsplit('/', 1)[-1]}" for i, v in enumerate(variables)]


def _check(arrays, names, shapes, what):
    """Raise a MosbenchError naming every missing, unexpected or mis-shaped array."""
    problems = [f"missing {n}" for n in names if n not in arrays]
    problems += [f"unexpected {n}" for n in arrays if n not in shapes]
    problems += [f"{n} has shape {tuple(arrays[n].shape)}, expected {shapes[n]}"
                 for n in names if n in arrays and tuple(arrays[n].shape) != shapes[n]]
    if problems:
        raise MosbenchError(f"{what} do not fit this model: " + "; ".join(problems[:8]))


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
    def versions(cls):
        build = tf.sysconfig.get_build_info()
        return {"framework": "tensorflow", "framework_version": tf.__version__,
                "keras_version": keras.__version__, "cuda_version": build.get("cuda_version"),
                "cudnn_version": build.get("cudnn_version")}

    # --- the model -------------------------------------------------------------------------

    def build(self, model_name, vocab_size, hparams):
        with tf.device(self.device), self.strategy.scope():
            # On a GPU the LSTMs must run cuDNN's kernel, as the PyTorch engine's do: a silent
            # fallback to a loop would time another algorithm.
            self.model = build_for_job(model_name, vocab_size, hparams, self.gpus)
        self._eval_step = steps.make_eval_step(self.model)
        self._predict = steps.make_predict_step(self.model)
        self._rows = steps.make_log_prob_step(self.model)
        self._gradient = steps.make_gradient_step(self.model)

    @property
    def n_params(self):
        return int(self.model.count_params())

    def weights(self):
        variables = self.model.trainable_variables
        return {n: v.numpy() for n, v in zip(_names(variables), variables, strict=True)}

    def load_weights(self, arrays):
        variables = self.model.trainable_variables
        names = _names(variables)
        _check(arrays, names, {n: tuple(v.shape) for n, v in zip(names, variables, strict=True)},
               "the weights")
        for name, variable in zip(names, variables, strict=True):
            variable.assign(arrays[name])

    # --- training ----------------------------------------------------------------------------

    def prepare_training(self, hparams, batch_size):
        with tf.device(self.device), self.strategy.scope():
            # Keras' decoupled decay equals PyTorch's coupled weight_decay for plain SGD.
            self.optimizer = keras.optimizers.SGD(learning_rate=hparams["lr"],
                                                  weight_decay=hparams.get("wdecay") or None)
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

    def start_average(self):
        self.averager.restore([v.numpy() for v in self.model.trainable_variables], 0)

    def averaged(self):
        return self.averager.swapped_in()

    def _checkpointed(self):
        """Every variable a resume restores: the model's (dropout seed states among them),
        the optimiser's, the average and its count."""
        return {**dict(zip((f"model/{n}" for n in _names(self.model.variables)),
                           self.model.variables, strict=True)),
                **{f"optimizer/{i:03d}": v for i, v in enumerate(self.optimizer.variables)},
                **{f"average/{i:03d}": v for i, v in enumerate(self.averager.averages)},
                "average/count": self.averager.count}

    def checkpoint_arrays(self):
        return {name: np.asarray(v) for name, v in self._checkpointed().items()}

    def restore_checkpoint(self, arrays):
        variables = self._checkpointed()
        _check(arrays, list(variables), {n: tuple(v.shape) for n, v in variables.items()},
               "the checkpoint's arrays")
        for name, variable in variables.items():
            variable.assign(arrays[name])

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
        return [np.sqrt(square) for square in squares]

    def adaptive_losses(self, windows, statistics, rates, *, lr, lamb, epsilon, carry=None):
        variables = self.model.trainable_variables
        carry = AdaptiveCarry() if carry is None else carry
        if not carry.cache:  # the pass's first chunk: its constants and update, traced once
            if carry.trained is None:
                carry.trained = self.weights()
            decay = [tf.constant(lamb * r, v.dtype) for r, v in zip(rates, variables, strict=True)]
            scale = [tf.constant(lr / (s + epsilon), v.dtype)
                     for s, v in zip(statistics, variables, strict=True)]
            trained = [tf.constant(carry.trained[n], v.dtype)
                       for n, v in zip(_names(variables), variables, strict=True)]

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
