"""The training windows through ``torch.utils.data``: streamed, cached in memory, in a file.

PyTorch has no ``Dataset.cache``; its users cache by hand, so the two caches
here are what one would write: a dataset that keeps the windows it produced
(memory), and one that saves the batched streams with ``torch.save`` on its
first pass and memory-maps them after (file). Windows are cut from the
batched streams as views, as in training; a ``DataLoader`` with
``batch_size=None`` hands them on unchanged.
"""

import torch
from torch.utils.data import DataLoader, IterableDataset

from mosbench.data.batching import batchify, read_ids


def _windows(streams, bptt):
    """``batching.windows`` over a ``(batch, steps)`` tensor, as views."""
    steps = streams.shape[1]
    for start in range(0, steps - 1, bptt):
        end = min(start + bptt, steps - 1)
        yield streams[:, start:end], streams[:, start + 1:end + 1]


class StreamedWindows(IterableDataset):
    """Reads and batchifies the Parquet split again on every pass."""

    def __init__(self, path, batch_size, bptt):
        self.path, self.batch_size, self.bptt = path, batch_size, bptt

    def streams(self):
        return torch.from_numpy(batchify(read_ids(self.path), self.batch_size))

    def __iter__(self):
        return _windows(self.streams(), self.bptt)


class MemoryCachedWindows(StreamedWindows):
    """The first pass keeps every window it yields; later passes replay them."""

    def __init__(self, path, batch_size, bptt):
        super().__init__(path, batch_size, bptt)
        self.cache = None

    def __iter__(self):
        if self.cache is not None:
            return iter(self.cache)
        return self._fill()

    def _fill(self):
        kept = []
        for window in super().__iter__():
            kept.append(window)
            yield window
        self.cache = kept


class FileCachedWindows(StreamedWindows):
    """The first pass saves the batched streams to ``cache_file``; later passes map it."""

    def __init__(self, path, batch_size, bptt, cache_file):
        super().__init__(path, batch_size, bptt)
        self.cache_file = cache_file

    def streams(self):
        if self.cache_file.exists():
            return torch.load(self.cache_file, mmap=True)
        streams = super().streams()
        torch.save(streams, self.cache_file)
        return streams


def _one_pass(dataset):
    """Iterate the loader to its end: (input tokens, sum of the target ids)."""
    tokens, checksum = 0, 0
    for inputs, targets in DataLoader(dataset, batch_size=None):
        tokens += inputs.numel()
        checksum += int(targets.sum(dtype=torch.int64))
    return tokens, checksum


def input_pipelines(train_path, batch_size, bptt, cache_file):
    """One whole pass of each pipeline, as ``Engine.input_pipelines`` wants."""
    cache_file = cache_file.with_suffix(".pt")
    datasets = {"stream": StreamedWindows(train_path, batch_size, bptt),
                "cache_memory": MemoryCachedWindows(train_path, batch_size, bptt),
                "cache_file": FileCachedWindows(train_path, batch_size, bptt, cache_file)}
    return {name: (lambda d=dataset: _one_pass(d)) for name, dataset in datasets.items()}
