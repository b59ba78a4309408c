"""One process' part of a PyTorch job: its model, optimiser, iterate average and steps.

On one device the engine owns one :class:`Replica`; under data parallelism
every process owns one (rank 0 in the job's process, the others in worker
processes, :mod:`mosbench.engines.pytorch.distributed`) and each trains on its
contiguous share of the global batch's rows. The arithmetic is written once,
here, for both cases.
"""

import contextlib
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mosbench import faults
from mosbench.engines.pytorch.averaging import IterateAverage
from mosbench.engines.pytorch.models import assert_fused_lstm, build_model, masks
from mosbench.engines.pytorch.models.activation_regularisation import (
    activation_penalty,
    temporal_activation_penalty,
)
from mosbench.engines.replicas import replica_rows
from mosbench.workload import training_spec


def replica_seed(seed, rank):
    """Replica ``rank``'s own mask seed: 32 bits (the CPU generator's), mixed from both."""
    return int(np.random.SeedSequence([seed, rank + 1]).generate_state(1)[0])


def mask_seed(seed):
    """The seed of the masks shared by every replica (weight drop; all masks on one device).

    Not ``seed`` itself: ``torch.manual_seed(seed)`` seeds the generator the model is
    initialised from, and on the CPU both are one Mersenne Twister, so masks drawn from
    ``seed`` would repeat the initialisation's numbers (the reference draws its masks
    from where the initialisation left its one generator).
    """
    return replica_seed(seed, -1)


def tokens(array, device):
    """Token ids as an int64 tensor on ``device`` (copied: NumPy windows may be read-only views)."""
    return torch.from_numpy(np.array(array, dtype=np.int64)).to(device, non_blocking=True)


def detached(states):
    """The states cut from the graph that made them (truncated BPTT)."""
    return [(h.detach(), c.detach()) for h, c in states]


def trainable(states):
    """States usable in a graph: tensors made under ``inference_mode`` are copied once."""
    return [tuple(s.clone() if s.is_inference() else s for s in layer) for layer in states]


class ChunkLoss(nn.Module):
    """The minimised loss of one chunk of rows: mean NLL + AR + TAR, weighted by its share.

    A module of its own so that ``DistributedDataParallel`` wraps the whole
    forward pass whose backward it reduces. Returns ``(loss, mean NLL, states)``.
    """

    def __init__(self, model, alpha, beta):
        super().__init__()
        self.model, self.alpha, self.beta = model, alpha, beta

    def forward(self, inputs, targets, states, share):
        nll, states, (raw, dropped) = self.model.nll(inputs, targets, states)
        nll = nll.mean()
        loss = nll
        if self.alpha:
            loss = loss + activation_penalty(dropped, self.alpha)
        if self.beta:
            loss = loss + temporal_activation_penalty(raw, self.beta)
        return loss * share, nll, states


def _sum_gradients(_, bucket):
    """DDP communication hook: the replicas' gradients summed, not averaged.

    Each replica's loss already carries its rows' share of the global batch,
    so the sum is the gradient one process computes on the whole batch.
    """
    future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return future.then(lambda done: done.value()[0])


class Replica:
    """Model, optimiser, average and steps of one process (``rank`` of ``world``)."""

    input_s = 0.0  # seconds its train steps spent making their input tensors

    def __init__(self, device, precision="float32", rank=0, world=1, seed=0):
        self.device = torch.device(device)
        self.seed = seed
        self.mixed = precision == "mixed_bfloat16"
        self.model = self.optimizer = self.average = self.loss = None
        self.held, self.held_key = None, None  # this replica's rows of the carried states
        self.place(rank, world)

    def place(self, rank, world):
        """Become replica ``rank`` of ``world``, with the dropout generators that go with it.

        One generator on one device; with several replicas, a shared one
        (weight drop, the same seed everywhere) and one of the replica's own.
        """
        self.rank, self.world = rank, world
        shared = torch.Generator(self.device)
        shared.manual_seed(mask_seed(self.seed))
        replica = shared
        if world > 1:
            replica = torch.Generator(self.device)
            replica.manual_seed(replica_seed(self.seed, rank))
        self.generators = {"replica": replica, "shared": shared}

    def autocast(self):
        """bfloat16 compute under ``mixed_bfloat16`` (weights and losses stay float32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mixed)

    # --- the model ---------------------------------------------------------------------------

    def build(self, model_name, vocab_size, hparams):
        model = build_model(model_name, vocab_size, hparams).to(self.device)
        if self.device.type == "cuda":
            with self.autocast():
                assert_fused_lstm(model)  # the cuDNN kernel must run, in the compute dtype
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def broadcast_weights(self):
        """Every replica takes rank 0's weights (after rank 0 loaded some)."""
        for tensor in self.model.state_dict().values():
            dist.broadcast(tensor, 0)

    # --- training ----------------------------------------------------------------------------

    def prepare_training(self, hparams, batch_size):
        self.batch_size = batch_size
        self.rows = replica_rows(batch_size, self.world)[self.rank]
        spec = training_spec(hparams, batch_size)
        self.small, self.clip = spec.small_batch_size, spec.clip
        # Coupled L2 in SGD equals Keras' decoupled decay for plain SGD: w - lr * (g + wd * w).
        # Fused: one kernel over every parameter, decay included (CPU and CUDA, float32).
        self.optimizer = torch.optim.SGD(self.params, lr=spec.lr, weight_decay=spec.wdecay,
                                         fused=True)
        if self.rank == 0:  # only rank 0 validates and checkpoints
            self.average = IterateAverage(self.params)
        loss = ChunkLoss(self.model, spec.alpha, spec.beta)
        if self.world > 1:
            # Also broadcasts rank 0's weights: the replicas start equal.
            loss = nn.parallel.DistributedDataParallel(
                loss, device_ids=[self.device] if self.device.type == "cuda" else None,
                forward_sync_buffers=False, gradient_as_bucket_view=True)
            loss.register_comm_hook(None, _sum_gradients)
        self.loss = loss

    def train_step(self, inputs, targets, states, lr, average):
        """This replica's rows of one window: returns the global batch's mean NLL (a tensor).

        ``inputs``, ``targets`` and ``states`` are the replica's rows. Chunks of
        ``small_batch_size`` rows each add their gradient, weighted by their
        share of the global batch; the last chunk's backward sums the gradients
        of every replica (DDP); then the norm of the whole gradient is clipped,
        SGD steps at ``lr``, and with ``average`` the average takes the new weights.
        """
        self.model.train()
        start = time.perf_counter()  # the input: NumPy rows to tensors on the device
        x, y = tokens(inputs, self.device), tokens(targets, self.device)
        self.input_s += time.perf_counter() - start
        self.optimizer.zero_grad(set_to_none=True)
        faults.point(f"replica-{self.rank}-step")  # a replica dies mid-step, the others wait
        with masks.drawn_from(**self.generators):
            total, new_states = self._accumulate(x, y, states)
        if self.world > 1:
            dist.all_reduce(total)  # every replica's rows: the global batch's mean NLL
        if self.clip:
            nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if average and self.average is not None:
            self.average.update()
        return total, detached(new_states)

    def _accumulate(self, x, y, states):
        """Forward and backward over the chunks: the gradient in ``.grad``, the NLL, the states."""
        rows = x.shape[0]
        total, chunks = None, []
        for start in range(0, rows, self.small):
            end = min(start + self.small, rows)
            part = slice(start, end)
            share = (end - start) / self.batch_size
            last = end == rows  # only the last chunk's backward communicates
            with (contextlib.nullcontext() if last or self.world == 1 else self.loss.no_sync()):
                with self.autocast():
                    loss, nll, new_states = self.loss(x[part], y[part],
                                                      [(h[part], c[part]) for h, c in states],
                                                      share)
                loss.backward()
            nll = nll.detach() * share
            total = nll if total is None else total + nll
            chunks.append(new_states)
        if len(chunks) > 1:
            new_states = [tuple(torch.cat([chunk[layer][i] for chunk in chunks])
                                for i in range(2)) for layer in range(len(chunks[0]))]
        return total, new_states

    def train_window(self, inputs, targets, states, lr, average, shared_rng, key):
        """Data parallelism: one step on this replica's rows of a whole window.

        ``states`` is the key of the rows this replica holds (from the previous
        step) or the whole batch's state arrays, of which it takes its rows.
        ``shared_rng`` is rank 0's shared-generator state, so every replica
        draws the same weight-drop masks whatever its number of chunks.
        """
        first, end = self.rows
        if isinstance(states, list):
            states = [(torch.from_numpy(states[i][first:end]).to(self.device),
                       torch.from_numpy(states[i + 1][first:end]).to(self.device))
                      for i in range(0, len(states), 2)]
        elif states != self.held_key:
            raise RuntimeError(f"replica {self.rank} holds the states of step {self.held_key}, "
                               f"not {states}: only the latest states can be carried on")
        else:
            states = self.held
        if self.rank != 0:
            self.generators["shared"].set_state(shared_rng)
        total, self.held = self.train_step(inputs[first:end], targets[first:end], states, lr,
                                           average)
        self.held_key = key
        return total

    def held_state_arrays(self, key):
        """This replica's rows of the carried states, as arrays ``[h0, c0, h1, ...]``."""
        if key != self.held_key:
            raise RuntimeError(f"replica {self.rank} holds the states of step {self.held_key}, "
                               f"not {key}")
        return [s.to("cpu", copy=True).numpy() for layer in self.held for s in layer]

    # --- generators, optimiser state, memory -------------------------------------------------

    def shared_rng(self):
        return self.generators["shared"].get_state()

    def rng_arrays(self):
        """The states of the generators this replica's steps draw from, as uint8 arrays."""
        generators = {"masks": self.generators["shared"]} if self.world == 1 else self.generators
        return {name: g.get_state().numpy() for name, g in generators.items()}

    def restore_rng(self, arrays):
        generators = {"masks": self.generators["shared"]} if self.world == 1 else self.generators
        for name, generator in generators.items():
            generator.set_state(torch.from_numpy(np.array(arrays[name])))

    def optimizer_arrays(self):
        """The optimiser's state tensors by parameter index (none for SGD without momentum)."""
        return {f"{index:03d}/{key}": torch.as_tensor(value).to("cpu", copy=True).numpy()
                for index, state in self.optimizer.state_dict()["state"].items()
                for key, value in state.items()}

    def restore_optimizer(self, arrays):
        state = {}
        for name, value in arrays.items():
            index, key = name.split("/", 1)
            state.setdefault(int(index), {})[key] = torch.from_numpy(np.array(value))
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})

    def peak_memory(self):
        """The caching allocator's peak on this replica's GPU, in bytes."""
        return torch.cuda.max_memory_allocated(self.device)
