"""A first read from a cold page cache, where the OS allows it, and a check that it is cold.

Data loading timed on a warm page cache (the files just written by the
tokenise stage, or read by the previous job) times memory, not storage.
:func:`drop` asks the kernel to forget the files' pages before a timed first
read (``posix_fadvise(POSIX_FADV_DONTNEED)``, after ``fdatasync`` so that no
page is dirty) and then asks the kernel how much of them is still cached
(``mincore(2)`` on a mapping of each file, which reads nothing in). Both are
advice and a question, not orders: the kernel keeps pages another process
maps, and a file on tmpfs lives in the page cache. So the job records what it
got, not what it asked for: ``cached_pct``, the share of the files' pages
still cached when the timed read starts (0: cold), or why that is unknown.
No privilege is needed (``echo 3 > /proc/sys/vm/drop_caches`` would need root
and empty the whole machine's cache).
"""

import ctypes
import ctypes.util
import mmap
import os

_PROT_READ, _MAP_SHARED = 0x1, 0x01  # Linux and the BSDs


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                                 ctypes.POINTER(ctypes.c_ubyte)]
        return libc
    except (OSError, AttributeError, TypeError):
        return None


def cached_pages(path):
    """(pages of ``path`` in the page cache, its pages), or None where the OS cannot say."""
    libc = _libc()
    size = os.path.getsize(path)
    if libc is None or size == 0:
        return None if libc is None else (0, 0)
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vector = (ctypes.c_ubyte * pages)()
            if libc.mincore(address, size, vector) != 0:
                return None
            return sum(byte & 1 for byte in vector), pages
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def drop(paths):
    """Ask the OS to drop ``paths`` from the page cache; say what it did.

    Returns ``{"cached_pct": share of their pages still cached (0-100) or None,
    "page_cache": a line saying what was asked and got}``.
    """
    paths = [os.fspath(p) for p in paths]
    asked = hasattr(os, "posix_fadvise")
    if asked:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)  # dirty pages are not dropped: write them first
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError as exc:
                asked = False
                why = f"posix_fadvise refused on {path} ({exc.strerror})"
            finally:
                os.close(fd)
    else:
        why = "this OS has no posix_fadvise"
    counts = [cached_pages(p) for p in paths]
    if None in counts:
        pct = None
        got = "the OS cannot say how much stayed cached (no mincore)"
    else:
        total = sum(n for _, n in counts)
        pct = 100.0 * sum(c for c, _ in counts) / total if total else 0.0
        got = (f"{pct:.0f} % of their pages still cached" + (" (cold)" if pct == 0 else
               " (the kernel kept them: mapped by another process, or tmpfs)" if asked else ""))
    head = ("posix_fadvise(POSIX_FADV_DONTNEED)" if asked
            else f"not dropped: {why}")
    return {"cached_pct": pct, "page_cache": f"{head}; {got}"}
