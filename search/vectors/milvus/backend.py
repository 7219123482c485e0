"""The Milvus backend (``--store milvus``): what search/vectors/factory.py hands out for an index on Milvus.

Passage and article vectors live in two Milvus collections (search/vectors/milvus/vectors.py), with record
collections replicas read (records.py), opened and repaired from SQLite by repair.py, served without an index
directory by replica.py (reached through search/vectors/replicas.py). This module answers the questions asked of
a backend as a whole: what a build records, whether an index can be served by several processes (Milvus Lite: one
at a time), what a re-index must rebuild.
"""

from __future__ import annotations

from pathlib import Path

from search.errors import NewsdeskError
from search.jsontypes import JSONObject
from search.settings import Settings
from search.storage.manifest import Manifest, VectorEntry
from search.storage.store import Store
from search.vectors.base import VECTORS_STATE, VectorBackend
from search.vectors.milvus.client import MilvusConnection
from search.vectors.milvus.config import MilvusConfig, is_lite, same_location
from search.vectors.milvus.repair import MilvusVectors, check_collections, drop_collections, open_collections


class MilvusBackend(VectorBackend):
    name = "milvus"

    def entry(self, settings: Settings, target: Path, dimension: int) -> VectorEntry:
        """The ``milvus`` entry: URI, fresh collection names, schema, index type and search parameters."""
        config = MilvusConfig.from_settings(settings, target.name)
        if not is_lite(config.uri):
            MilvusConnection(config.uri, target.parent).close()  # an unreachable server fails now, not after embedding
        return {"store": self.name, "milvus": config.manifest_entry(dimension)}

    def open(self, directory: Path, store: Store, manifest: Manifest, *, records: bool = True) -> MilvusVectors:
        return open_collections(directory, store, manifest, directory / VECTORS_STATE, records=records)

    def check(self, directory: Path, store: Store, manifest: Manifest) -> list[str]:
        return check_collections(directory, store, manifest, directory / VECTORS_STATE)

    def describe(self, manifest: Manifest) -> JSONObject:
        return {"backend": self.name, **manifest.get("milvus", {})}

    def summary(self, stats: JSONObject) -> str:
        store = stats["store"]
        index = store.get("index", {}).get("passages", {})
        params = ",".join(f"{k}={v}" for k, v in (index.get("params") or {}).items())
        search = ",".join(f"{k}={v}" for k, v in (store.get("search_params") or {}).items())
        names = ", ".join((store.get("collections") or {}).values())
        return (
            f"{store.get('uri')}  (passages {index.get('type')}{' ' + params if params else ''}, search "
            f"{search or 'defaults'}, IP; collections {names})"
        )

    def incompatibility(self, manifest: Manifest, settings: Settings) -> str | None:
        """Another Milvus, index type or build parameters: the collections cannot stay."""
        wanted = MilvusConfig.from_settings(settings)
        try:
            recorded = MilvusConfig.from_manifest(manifest.get("milvus") or {})
        except NewsdeskError:
            return "the manifest's Milvus entry is unreadable"
        if not same_location(recorded.uri, wanted.uri):
            return f"the Milvus URI changed ({recorded.uri} to {wanted.uri})"
        if (recorded.index_type, recorded.index_params) != (wanted.index_type, wanted.index_params):
            return "the Milvus index changed"
        return None

    def serving_problem(self, manifest: Manifest, processes: int) -> str | None:
        uri = str(manifest.get("milvus", {}).get("uri", ""))
        if processes > 1 and is_lite(uri):
            return (
                f"keeps its vectors in Milvus Lite ({uri}), which one process at a time may open; serve it with "
                "--processes 1, or rebuild it on a Milvus server (--milvus-uri http://HOST:19530)"
            )
        return None

    def drop_replaced(self, manifest: Manifest, target: Path) -> None:
        entry = manifest.get("milvus")
        if isinstance(entry, dict):
            drop_collections(entry, target)
