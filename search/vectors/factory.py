"""The vector backends by name, and the functions through which the rest of the product reaches them.

As txtai's ``ANNFactory``: a registry from the manifest's ``store`` (or the ``store`` setting, for a new build) to
the class implementing ``VectorBackend`` (search/vectors/base.py), imported only when an index asks for it, so
an index on FAISS never imports pymilvus. A new backend is one module and one line in search/vectors/registry.py
(or a ``register`` call, as the tests do).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from search.errors import IndexCorrupt, InvalidInput
from search.settings import Settings
from search.storage.manifest import FaissEntry, Manifest
from search.storage.store import Store
from search.vectors.base import IndexVectors, VectorBackend
from search.vectors.faiss import ARTICLE_FACTORY, AUTO, EXACT_FACTORY
from search.vectors.registry import VECTOR_BACKENDS

DEFAULT = "faiss"  # what an index built before backends could be chosen uses (its manifest has no ``store``)
# name -> "module:Class" imported on first use (the built-in ones), or a class given to ``register``
REGISTRY: dict[str, str | type[VectorBackend]] = dict(VECTOR_BACKENDS)
_loaded: dict[str, VectorBackend] = {}


def register(name: str, backend: str | type[VectorBackend]) -> None:
    """Add (or replace) a backend: a ``VectorBackend`` subclass, or ``"module:Class"`` imported when first used."""
    REGISTRY[name] = backend
    _loaded.pop(name, None)


def backend(name: str) -> VectorBackend:
    """The backend registered as ``name``; InvalidInput naming the ones there are otherwise."""
    if name not in _loaded:
        target = REGISTRY.get(name)
        if target is None:
            raise InvalidInput(f"setting store must be one of {', '.join(REGISTRY)}, got {name!r}")
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            loaded = getattr(importlib.import_module(module), attribute)
            if not (isinstance(loaded, type) and issubclass(loaded, VectorBackend)):
                raise TypeError(f"{target} is not a VectorBackend")
            target = loaded
        _loaded[name] = target()
    return _loaded[name]


def pin_threads(threads: int) -> None:
    """Pin the in-process engines' thread pools in the calling thread: the default backend's always (an index may
    open on it later in this thread), and every backend loaded so far."""
    for name in dict.fromkeys([DEFAULT, *_loaded]):
        backend(name).pin_threads(threads)


def store_name(manifest: Manifest) -> str:
    """The backend an index uses, as its manifest names it."""
    return manifest.get("store") or DEFAULT


def backend_of(manifest: Manifest) -> VectorBackend:
    """The backend an index uses; IndexCorrupt for a name this version does not have (an index written by another
    version, or a damaged manifest), rather than opening it as some other backend."""
    name = store_name(manifest)
    if name not in REGISTRY:
        raise IndexCorrupt(
            f"the index keeps its vectors in a {name!r} store, which this newsdesk does not have (it has "
            f"{', '.join(REGISTRY)}); rebuild the index"
        )
    return backend(name)


def faiss_entry(settings: Settings) -> FaissEntry:
    """The manifest's ``faiss`` entry, which every build records whatever its backend (manifests have always had
    it: an index on another backend can be rebuilt onto FAISS files from the same record)."""
    entry: FaissEntry = {
        "factory": settings.faiss_factory,
        "search": settings.faiss_search,
        "metric": "inner_product",
        "articles": ARTICLE_FACTORY,
    }
    if settings.faiss_factory == AUTO:  # the factories follow the counts: the first base written resolves them
        entry["factory"] = EXACT_FACTORY
        entry["auto"] = {
            "threshold": settings.faiss_ann_threshold,
            "ann": settings.faiss_ann_factory,
            "ann_search": settings.faiss_ann_search,
            "probe_share": settings.faiss_ann_probe_share,
            "passages_search": "",
        }
    return entry


def open_vectors(directory: Path, store: Store, manifest: Manifest, *, records: bool = True) -> IndexVectors:
    """The vectors of the index at ``directory``, repaired from ``store`` when stale (see ``VectorBackend.open``)."""
    return backend_of(manifest).open(directory, store, manifest, records=records)


def check_vectors(directory: Path, store: Store, manifest: Manifest) -> list[str]:
    return backend_of(manifest).check(directory, store, manifest)


def vector_change(manifest: Manifest, settings: Settings) -> str | None:
    """Why an incremental re-index with ``settings`` cannot keep the index's vectors (another backend, or one
    configured otherwise), or None."""
    recorded = store_name(manifest)
    if recorded != settings.store:
        return f"the vector store changed ({recorded} to {settings.store})"
    return backend(recorded).incompatibility(manifest, settings)
