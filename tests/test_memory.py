"""biomatch keeps freed memory: large blocks are reused instead of mmapped and faulted in again."""

import resource
import sys

import numpy as np
import pytest

import biomatch  # noqa: F401  (sets the allocator options at import)
from biomatch.memory import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_large_blocks_are_reused_without_new_page_faults() -> None:
    assert keep_freed_memory()
    block = 64 * 2**20  # over glibc's 32 MB ceiling for the dynamic mmap threshold
    np.ones(block // 8).sum()  # first touch: the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        np.ones(block // 8).sum()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # With mmap each pass would fault in all 16,384 pages again (about 82,000 in all).
    assert faults < 2000, faults
