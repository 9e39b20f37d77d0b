"""Keep the memory of one request for the next.

Ranking 10,000 candidates allocates some 20 MB of arrays and frees them at the end. glibc
gives such large blocks back to the kernel (mmap above a threshold that adapts up to
32 MB, heap trimming above twice that), so the next request takes thousands of page faults
to get the same memory again: in a virtual machine, more time than the ranking itself.
Raising both thresholds once at start keeps the memory in the process (its resident size
stays at the peak of one request).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3


def retain_freed_memory(megabytes: int) -> bool:
    """Blocks up to `megabytes` come from (and return to) the process heap, and up to
    4 x `megabytes` of free heap is kept. 0, or a C library without mallopt: no change."""
    if megabytes <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("no mallopt in this C library: freed memory goes back to the system")
        return False
    size = megabytes << 20
    ok = mallopt(M_MMAP_THRESHOLD, size) == 1 and mallopt(M_TRIM_THRESHOLD, 4 * size) == 1
    if not ok:
        log.warning("mallopt refused the thresholds", extra={"megabytes": megabytes})
    return ok
