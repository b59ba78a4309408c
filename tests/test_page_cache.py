"""A file dropped from the page cache is read cold, and the job can tell whether it was."""

import os
import sys

import pytest

from mosbench.measurement import page_cache


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore through libc: Linux")
def test_a_read_file_is_cached_and_a_dropped_one_is_not(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    path.read_bytes()
    cached, pages = page_cache.cached_pages(path)
    assert pages == -(-path.stat().st_size // os.sysconf("SC_PAGE_SIZE"))
    assert cached == pages  # just written and read: warm
    got = page_cache.drop([path])
    assert got["page_cache"].startswith("posix_fadvise(POSIX_FADV_DONTNEED); ")
    if "kept them" in got["page_cache"]:  # tmpfs: the cache is the file's storage
        assert got["cached_pct"] > 0
    else:
        assert got["cached_pct"] == 0 and got["page_cache"].endswith("(cold)")
        assert page_cache.cached_pages(path)[0] == 0
    path.read_bytes()
    assert page_cache.cached_pages(path)[0] == pages  # the read brought it back
