"""The host (CPU) memory allocator of a training process: `malloc` in `conf/host/default.yaml`.

On glibc, an allocation above the mmap threshold (at most 32 MiB) gets fresh pages from the
kernel and returns them on free. A training step allocates and frees its large activations and
gradients every step, so each step faults all of them in again, page by page: on the issue
#19 host that kernel time was ~18 % of a full-model step at batch 128. `reuse` serves every
allocation from the heap instead (`mallopt(M_MMAP_MAX, 0)`) and keeps the heap's freed top
(`M_TRIM_THRESHOLD` 2 GiB), so the next step reuses the pages the last one freed, at the cost
of the heap's fragmentation in peak RSS.
"""

from __future__ import annotations

import ctypes
import logging
import sys

from partial_relevance.cli import ConfigError

log = logging.getLogger(__name__)

MALLOC_MODES = ("system", "reuse")
M_TRIM_THRESHOLD = -1  # glibc <malloc.h>: free bytes at the heap's top that trigger a trim
M_MMAP_MAX = -4  # glibc <malloc.h>: the most chunks served by mmap at once (0: none)
NEVER_TRIM = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top before giving it back


def is_glibc() -> bool:
    """Whether this process runs on the GNU C library (the only one `reuse` knows how to set)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


def set_malloc(mode: str) -> bool:
    """Apply `malloc=<mode>` to this process; returns whether the allocator was changed.

    `system`: the C library's defaults (nothing is changed). `reuse`: glibc serves every
    allocation from its heap, so freed tensor memory is reused by the next step instead of
    unmapped and faulted in again; elsewhere (not glibc) a warning and nothing changed.
    Allocations made before the call keep their pages, and the setting lasts for the process
    (`system` after `reuse` in one process leaves `reuse` in place).
    """
    if mode not in MALLOC_MODES:
        raise ConfigError(
            f"malloc must be one of {MALLOC_MODES}, got {mode!r} (conf/host/default.yaml)"
        )
    if mode == "system":
        return False
    if not is_glibc():
        log.warning("malloc=reuse needs glibc; this C library's allocator is left as it is")
        return False
    libc = ctypes.CDLL(None)
    # Keep the heap's freed top as well: trimmed pages would fault in again next step, and
    # the peak RSS (the heap's high-water mark) is the same either way.
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
