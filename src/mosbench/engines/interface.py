"""What an engine provides: the framework-specific half of a job, and nothing more.

The procedure (training loop, NT-ASGD schedule, checkpoints, evaluation,
measurements, tracking) drives an :class:`Engine` through these methods and
never touches a framework tensor: windows go in as NumPy int32 arrays
``(batch, time)``, losses come out as Python floats, and everything that is
saved crosses as named NumPy arrays. The carried LSTM state is opaque to the
procedure (whatever the engine's steps take and return) except when it is
checkpointed (:meth:`Engine.state_arrays`), as in a training checkpoint or a
paused dynamic-evaluation pass (:class:`AdaptiveCarry`).

An engine is one job's: it is constructed with the job's placement, builds
one model, and keeps its compiled steps, optimiser and iterate average.
"""

import abc
import contextlib

import numpy as np

from mosbench.errors import MosbenchError


def check_arrays(arrays, shapes, what):
    """Raise a MosbenchError naming every missing, unexpected and mis-shaped array.

    ``shapes``: ``{name: shape}`` of what fits; ``what`` names the arrays in the message.
    """
    missing = [n for n in shapes if n not in arrays]
    unexpected = [n for n in arrays if n not in shapes]
    misshaped = [f"{n} has shape {tuple(np.shape(arrays[n]))}, expected {tuple(shape)}"
                 for n, shape in shapes.items()
                 if n in arrays and tuple(np.shape(arrays[n])) != tuple(shape)]
    problems = [f"{kind} {', '.join(names)}" for kind, names in
                (("missing", missing), ("unexpected", unexpected)) if names] + misshaped
    if problems:
        raise MosbenchError(f"{what} do not fit this model: " + "; ".join(problems))


class CanonicalWeight:
    """One trainable weight of an engine's model under its canonical name.

    ``variable``: the framework's own tensor; ``transposed``: it holds the
    canonical array transposed (a Keras kernel is ``(in, out)``); ``index``:
    its position among the model's trainable weights (gradients come in that order);
    ``shape``: the canonical shape.
    """

    __slots__ = ("name", "variable", "transposed", "index", "shape")

    def __init__(self, name, variable, transposed, index, shape):
        self.name, self.variable, self.transposed, self.index = name, variable, transposed, index
        self.shape = tuple(shape)

    def to_canonical(self, array):
        """The framework-layout ``array`` of this weight in the canonical layout."""
        return np.ascontiguousarray(array.T) if self.transposed else array

    def from_canonical(self, array):
        """A canonical ``array`` of this weight in the framework's layout."""
        array = np.asarray(array)
        return np.ascontiguousarray(array.T) if self.transposed else array


def canonical_weights(parts, trainable, shapes, shape_of, what):
    """An engine's trainable weights as :class:`CanonicalWeight`, in the canonical order.

    ``parts``: ``{canonical name: (variable, transposed)}``, the engine's
    naming of its model; ``trainable``: the model's trainable weights in
    the framework's order; ``shapes``: :func:`mosbench.workload.weight_shapes`
    of the model. Raises unless the naming covers the spec and every trainable
    weight exactly once, each of the spec's shape: a weight left out or
    named twice would otherwise be saved and loaded by nothing.
    """
    positions = {id(v): i for i, v in enumerate(trainable)}
    problems = [f"missing {n}" for n in shapes if n not in parts]
    problems += [f"unexpected {n}" for n in parts if n not in shapes]
    indices = [positions.get(id(variable)) for variable, _ in parts.values()]
    if None in indices or sorted(indices) != list(range(len(trainable))):
        problems.append("the names do not cover every trainable weight exactly once")
    weights = []
    for name in shapes:
        if name not in parts:
            continue
        variable, transposed = parts[name]
        shape = tuple(shape_of(variable))
        if (shape[::-1] if transposed else shape) != tuple(shapes[name]):
            problems.append(f"{name} is {shape} (transposed: {transposed}), "
                            f"canonical {tuple(shapes[name])}")
        weights.append(CanonicalWeight(name, variable, transposed, positions.get(id(variable)),
                                       shapes[name]))
    if problems:
        raise RuntimeError(f"{what} does not have the canonical weights of "
                           f"mosbench.workload: " + "; ".join(problems))
    return weights


class AdaptiveCarry:
    """What one dynamic-evaluation pass carries from a chunk of windows to the next.

    The pass can then stop after any window and go on later, in this process
    or, from these arrays saved, in another (:mod:`mosbench.evaluation.resume`).
    ``trained``: the weights the updates decay towards, as
    :meth:`Engine.weights` names them (the engine takes its current weights
    at the first chunk when None); ``states``: the LSTM states carried into
    the next window, as :meth:`Engine.state_arrays` gives them (None: zero
    states, before the first window). ``cache`` holds what the engine builds
    once per pass (device copies of the constants, a compiled update).
    """

    def __init__(self, trained=None, states=None):
        self.trained = trained
        self.states = states
        self.cache = {}


class Engine(abc.ABC):
    """One framework's side of a job.

    Args (keyword only):
        gpus: GPUs the job uses (0: the CPU); training is data-parallel over them.
        threads: CPU threads for the framework's pools (None: its default).
        precision: the preset's ``matmul_precision`` (``float32``, ``tf32``,
            ``mixed_bfloat16``), applied before any model is built.
        deterministic: deterministic kernels (bit-identical resumes on the CPU).
        seed: seeds every random generator the engine uses (dropout masks).
        devices: explicit device names to spread over instead of the GPUs
            (tests use logical CPU devices or CPU processes).
    """

    framework = ""

    @classmethod
    def versions(cls):
        """What the study records of the framework, the same keys for every engine.

        ``{"framework", "framework_version", "cuda", "cudnn", "libraries"}``:
        CUDA and cuDNN as the framework reports them (None where it has none),
        ``libraries`` the companion libraries' ``{name: version}`` (Keras).
        Versions are strings.
        """
        found = cls.framework_versions()
        if set(found) != {"framework_version", "cuda", "cudnn", "libraries"}:
            raise RuntimeError(f"{cls.__name__}.framework_versions() gave {sorted(found)}")

        def text(value):
            return None if value in (None, "") else str(value)

        return {"framework": cls.framework, "framework_version": text(found["framework_version"]),
                "cuda": text(found["cuda"]), "cudnn": text(found["cudnn"]),
                "libraries": {name: text(v) for name, v in sorted(found["libraries"].items())}}

    @classmethod
    @abc.abstractmethod
    def framework_versions(cls):
        """``{"framework_version", "cuda", "cudnn", "libraries": {name: version}}`` of this
        engine's framework (see :meth:`versions`; None where absent)."""

    # --- the model -------------------------------------------------------------------------

    @abc.abstractmethod
    def build(self, model_name, vocab_size, hparams):
        """Build and initialise the named model from its preset, on the job's first device."""

    @property
    @abc.abstractmethod
    def n_params(self):
        """Trainable parameters (the reference's count)."""

    @abc.abstractmethod
    def weights(self):
        """The model's weights as ``{name: array}`` (the best-weights file).

        The canonical names, shapes and order of
        :func:`mosbench.workload.weight_shapes`, whatever the framework: any
        engine loads any other's.
        """

    @abc.abstractmethod
    def load_weights(self, arrays):
        """Load canonical weights (:meth:`weights`); a MosbenchError names any mismatch."""

    # --- training ----------------------------------------------------------------------------

    @abc.abstractmethod
    def prepare_training(self, hparams, batch_size):
        """Optimiser (SGD with the preset's weight decay), iterate average, compiled steps.

        ``batch_size`` is global: with several devices each takes a contiguous
        share of its rows (``mosbench.engines.replicas.replica_rows``).
        """

    @abc.abstractmethod
    def initial_state(self, batch_size):
        """Zero LSTM states for ``batch_size`` streams."""

    @abc.abstractmethod
    def train_step(self, inputs, targets, states, lr, average):
        """One window: forward, backward, clip, SGD at ``lr``; returns ``(mean_nll, states)``.

        The loss minimised is the mean NLL plus AR/TAR where the preset has
        them; gradients are accumulated over ``small_batch_size`` chunks and
        all-reduced over the devices before being clipped by their global
        norm, so N devices make the update one device makes. With ``average``
        the new weights are folded into the iterate average. The returned
        NLL is fetched, so the step has finished when this returns.
        """

    @abc.abstractmethod
    def start_average(self):
        """Restart the iterate average from the current weights (NT-ASGD's switch)."""

    @abc.abstractmethod
    def averaged(self):
        """A context manager within which the model holds the averaged weights."""

    @abc.abstractmethod
    def checkpoint_arrays(self):
        """Everything a bit-identical resume needs, as ``{name: array}``.

        Model, optimiser, iterate average and its count, and the state of
        every random generator the steps draw from.
        """

    @abc.abstractmethod
    def restore_checkpoint(self, arrays):
        """Load :meth:`checkpoint_arrays`' arrays (after :meth:`prepare_training`).

        Engines check them first with :meth:`checkpoint_parts` (or
        :meth:`check_checkpoint`): a checkpoint of another model is refused
        whole, before anything is loaded.
        """

    def checkpoint_shapes(self):
        """``{name: shape}`` of :meth:`checkpoint_arrays`: what :meth:`restore_checkpoint` takes.

        Read off the arrays by default; an engine that knows the shapes without
        copying its state to the host gives them here instead.
        """
        return {name: np.shape(array) for name, array in self.checkpoint_arrays().items()}

    def check_checkpoint(self, arrays):
        """Raise a MosbenchError naming every missing, unexpected and mis-shaped array of a
        checkpoint's ``arrays``, against this engine's own (:meth:`checkpoint_shapes`)."""
        check_arrays(arrays, self.checkpoint_shapes(), "the checkpoint's arrays")

    def checkpoint_parts(self, arrays, *prefixes):
        """A checkpoint's ``arrays``, checked (:meth:`check_checkpoint`), split by name prefix.

        One ``{name after the prefix: array}`` per prefix, in their order:
        ``checkpoint_parts(arrays, "model/", "average/")`` gives the model's
        weights and their average, each under the canonical names.
        """
        self.check_checkpoint(arrays)
        return tuple({name[len(prefix):]: array for name, array in arrays.items()
                      if name.startswith(prefix)} for prefix in prefixes)

    @abc.abstractmethod
    def state_arrays(self, states):
        """The carried states as a list of arrays (for a mid-epoch checkpoint)."""

    @abc.abstractmethod
    def states_from_arrays(self, arrays):
        """The inverse of :meth:`state_arrays`."""

    # --- evaluation --------------------------------------------------------------------------

    @abc.abstractmethod
    def eval_window(self, inputs, targets, states):
        """Summed NLL of one window without dropout, and the states to carry on."""

    @abc.abstractmethod
    def predict_next(self, token, states):
        """The most likely next word after ``token`` (batch 1), and the states; waits for it."""

    @abc.abstractmethod
    def log_prob_rows(self, inputs, states):
        """``(batch * time, vocab)`` float64 log-probabilities of a window, and the states."""

    @abc.abstractmethod
    def gradient_statistics(self, windows, batch_size):
        """Dynamic evaluation's statistics: per weight, sqrt of the summed squared gradients.

        ``windows`` yields ``(inputs, targets)`` at ``batch_size``; each
        window's gradient is that of its mean NLL without dropout, the state
        carried. Returns float64 arrays in :meth:`weights`' order and shapes (canonical).
        """

    @abc.abstractmethod
    def adaptive_losses(self, windows, statistics, rates, *, lr, lamb, epsilon, carry=None):
        """Dynamic evaluation's pass; returns each window's mean NLL, scored before its update.

        After each window: ``w += lamb * rate * (w_trained - w) - lr * g / (ms + epsilon)``,
        ``ms`` the statistics and ``rates`` the capped decay rates
        (:func:`mosbench.evaluation.dynamic_eval.decay_rates`), both canonical
        (as :meth:`gradient_statistics` returns them). Leaves the
        weights adapted (the caller restores them).

        ``carry`` (an :class:`AdaptiveCarry`) runs one pass in chunks of
        windows, each call taking the next chunk with the same statistics and
        settings: the call reads the trained weights and carried states from it
        and leaves there the states after its last window. Without it the
        call is a whole pass: the current weights are the trained ones and
        the states start at zero.
        """

    # --- measurement -------------------------------------------------------------------------

    @abc.abstractmethod
    def input_pipelines(self, train_path, batch_size, bptt, cache_file):
        """The framework's input pipelines of the training windows, one pass each.

        ``{"stream", "cache_memory", "cache_file"}`` -> a function that runs
        one whole pass over the windows of the Parquet split at ``train_path``
        (``batching.windows`` of ``batchify(ids, batch_size)``, in order) and
        returns ``(input tokens, sum of the target ids)``. ``stream`` reads
        the file on every pass; the cached ones fill their cache (in memory,
        in ``cache_file``) on the first pass and read it after, the way that
        framework's users cache a dataset.
        """

    @abc.abstractmethod
    def allocator_peak_mb(self):
        """``(peak, reason)``: the framework allocator's device peak (MiB, summed over the
        job's GPUs), or ``(None, why it is absent)``."""

    def input_seconds(self):
        """``(seconds, None)``: the time :meth:`train_step` has spent on its input since the
        engine was made (the NumPy window to the framework's tensors on the device, the
        framework's own input path), or ``(None, why it is not timed)``."""
        return None, f"the {self.framework} engine does not time its input"

    def compile_statistics(self):
        """``(figures, None)``: ``{"compiles", "compile_s"}``, the programs the engine compiled
        since it was made and their seconds. A figure the engine cannot give is None and the
        second item says why; ``(None, why)`` when it gives neither. A training job records
        them in train.json's measurements, summed over its launches."""
        return None, f"the {self.framework} engine does not count its compiles"

    # --- helpers shared by every engine -----------------------------------------------------

    def close(self):  # noqa: B027 - optional: most engines start nothing to release
        """Release what the engine started (data-parallel worker processes); idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def weights_restored(self):
        """Within the block the weights may change; the ones before it come back after."""
        saved = self.weights()
        try:
            yield
        finally:
            self.load_weights(saved)
