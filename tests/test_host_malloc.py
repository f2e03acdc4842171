"""`malloc=reuse|system` (partial_relevance.host_malloc): a bad value is a one-line config error,
`system` changes nothing, and on glibc `reuse` makes freed tensor memory come back to the next
allocation instead of being unmapped (checked in a child process: the setting is per process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from partial_relevance.cli import ConfigError
from partial_relevance.host_malloc import is_glibc, set_malloc

# Allocate and free 16 tensors of 64 MiB, touching every page, then count the page faults of
# the last 8: fresh mmaps fault each page in again, heap memory is reused without faults.
_CHILD = """
import resource, sys, torch
from partial_relevance.host_malloc import set_malloc
print(set_malloc(sys.argv[1]))
def touch():
    t = torch.empty(16 * 2**20)  # 64 MiB, above glibc's largest mmap threshold
    t.fill_(1.0)
    del t
for _ in range(8):
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
t = torch.ones(64 * 2**20)  # 256 MiB
held = resident()
del t
print(held - resident())  # bytes given back to the system by the free
"""


def _faults(mode: str) -> tuple[str, int, int]:
    """(set_malloc's answer, page faults of the last 8 allocations, bytes a free gave back)."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1]), int(out[2])


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="malloc must be one of"):
        set_malloc("jemalloc")


def test_system_changes_nothing() -> None:
    assert set_malloc("system") is False


@pytest.mark.skipif(not is_glibc(), reason="malloc=reuse sets glibc's allocator")
def test_reuse_serves_freed_tensor_memory_again_without_page_faults() -> None:
    """...and keeps a freed block resident (also at the heap's top, which glibc would trim)."""
    changed, reuse_faults, reuse_returned = _faults("reuse")
    unchanged, system_faults, system_returned = _faults("system")
    assert (changed, unchanged) == ("True", "False")
    pages = 8 * 64 * 2**20 // 4096  # what 8 fresh 64 MiB mappings fault in
    assert system_faults > pages // 2  # each mapping faulted in again
    assert reuse_faults < pages // 20  # the heap's pages reused
    assert system_returned > 200 * 2**20  # the 256 MiB mapping unmapped at once
    assert reuse_returned < 16 * 2**20  # kept for the next allocation
