"""The JAX engine (:class:`mosbench.engines.interface.Engine`): plain JAX and optax.

The parameters are a dict keyed by the canonical names of
:func:`mosbench.workload.weight_shapes`, in the canonical layouts, so
``weights()`` and ``load_weights()`` are copies and nothing is renamed. The
steps (``steps.py``) are pure functions compiled per window shape
(``compiled.py``); every dropout mask comes from ``fold_in(mask_root, draw)``
with a host draw counter, so a checkpoint's random state is a key and a count.

Several devices (``gpus >= 2``, or ``devices``): one process, a ``data`` mesh
axis over them, the parameters replicated and the training step a
``jax.shard_map`` in which each replica takes its contiguous rows of the
window and the gradients are summed with ``psum`` before the clip. A batch
that does not split evenly is split as ``replicas.replica_rows`` says, each
replica's share padded to the largest with rows that count for nothing; the
carried states are then a :class:`PaddedStates`. Evaluation runs on the same
mesh, replicated.

LSTMs: on GPUs the models run cuDNN's (``models/cudnn_lstm.py``), elsewhere a
``lax.scan`` (``use_cudnn``: ``models/recurrence.py``). On cuDNN every new
training-step program is checked, before it first runs, to hold the cuDNN
custom calls, forward and backward, of every layer and chunk, and before that
the engine checks once that the kernel computes the scan's LSTM
(``recurrence.assert_cudnn_agrees``).
"""

import contextlib
import importlib.util
import logging
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from mosbench.engines.interface import AdaptiveCarry, Engine, check_arrays
from mosbench.engines.jax import input_pipeline, steps
from mosbench.engines.jax.averaging import IterateAverage
from mosbench.engines.jax.compiled import Compiled, CompileLedger
from mosbench.engines.jax.models import build_model
from mosbench.engines.jax.models.cudnn_lstm import assert_cudnn_lstm
from mosbench.engines.jax.models.recurrence import assert_cudnn_agrees, choose_cudnn
from mosbench.engines.jax.runtime import configure, placement
from mosbench.engines.replicas import replica_rows
from mosbench.errors import MosbenchError
from mosbench.workload import training_spec

MIB = 2**20
# The CUDA plugins jaxlib may load (jax._src.lib tries them in this order).
CUDA_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jaxlib.cuda")

log = logging.getLogger(__name__)


def _host(array):
    """A NumPy copy (never a view of a device buffer)."""
    return np.array(array, copy=True)


def _cuda_versions():
    """``(CUDA runtime, cuDNN)`` versions the CUDA plugin loaded; None for any it cannot give.

    From ``jax._src.lib.cuda_versions``, a private module (None where jaxlib
    has no CUDA plugin): JAX has no public API for either that leaves the
    backend unstarted, as :meth:`JaxEngine.versions` must
    (``benchmarks/gpu_check.py`` asks in a process that must hold no GPU
    memory). The public one, the GPU client's ``platform_version``
    (``"cuda 12080"``), starts the backend, gives the CUDA the plugin was built
    against rather than the one loaded, and no cuDNN; ``jax.print_environment_info``
    names neither. If a JAX release moves the module, both are None and, where
    a CUDA plugin is installed, the log says so: a job does not fail for want
    of a provenance entry.
    """
    try:
        from jax._src.lib import cuda_versions
    except ImportError:
        if any(importlib.util.find_spec(name) for name in CUDA_PLUGINS):
            log.warning("this JAX has no jax._src.lib.cuda_versions: the CUDA and cuDNN "
                        "versions are not recorded")
        return None, None
    cuda = cudnn = None
    if cuda_versions is not None:
        with contextlib.suppress(Exception):
            cuda = cuda_versions.cuda_runtime_get_version()
        with contextlib.suppress(Exception):
            cudnn = cuda_versions.cudnn_get_version()
    return cuda, cudnn


class PaddedStates:
    """The carried states of an uneven data-parallel batch: each replica's rows padded.

    ``states`` in the padded layout; ``slots`` the padded row of each real row.
    Pass it on to the next :meth:`JaxEngine.train_step`, or to
    :meth:`JaxEngine.state_arrays`, which gives the real rows.
    """

    __slots__ = ("states", "slots")

    def __init__(self, states, slots):
        self.states, self.slots = states, slots


class JaxEngine(Engine):
    """JAX's side of a job: a model description, its parameter dict and compiled steps."""

    framework = "jax"

    def __init__(self, *, gpus=0, threads=None, precision="float32", deterministic=False,
                 seed=0, devices=None, bptt_bucket=None, compilation_cache=None,
                 use_cudnn="auto"):
        """``bptt_bucket``, ``compilation_cache``: config key ``engines.jax`` (the schema
        says what each does); by default exact window lengths, and each job compiles.
        ``use_cudnn``: the LSTM layer, not a config key (``models/recurrence.py``)."""
        self.compute = configure(threads=threads, precision=precision,
                                 deterministic=deterministic, compilation_cache=compilation_cache)
        self.devices = placement(gpus, devices)
        self.device = self.devices[0]
        self.cudnn = choose_cudnn(use_cudnn, self.device.platform)
        if self.cudnn:  # before any job's time is spent on a kernel that parts from the scan
            assert_cudnn_agrees(self.device)
        log.info("JAX LSTM layers: %s", "cuDNN (jax.experimental.rnn.lstm)" if self.cudnn
                 else "lax.scan")
        if len(self.devices) > 1:
            self.mesh = Mesh(np.array(self.devices), ("data",))
            self.replicated = NamedSharding(self.mesh, P())
            self.rows = NamedSharding(self.mesh, P("data"))
        else:
            self.mesh, self.replicated = None, SingleDeviceSharding(self.device)
        root = jax.random.PRNGKey(seed)
        self.init_key = jax.random.fold_in(root, 0)
        self.mask_root = jax.random.fold_in(root, 1)
        self.draws = 0  # training-mode forwards so far: the next one's mask key
        self.compiles = CompileLedger()
        self.model = self.params = self.average = None
        self.input_s = 0.0
        # Training windows padded to a multiple of this many steps, the padding masked: one
        # program per bucket instead of one per length (benchmarks/jax_bptt.py, design.md)
        self.bucket = bptt_bucket

    @classmethod
    def framework_versions(cls):
        cuda, cudnn = _cuda_versions()
        return {"framework_version": jax.__version__, "cuda": cuda, "cudnn": cudnn,
                "libraries": {"jaxlib": jaxlib.__version__, "optax": optax.__version__}}

    def compile_statistics(self):
        return self.compiles.as_dict(), None

    def _compiled(self, name, make, *key, check=None):
        """``make()`` jitted, shared with every engine of this model and ``key``."""
        return Compiled(name, (self.model, self.compute, self.mesh, *key), make, self.compiles,
                        check)

    # --- the model -------------------------------------------------------------------------

    def build(self, model_name, vocab_size, hparams):
        self.model = build_model(model_name, vocab_size, hparams, cudnn=self.cudnn)
        self.shapes = self.model.shapes
        with jax.default_device(self.device):
            self.params = jax.device_put(self.model.init(self.init_key), self.replicated)
        model, compute = self.model, self.compute
        self._eval = self._compiled("eval_window", lambda: steps.eval_window(model, compute))
        self._log_probs = self._compiled("log_probs", lambda: steps.log_probs(model, compute))
        self._predict = self._compiled("predict_next", lambda: steps.predict(model, compute))
        self._gradient = self._compiled("gradient",
                                        lambda: steps.window_gradient(model, compute))
        self._adapt = self._compiled("adaptive_update",
                                     lambda: steps.adaptive_update(model, compute))
        self._train = None

    @property
    def n_params(self):
        return sum(int(np.prod(s)) for s in self.shapes.values())

    def weights(self):
        return {name: _host(self.params[name]) for name in self.shapes}

    def _arrays(self, arrays, what):
        check_arrays(arrays, self.shapes, what)
        return {n: jax.device_put(np.asarray(arrays[n], np.float32), self.replicated)
                for n in self.shapes}

    def load_weights(self, arrays):
        self.params = self._arrays(arrays, "the weights")

    # --- training ----------------------------------------------------------------------------

    def prepare_training(self, hparams, batch_size):
        replicas = len(self.devices)
        spans = replica_rows(batch_size, replicas)  # refuses fewer rows than devices
        local = max(end - first for first, end in spans)
        self.slots = None if batch_size % replicas == 0 else np.concatenate(
            [r * local + np.arange(end - first) for r, (first, end) in enumerate(spans)])
        self.batch_size = batch_size
        spec = training_spec(hparams, batch_size)
        step, self._chunks = steps.train_step(self.model, spec, batch_size, self.compute,
                                              replicas)
        if replicas > 1:  # params, states, x, y, lr, mask_root, draw, length, row weights
            rows = P("data")
            step = jax.shard_map(step, mesh=self.mesh,
                                 in_specs=(P(), rows, rows, rows, P(), P(), P(), P(), rows),
                                 out_specs=(P(), rows, P()))
        self._train = self._compiled("train_step", lambda: step, spec, batch_size,
                                     check=self._cudnn_check if self.cudnn else None)
        self.average = IterateAverage(self.params)

    def _cudnn_check(self, program):
        """The cuDNN calls of a training-step program: each chunk runs every layer once,
        forward and backward. MosbenchError if fewer (the scan was traced instead)."""
        layers = sum(name.endswith(".w_ih") for name in self.shapes)
        return assert_cudnn_lstm(program.as_text(), layers * self._chunks, gradient=True)

    def cudnn_calls(self):
        """The custom-call counts of every training-step program compiled so far, each
        checked to run cuDNN's LSTM (MosbenchError otherwise): what proves a GPU job's
        LSTMs ran cuDNN, as the PyTorch engine's ``assert_fused_lstm``."""
        if not self.cudnn:
            raise MosbenchError(f"this engine's LSTMs run a lax.scan, not cuDNN (devices: "
                                f"{self.device.platform}; use_cudnn chose the scan)")
        if self._train is None or not self._train.programs:
            raise MosbenchError("no training step compiled yet: run train_step() first")
        return [self._cudnn_check(program) for program in self._train.programs.values()]

    def initial_state(self, batch_size):
        return jax.device_put(self.model.initial_state(batch_size), self.replicated)

    def _tokens(self, array):
        return jax.device_put(np.asarray(array, np.int32), self.replicated)

    def train_step(self, inputs, targets, states, lr, average):
        if self._train is None:
            raise MosbenchError("train_step() needs prepare_training() first")
        if inputs.shape[0] != self.batch_size:
            raise MosbenchError(f"a window of {inputs.shape[0]} rows, but training was prepared "
                                f"for batches of {self.batch_size}")
        start = time.perf_counter()
        length = None
        if self.bucket:
            length = inputs.shape[1]
            shape = (inputs.shape[0], -(-length // self.bucket) * self.bucket)
            inputs, targets = (np.pad(a, ((0, 0), (0, shape[1] - length)))
                               for a in (inputs, targets))
            length = np.int32(length)
        weights = None
        if self.slots is not None:  # an uneven batch: every replica's share padded alike
            inputs, targets = self._spread(inputs), self._spread(targets)
            weights = self._spread(np.ones(self.batch_size, np.float32))
            states = states.states if isinstance(states, PaddedStates) else [
                tuple(self._spread(_host(s)) for s in layer) for layer in states]
        x, y = self._tokens(inputs), self._tokens(targets)
        if self.mesh is not None:  # each replica's rows where it runs: one program per shape
            x, y, states, weights = jax.device_put((x, y, states, weights), self.rows)
        self.input_s += time.perf_counter() - start
        self.params, states, nll = self._train(self.params, states, x, y, np.float32(lr),
                                               self.mask_root, np.uint32(self.draws), length,
                                               weights)
        if self.slots is not None:
            states = PaddedStates(states, self.slots)
        self.draws += self._chunks
        if average:
            self.average.update(self.params)
        return float(nll), states  # the step's one wait for the device

    def _spread(self, array):
        """``(batch, ...)`` rows into the padded layout of an uneven batch (zeros between)."""
        padded = np.zeros((len(self.devices) * (-(-self.batch_size // len(self.devices))),
                           *array.shape[1:]), array.dtype)
        padded[self.slots] = array
        return padded

    def _averaging(self):
        if self.average is None:
            raise MosbenchError("the iterate average exists after prepare_training()")
        return self.average

    def start_average(self):
        self._averaging().restart(self.params)

    @contextlib.contextmanager
    def averaged(self):
        average = self._averaging()
        iterates, self.params = self.params, average.average
        try:
            yield
        finally:
            self.params = iterates

    def checkpoint_arrays(self):
        average = self._averaging()
        arrays = {f"model/{n}": a for n, a in self.weights().items()}
        arrays.update({f"average/{n}": _host(average.average[n]) for n in self.shapes})
        arrays["average/count"] = np.asarray(average.count, np.int64)
        arrays["rng/mask_root"] = _host(self.mask_root)
        arrays["rng/draws"] = np.asarray(self.draws, np.int64)
        return arrays

    def restore_checkpoint(self, arrays):
        model, stored, rng = self.checkpoint_parts(arrays, "model/", "average/", "rng/")
        self.params = self._arrays(model, "the checkpoint's weights")
        count = int(stored.pop("count"))
        self.average.restart(self._arrays(stored, "the checkpoint's average"))
        self.average.count = count
        self.mask_root = jnp.asarray(np.asarray(rng["mask_root"], np.uint32))
        self.draws = int(rng["draws"])

    def state_arrays(self, states):
        if isinstance(states, PaddedStates):
            return [_host(s)[states.slots] for layer in states.states for s in layer]
        return [_host(s) for layer in states for s in layer]

    def states_from_arrays(self, arrays):
        put = [jax.device_put(np.asarray(a, np.float32), self.replicated) for a in arrays]
        return [(put[i], put[i + 1]) for i in range(0, len(put), 2)]

    # --- evaluation --------------------------------------------------------------------------

    def _full(self, states):
        """The states of the real rows, whatever layout training left them in."""
        if isinstance(states, PaddedStates):
            return self.states_from_arrays(self.state_arrays(states))
        return states

    def eval_window(self, inputs, targets, states):
        total, states = self._eval(self.params, self._tokens(inputs), self._tokens(targets),
                                   self._full(states))
        return float(total), states

    def predict_next(self, token, states):
        word, states = self._predict(self.params, self._tokens([[token]]), self._full(states))
        return int(word), states

    def log_prob_rows(self, inputs, states):
        log_probs, states = self._log_probs(self.params, self._tokens(inputs),
                                            self._full(states))
        rows = np.asarray(log_probs, np.float64)
        return rows.reshape(-1, rows.shape[-1]), states

    def gradient_statistics(self, windows, batch_size):
        # float64 sums on the host: JAX computes in float32 unless x64 is on process-wide
        squares = {n: np.zeros(s) for n, s in self.shapes.items()}
        states = self.initial_state(batch_size)
        for inputs, targets in windows:
            _, grads, states = self._gradient(self.params, self._tokens(inputs),
                                              self._tokens(targets), states)
            for name, g in grads.items():
                squares[name] += np.square(np.asarray(g, np.float64))
        return [np.sqrt(squares[n]) for n in self.shapes]

    def adaptive_losses(self, windows, statistics, rates, *, lr, lamb, epsilon, carry=None):
        carry = AdaptiveCarry() if carry is None else carry
        if not carry.cache:  # the pass's first chunk: its constants, on the device once
            if carry.trained is None:
                carry.trained = self.weights()

            def constant(values):
                return self._arrays(dict(zip(self.shapes, values, strict=True)),
                                    "dynamic evaluation's arrays")

            carry.cache.update(
                decay=constant([lamb * np.asarray(r) for r in rates]),
                scale=constant([lr / (np.asarray(s) + epsilon) for s in statistics]),
                trained=self._arrays(carry.trained, "the trained weights"))
        decay, scale, trained = (carry.cache[k] for k in ("decay", "scale", "trained"))
        states = None if carry.states is None else self.states_from_arrays(carry.states)
        params, losses = self.params, []
        for inputs, targets in windows:
            if states is None:
                states = self.initial_state(inputs.shape[0])
            loss, params, states = self._adapt(params, trained, decay, scale,
                                               self._tokens(inputs), self._tokens(targets),
                                               states)
            losses.append(loss)  # scored before the weights see these targets
        self.params = params
        if states is not None:
            carry.states = self.state_arrays(states)
        return [float(loss) for loss in losses]

    # --- measurement -------------------------------------------------------------------------

    def input_pipelines(self, train_path, batch_size, bptt, cache_file):
        return input_pipeline.input_pipelines(train_path, batch_size, bptt, cache_file)

    def input_seconds(self):
        return self.input_s, None

    def allocator_peak_mb(self):
        if self.device.platform == "cpu":  # as the other engines: the figure is a GPU's
            return None, "gpus=0: a CPU job"
        stats = [d.memory_stats() for d in self.devices]
        if not all(s and "peak_bytes_in_use" in s for s in stats):
            return None, f"JAX's {self.device.platform} device keeps no allocator statistics"
        return sum(s["peak_bytes_in_use"] for s in stats) / MIB, None


ENGINE = JaxEngine
