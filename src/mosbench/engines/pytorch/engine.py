"""The PyTorch engine (:class:`mosbench.engines.interface.Engine`).

PyTorch models (``models/``), one process' steps (``replica.py``: chunked
gradient accumulation, clipping, SGD, the iterate average of
``averaging.py``), data parallelism with ``DistributedDataParallel`` over
processes the engine starts itself (``distributed.py``). Arrays cross the
interface as NumPy; states stay tensors on the device between steps.

Several devices (``gpus >= 2``, or ``devices``): the workers start at
:meth:`PyTorchEngine.prepare_training`, so a job that only evaluates stays one
process; evaluation always runs in rank 0, the job's process. The carried
training states are then an opaque :class:`ShardedStates` (each replica holds
its own rows); :meth:`~PyTorchEngine.state_arrays` gathers them and
:meth:`~PyTorchEngine.close` (or the engine's finaliser, at the latest when
the interpreter exits) stops the workers.
"""

import re
import weakref

import numpy as np
import torch

from mosbench.engines.interface import AdaptiveCarry, Engine, canonical_weights, check_arrays
from mosbench.engines.pytorch import input_pipeline
from mosbench.engines.pytorch.distributed import WorkerError, Workers
from mosbench.engines.pytorch.replica import Replica, detached, tokens, trainable
from mosbench.engines.pytorch.runtime import configure, placement
from mosbench.engines.replicas import replica_rows
from mosbench.errors import MosbenchError
from mosbench.workload import weight_shapes

MIB = 2**20

# PyTorch parameter name -> canonical name (mosbench.workload); the layouts are the same.
_RENAMES = (
    (r"embedding\.weight", "embedding"),
    (r"rnns\.(\d+)\.weight_ih", r"rnn.\1.w_ih"),
    (r"rnns\.(\d+)\.weight_hh(?:_raw)?", r"rnn.\1.w_hh"),  # weight drop's raw W_hh
    (r"rnns\.(\d+)\.bias_(ih|hh)", r"rnn.\1.b_\2"),
    (r"rnns\.(\d+)\.bias", r"rnn.\1.b"),
    (r"(?:head\.)?decoder_bias", "decoder.b"),
    (r"decoder\.weight", "decoder.w"),
    (r"head\.contexts\.(prior|latent)\.weight", r"\1.w"),
    (r"head\.contexts\.latent\.bias", "latent.b"),
)


def canonical_name(name):
    """The canonical name of a model parameter (``name`` itself when no rule matches)."""
    for pattern, replacement in _RENAMES:
        if re.fullmatch(pattern, name):
            return re.sub(f"^{pattern}$", replacement, name)
    return name


def canonical_parts(model):
    """``{canonical name: (parameter, False)}`` of a PyTorch model: its layouts are canonical."""
    return {canonical_name(name): (p, False) for name, p in model.named_parameters()}


def _host(tensor):
    """A NumPy copy of ``tensor`` (never a view the next step would change)."""
    return tensor.detach().to("cpu", copy=True).numpy()


def _tensor(array):
    """``array`` as a CPU tensor (copied when NumPy marks it read-only)."""
    array = np.asarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


class ShardedStates:
    """The carried states of a data-parallel step: every replica holds its own rows.

    Rank 0 keeps only the step's key; pass it on to the next
    :meth:`PyTorchEngine.train_step`, or to :meth:`PyTorchEngine.state_arrays`.
    """

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key


class PyTorchEngine(Engine):
    """PyTorch's side of a job: one :class:`Replica` here, the others in worker processes.

    Also a context manager; :meth:`close` stops the workers of a data-parallel job.
    """

    framework = "pytorch"

    def __init__(self, *, gpus=0, threads=None, precision="float32", deterministic=False,
                 seed=0, devices=None):
        self.devices = placement(gpus, devices)
        self.settings = {"threads": threads, "precision": precision,
                         "deterministic": deterministic, "seed": seed}
        configure(device=self.devices[0], **self.settings)
        self.replica = Replica(self.devices[0], precision, seed=seed)
        self.device = self.replica.device
        self.model = None
        self.workers = None
        self._finalizer = None
        self._step = 0  # the key of the latest data-parallel states

    @classmethod
    def framework_versions(cls):
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return {"framework_version": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": cudnn, "libraries": {}}

    # --- data parallelism ----------------------------------------------------------------

    def _everywhere(self, name, *args, reply=False, each=None, settle=None):
        """Run a replica method in every process (rank 0 here); with ``reply``, every result.

        ``each`` gives each worker its own arguments instead of ``args``;
        ``settle`` turns rank 0's result into a host value (on a GPU, the wait
        for the command's collectives).
        """
        self.workers.send(name, each or [args] * (self.workers.world - 1), reply)
        try:
            mine = getattr(self.replica, name)(*args)
            if settle is not None:
                mine = settle(mine)
            results = [mine, *self.workers.receive()] if reply else mine
        except WorkerError:
            raise
        except Exception:  # a collective broke: a dead worker is the cause, say which
            failure = self.workers.failure()
            if failure:
                raise failure from None
            raise
        # An NCCL collective that the death of a worker aborted returns, with garbage: raise
        self.workers.check()
        return results

    def compile_statistics(self):
        return None, "PyTorch runs eagerly: the engine compiles nothing"

    def close(self):
        """Stop the worker processes, if any (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()
        self.workers = self._finalizer = None

    # --- the model -------------------------------------------------------------------------

    def build(self, model_name, vocab_size, hparams):
        self.replica.build(model_name, vocab_size, hparams)
        self.model = self.replica.model
        self._canonical = canonical_weights(
            canonical_parts(self.model), self.replica.params,
            weight_shapes(model_name, vocab_size, hparams), lambda p: p.shape,
            f"the PyTorch model '{model_name}'")
        self._params = [w.variable for w in self._canonical]  # canonical order
        self._build_args = (model_name, vocab_size, hparams)

    @property
    def n_params(self):
        return sum(p.numel() for p in self.replica.params)

    def weights(self):
        return {w.name: _host(w.variable) for w in self._canonical}

    def _load(self, arrays, what="the weights"):
        check_arrays(arrays, {w.name: w.shape for w in self._canonical}, what)
        with torch.no_grad():
            for w in self._canonical:
                w.variable.copy_(_tensor(arrays[w.name]))

    def load_weights(self, arrays):
        self._load(arrays)
        if self.workers:
            self._everywhere("broadcast_weights")

    # --- training ----------------------------------------------------------------------------

    def prepare_training(self, hparams, batch_size):
        world = len(self.devices)
        replica_rows(batch_size, world)  # refuses a batch too small, before any worker waits
        self.batch_size = batch_size
        if world > 1 and self.workers is None:
            self.workers = Workers(self.devices, self.settings)
            self._finalizer = weakref.finalize(self, self.workers.close)
            self.workers.send("build", [self._build_args] * (world - 1), True)
            self.workers.receive()
            self.replica.place(0, world)
        if self.workers:
            self._everywhere("prepare_training", hparams, batch_size, reply=True)
        else:
            self.replica.prepare_training(hparams, batch_size)

    def initial_state(self, batch_size):
        return self.model.initial_state(batch_size)

    def train_step(self, inputs, targets, states, lr, average):
        if inputs.shape[0] != self.batch_size:
            raise MosbenchError(f"a window of {inputs.shape[0]} rows, but training was prepared "
                                f"for batches of {self.batch_size}")
        if not self.workers:
            nll, states = self.replica.train_step(inputs, targets, trainable(states), lr, average)
            return nll.item(), states  # the step's one wait for the device
        if isinstance(states, ShardedStates) and states.key != self._step:
            raise MosbenchError(f"the states of step {states.key} were passed, but the replicas "
                                f"hold those of step {self._step}: only the latest carry on")
        carried = states.key if isinstance(states, ShardedStates) else self.state_arrays(states)
        self._step += 1
        nll = self._everywhere("train_window", inputs, targets, carried, lr, average,
                               self.replica.shared_rng(), self._step, settle=torch.Tensor.item)
        return nll, ShardedStates(self._step)

    def _average(self):
        if self.replica.average is None:
            raise MosbenchError("the iterate average exists after prepare_training()")
        return self.replica.average

    def start_average(self):
        self._average().restart()

    def averaged(self):
        return self._average().swapped_in()

    def _rng_arrays(self):
        ranks = self._everywhere("rng_arrays", reply=True) if self.workers \
            else [self.replica.rng_arrays()]
        return {f"rng/{rank}/{name}": array for rank, arrays in enumerate(ranks)
                for name, array in arrays.items()}

    def checkpoint_arrays(self):
        average = self._average()
        arrays = {f"model/{name}": array for name, array in self.weights().items()}
        arrays.update({f"optimizer/{name}": array
                       for name, array in self.replica.optimizer_arrays().items()})
        arrays.update({f"average/{w.name}": _host(average.averages[w.index])
                       for w in self._canonical})
        arrays["average/count"] = np.asarray(average.count, np.int64)
        arrays.update(self._rng_arrays())
        return arrays

    def restore_checkpoint(self, arrays):
        model, stored, optimizer, *rngs = self.checkpoint_parts(
            arrays, "model/", "average/", "optimizer/",
            *(f"rng/{rank}/" for rank in range(len(self.devices))))
        self._load(model, "the checkpoint's weights")
        average = self._average()
        with torch.no_grad():
            for w in self._canonical:
                average.averages[w.index].copy_(_tensor(stored[w.name]))
        average.count = int(stored["count"])
        if self.workers:
            self._everywhere("broadcast_weights")
            self._everywhere("restore_optimizer", optimizer, reply=True)
            self._everywhere("restore_rng", rngs[0], reply=True,
                             each=[(r,) for r in rngs[1:]])
        else:
            self.replica.restore_optimizer(optimizer)
            self.replica.restore_rng(rngs[0])

    def state_arrays(self, states):
        if isinstance(states, ShardedStates):
            parts = self._everywhere("held_state_arrays", states.key, reply=True)
            return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
        return [_host(s) for layer in states for s in layer]

    def states_from_arrays(self, arrays):
        return [(_tensor(arrays[i]).to(self.device), _tensor(arrays[i + 1]).to(self.device))
                for i in range(0, len(arrays), 2)]

    # --- evaluation (rank 0) -----------------------------------------------------------------

    def _full(self, states):
        """Whole-batch states on rank 0, gathered if the replicas hold them."""
        if isinstance(states, ShardedStates):
            return self.states_from_arrays(self.state_arrays(states))
        return states

    def _ids(self, array):
        return tokens(array, self.device)

    def eval_window(self, inputs, targets, states):
        self.model.eval()
        with torch.inference_mode(), self.replica.autocast():
            nll, states, _ = self.model.nll(self._ids(inputs), self._ids(targets),
                                            self._full(states))
            total = nll.sum()
        return total.item(), states

    def predict_next(self, token, states):
        self.model.eval()
        with torch.inference_mode(), self.replica.autocast():
            log_probs, states, _ = self.model(self._ids([[token]]), self._full(states))
            word = log_probs[0, -1].argmax()
        return int(word.item()), states

    def log_prob_rows(self, inputs, states):
        self.model.eval()
        with torch.inference_mode(), self.replica.autocast():
            log_probs, states, _ = self.model(self._ids(inputs), self._full(states))
            rows = log_probs.reshape(-1, log_probs.shape[-1])  # batch-major, as (B, T, V)
        return rows.to("cpu", torch.float64).numpy(), states

    def _gradient(self, inputs, targets, states):
        """A window's mean NLL without dropout, its gradient, and the detached states."""
        self.model.eval()
        with self.replica.autocast():
            nll, states, _ = self.model.nll(self._ids(inputs), self._ids(targets), states)
            loss = nll.mean()
        grads = torch.autograd.grad(loss, self._params)
        return loss.detach(), grads, detached(states)

    def gradient_statistics(self, windows, batch_size):
        params = self._params
        squares = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        states = self.model.initial_state(batch_size)
        for inputs, targets in windows:
            _, grads, states = self._gradient(inputs, targets, states)
            grads = [g.double() for g in grads]
            torch._foreach_addcmul_(squares, grads, grads)
        return [_host(s.sqrt_()) for s in squares]

    def adaptive_losses(self, windows, statistics, rates, *, lr, lamb, epsilon, carry=None):
        params = self._params
        carry = AdaptiveCarry() if carry is None else carry
        if not carry.cache:  # the pass's first chunk: its constants, on the device once

            def constant(values):
                return [torch.as_tensor(v, dtype=p.dtype, device=p.device)
                        for v, p in zip(values, params, strict=True)]

            if carry.trained is None:
                carry.trained = self.weights()
            carry.cache.update(
                decay=constant([lamb * np.asarray(r) for r in rates]),
                scale=constant([lr / (np.asarray(s) + epsilon) for s in statistics]),
                trained=constant([carry.trained[w.name] for w in self._canonical]))
        decay, scale, trained = (carry.cache[k] for k in ("decay", "scale", "trained"))
        losses = []
        states = None if carry.states is None else self.states_from_arrays(carry.states)
        for inputs, targets in windows:
            if states is None:
                states = self.model.initial_state(inputs.shape[0])
            loss, grads, states = self._gradient(inputs, targets, states)
            losses.append(loss)  # scored before the weights see these targets
            with torch.no_grad():  # w += lamb * rate * (w_trained - w) - lr * g / (ms + eps)
                step = torch._foreach_sub(trained, params)
                torch._foreach_mul_(step, decay)
                torch._foreach_addcmul_(step, scale, grads, value=-1.0)
                torch._foreach_add_(params, step)
        if states is not None:
            carry.states = self.state_arrays(states)
        return torch.stack(losses).tolist() if losses else []

    # --- measurement -------------------------------------------------------------------------

    def input_pipelines(self, train_path, batch_size, bptt, cache_file):
        return input_pipeline.input_pipelines(train_path, batch_size, bptt, cache_file)

    def input_seconds(self):
        if self.workers:
            return None, ("data-parallel: the worker processes make their own input tensors, "
                          "not timed")
        return self.replica.input_s, None

    def allocator_peak_mb(self):
        if self.device.type != "cuda":
            return None, "gpus=0: a CPU job"  # PyTorch's CPU allocator keeps no peak either
        peaks = self._everywhere("peak_memory", reply=True) if self.workers \
            else [self.replica.peak_memory()]
        return sum(peaks) / MIB, None


ENGINE = PyTorchEngine
