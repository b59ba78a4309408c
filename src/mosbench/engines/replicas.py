"""How a global batch is shared between data-parallel replicas (every engine's rule)."""

import itertools

from mosbench.errors import MosbenchError


def replica_rows(batch_size, replicas):
    """Each replica's ``(first, end)`` rows: contiguous, sizes differing by at most one.

    Like ``torch.nn.DataParallel``, which the reference used on several GPUs,
    an uneven batch is split unevenly rather than refused (balanced here: 12
    rows on 8 devices are 2,2,2,2,1,1,1,1, not DataParallel's 6 chunks of 2).
    """
    if batch_size < replicas:
        raise MosbenchError(f"batch_size {batch_size} is smaller than the {replicas} devices "
                            "it would be split over: some would get no rows")
    base, extra = divmod(batch_size, replicas)
    sizes = [base + (r < extra) for r in range(replicas)]
    ends = list(itertools.accumulate(sizes))
    return [(end - size, end) for size, end in zip(sizes, ends, strict=True)]
