"""Resident memory by component: what an open index and its model hold in this process, against the process's RSS.

A server's memory is mostly a handful of in-memory parts (the FAISS vectors, the BM25 postings, the article
catalog, the passage owners, the more-like-this profiles, the model); each reports the bytes it holds, and the
process's resident set size (``VmRSS``) less their sum is ``other``: the interpreter, libraries, SQLite's page cache,
allocator slack and request buffers. Figures are what the parts' arrays and Python objects hold (``deep_size``),
or what an engine's own structures add up to (FAISS: search/vectors/faiss.py ``faiss_bytes``), not page-level
accounting: a memory-mapped array counts its full size even where its pages are not resident.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

STATUS = Path("/proc/self/status")


@runtime_checkable
class HoldsMemory(Protocol):
    """A part that knows what it holds (an embedder, a vector store): ``deep_size`` asks it rather than walking it."""

    def memory_bytes(self) -> int: ...


def deep_size(obj: object, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and everything it references: numpy arrays by their buffers (a view counts its base
    once), containers and plain objects by ``sys.getsizeof`` of themselves and their items, a ``HoldsMemory`` part
    by its own account. Each object is counted once, however many references lead to it.

    Modules, classes, functions and objects without attributes (locks, connections, thread-locals) count their
    header alone: a component's figure is its data, not the code or handles it points to."""
    seen = set() if seen is None else seen
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            base = item
            while isinstance(base.base, np.ndarray):
                base = base.base
            if base is not item:
                stack.append(base)
                continue
            total += sys.getsizeof(item) if item.flags.owndata else int(item.nbytes)
            continue
        if isinstance(item, HoldsMemory) and not isinstance(item, type):
            total += int(item.memory_bytes())
            continue
        total += sys.getsizeof(item)
        if isinstance(item, str | bytes | int | float | bool | type) or item is None or callable(item):
            continue
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif hasattr(item, "__dict__") and type(item).__module__ != "builtins":
            stack.append(vars(item))
        for slot in getattr(type(item), "__slots__", ()):
            if hasattr(item, slot):
                stack.append(getattr(item, slot))
    return total


def process_rss() -> int:
    """This process's resident set size in bytes, from ``/proc/self/status`` (``VmRSS``); where there is no
    ``/proc``, the peak resident size ``getrusage`` reports (an upper bound of the current one)."""
    try:
        for line in STATUS.read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def memory_report(components: Mapping[str, int], model: object = None) -> dict[str, int]:
    """``components`` (bytes each, an open index's ``Index.memory()``), ``model`` (what the embedder's
    ``memory_bytes`` says; 0 for one that holds no weights, or none), then ``rss`` and ``other`` (RSS less the
    components' sum, never below 0): the ``memory`` object of ``newsdesk stats --json``, ``/metrics`` and the
    archive benchmark."""
    report = {name: int(value) for name, value in components.items()}
    report["model"] = int(model.memory_bytes()) if isinstance(model, HoldsMemory) else 0
    rss = process_rss()
    report["rss"] = rss
    report["other"] = max(rss - sum(value for name, value in report.items() if name != "rss"), 0)
    return report
