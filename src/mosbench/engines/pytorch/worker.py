"""A data-parallel worker's interpreter: ``python -P -m mosbench.engines.pytorch.worker FD``.

Started by :class:`mosbench.engines.pytorch.distributed.Workers`. ``FD`` is
this process' end of a socket pair rank 0 made; the first message on it
holds rank 0's multiprocessing authkey (torch's shared tensors need it) and
which rank to be, then :func:`~mosbench.engines.pytorch.distributed.serve`
runs the commands. Nothing of the job's own main module runs here.
"""

import faulthandler
import os
import signal
import sys
from multiprocessing import current_process
from multiprocessing.connection import Connection


def main(fd):
    # First, before torch's imports take seconds: rank 0 alone decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A crash in native code (NCCL, CUDA, gloo) leaves this stack in the job's log (fd 2).
    faulthandler.enable()
    os.set_inheritable(fd, False)  # for this worker alone, not for what it starts
    conn = Connection(fd)
    try:
        authkey, args = conn.recv()
    except EOFError:  # rank 0 is gone before it said anything
        sys.exit(1)
    current_process().authkey = authkey
    from mosbench.engines.pytorch.distributed import serve

    rank, world, port, device, settings, parent = args
    serve(rank, world, port, device, settings, conn, parent)


if __name__ == "__main__":
    main(int(sys.argv[1]))
