"""Related stories and more-like-this, from article vectors (the embedding of an article's headline and lead as one
input, indexer/build.py ``lead_input``).

No text is re-embedded: the vectors were stored at build time. An article's exact duplicates (the same headline and
paragraphs under another id, or a vector closer than the duplicate threshold) are never offered as "related", and
copies of one story are listed once.

Related stories under search results rank by cosine: they should be the same event's coverage. "More like this"
(``SearchService.similar``) ranks by shared neighbours (``search/news/neighbours.py``), which keeps a borderline article
among its own subject's articles.

Above ``graph_from`` articles, related stories are not found by scanning every article vector: an article's
candidates are the articles of its shared-neighbour profile (its ``NeighbourConfig.k`` nearest by the fused dense and
tf-idf similarity, kept up to date by every write), re-ranked by exact cosine. A search pages ten or so articles and
each scan reads every article vector (8-14 ms a page at 26,671 articles on one core, growing with the archive);
the profile's candidates cost the same at any size. What it keeps of the exact top list is measured by
``bench/archive.py`` (``related_recall``); an article the graph lacks, a graph older than the store, a filter, or
candidates that run out (all copies of one story) fall back to the exact scan.

An article's neighbours do not depend on the query, and the same popular articles fill many result pages, so they
are cached per process until the store's generation changes (any write, by this process or another).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np

from search.arrays import sorted_lookup
from search.news.neighbours import MIN_ARTICLES, NeighbourGraph
from search.storage.store import ReadStore
from search.vectors.base import VectorStore

GroupOf = Callable[[Sequence[int]], Mapping[int, Hashable]]  # article keys -> duplicate group of each


class RelatedFinder:
    def __init__(
        self,
        store: ReadStore,
        articles: VectorStore,
        duplicate_threshold: float,
        cache_size: int = 16384,
        groups: GroupOf | None = None,
        graph: Callable[[], NeighbourGraph | None] | None = None,
        graph_from: int | None = None,
        generation: Callable[[], int] | None = None,
    ) -> None:
        """``groups`` maps article keys to their duplicate group (articles of one group are listed once, and never
        for each other); without it, exact copies are recognised by their stored content hashes. ``graph`` gives
        the index's current shared-neighbour graph (it is replaced on every write); from ``graph_from`` articles in
        it (None: never) related stories are re-ranked from its profiles instead of scanned. ``generation`` gives
        the generation the article vectors reflect (default: the store's): the cache is keyed by it, and a store
        another process committed to since is ahead of them until they follow it (search/storage/changes.py), so
        answers computed from the vectors must not be kept under the store's newer generation."""
        self._store = store
        self._served: Callable[[], int] = generation or store.generation
        self._groups: GroupOf = groups or store.content_hashes
        self._graph: Callable[[], NeighbourGraph | None] = graph or (lambda: None)
        self._articles = articles
        self._threshold = duplicate_threshold
        self._graph_from = graph_from
        self._cache: OrderedDict[tuple[int, int, bool], list[tuple[int, float]]] = OrderedDict()
        self._cache_size = cache_size
        self._generation: tuple[int, int] | None = None  # (store generation, profiles' generation) of the cache
        self._lock = threading.Lock()
        self._live_ids: tuple[int, np.ndarray] | None = None  # (generation, sorted article keys): ``_live``

    def _live(self) -> np.ndarray:
        """The article keys the vectors hold, sorted, made once per generation served: what profiles older than
        the store are checked against on every page of a process that follows another's writes."""
        generation, cached = self._served(), self._live_ids
        if cached is None or cached[0] != generation:
            cached = (generation, np.sort(self._articles.ids()))
            self._live_ids = cached
        return cached[1]

    def vectors(self, aids: list[int]) -> np.ndarray:
        """Article vectors from the FAISS copy in memory; from SQLite if FAISS lags the store."""
        try:
            return self._articles.reconstruct_batch(np.asarray(aids, dtype=np.int64))
        except KeyError:
            return np.stack([self._store.article_vector(a) for a in aids])

    def nearest(
        self, aids: list[int], k: int, allowed: np.ndarray | None = None, *, profile: bool = False
    ) -> list[list[tuple[int, float]]]:
        """For each article key, up to ``k`` (article key, score) of other, non-duplicate articles, best first;
        ``allowed`` (sorted keys) limits the candidates (a filter; such answers are not cached). The score is the
        article vectors' cosine, or with ``profile`` the shared-neighbour score of ``search/news/neighbours.py`` (an
        article the graph lacks, or a list the graph cannot fill, falls back to, or is topped up by, cosine; a corpus
        too small for profiles, ``profiles_apply``, is ranked by cosine)."""
        if not aids or k <= 0 or (allowed is not None and not len(allowed)):
            return [[] for _ in aids]
        profile = profile and self.profiles_apply()
        search = self._profile_search if profile else self._search
        if allowed is not None:
            return search(aids, k, allowed)
        graph = self._graph()
        generation = (self._served(), graph.generation if graph is not None else -1)
        with self._lock:
            if generation != self._generation:
                self._cache.clear()
                self._generation = generation
            known = {a: self._cache[(a, k, profile)] for a in aids if (a, k, profile) in self._cache}
            for a in known:
                self._cache.move_to_end((a, k, profile))
        todo = list(dict.fromkeys(a for a in aids if a not in known))
        if todo:
            known.update(zip(todo, search(todo, k), strict=True))
            with self._lock:
                if generation == self._generation:
                    for a in todo:
                        self._cache[(a, k, profile)] = known[a]
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        return [list(known[a]) for a in aids]

    def profiles_apply(self) -> bool:
        """Whether shared-neighbour profiles rank more like this: the index has them and holds at least
        ``MIN_ARTICLES`` articles (below that, profiles are measured to do worse than cosine)."""
        graph = self._graph()
        return graph is not None and len(graph.keys) >= MIN_ARTICLES

    def _search(self, aids: list[int], k: int, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        graph = self._graph() if allowed is None and self._graph_from is not None else None
        if graph is not None and len(graph.keys) >= (self._graph_from or 0):
            return self.from_profiles(aids, k)
        return self.scan(aids, k, allowed)

    def from_profiles(self, aids: list[int], k: int) -> list[list[tuple[int, float]]]:
        """Each article's profile neighbours (``NeighbourGraph.neighbours``) ranked by exact cosine, copies skipped
        as ``scan`` skips them; ``scan`` for an article the graph lacks or cannot fill. Profiles older than the
        store (saved before writes this process followed from another, or between a write and its save) still
        answer for the articles they hold, without the neighbours deleted since: a process serving beside a writer
        would otherwise scan every article vector for every page until it next wrote or reopened (24 ms a page at
        26,671 articles); what they miss is the articles written since, until the profiles are saved and read
        again (``SearchService.refresh``)."""
        graph = self._graph()
        if graph is None:
            return self.scan(aids, k)
        lists = {a: graph.neighbours(a) for a in dict.fromkeys(aids) if a in graph}
        if graph.generation != self._served() and lists:
            live = self._live()
            lists = {a: keys[sorted_lookup(live, keys)[1]] for a, keys in lists.items()}
        pooled = np.unique(np.concatenate([*lists.values(), np.asarray(aids, dtype=np.int64)]))
        try:
            table = _Rows(pooled, self._articles.reconstruct_batch(pooled))
        except KeyError:  # FAISS lags the store: the scan reads SQLite
            return self.scan(aids, k)
        hashes = self._groups(aids)
        out: dict[int, list[tuple[int, float]]] = {}
        for aid, keys in lists.items():
            vector = table[aid]
            scores = table.of(keys) @ vector
            order = np.lexsort((keys, -scores))
            found = list(zip(keys[order].tolist(), scores[order].astype(float).tolist(), strict=True))
            fetch = k + 8  # as the scan: most lists fill from the first few, copies of one story skipped
            while True:
                picked = self._pick(aid, hashes.get(aid), vector, found[:fetch], k, table)
                if len(picked) == k or fetch >= len(found):
                    break
                fetch *= 4
            if len(picked) == k:
                out[aid] = picked
        rest = [a for a in dict.fromkeys(aids) if a not in out]
        if rest:
            out.update(zip(rest, self.scan(rest, k), strict=True))
        return [list(out[a]) for a in aids]

    def scan(self, aids: list[int], k: int, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """Every article vector (or every ``allowed`` one) searched for each article's nearest."""
        vecs = self.vectors(aids)
        hashes = self._groups(aids)
        total = self._articles.count() if allowed is None else len(allowed)
        fetch = k + 8
        while True:
            scores, ids = self._articles.search(vecs, fetch, allowed=allowed)
            out: list[list[tuple[int, float]]] = []
            short = False
            for row, aid in enumerate(aids):
                found = [(int(o), float(s)) for s, o in zip(scores[row], ids[row], strict=True) if o >= 0]
                picked = self._pick(aid, hashes.get(aid), vecs[row], found, k)
                short = short or (len(picked) < k and ids[row][-1] >= 0)
                out.append(picked)
            if not short or fetch >= total:
                return out
            fetch = min(total, fetch * 4)

    def _profile_search(
        self, aids: list[int], k: int, allowed: np.ndarray | None = None
    ) -> list[list[tuple[int, float]]]:
        graph = self._graph()
        vecs = self.vectors(aids)
        hashes = self._groups(aids)
        out: list[list[tuple[int, float]]] = []
        for row, aid in enumerate(aids):
            keys, scores = (
                graph.rank(aid, allowed) if graph is not None and aid in graph else (np.zeros(0), np.zeros(0))
            )
            if graph is not None and graph.generation != self._served() and len(keys):
                live = sorted_lookup(self._live(), keys)[1]  # profiles from before a write: skip what it deleted
                keys, scores = keys[live], scores[live]
            if not len(keys):  # not in the graph, or shares no neighbour (a tiny corpus has no profiles): cosine
                out.append(self._search([aid], k, allowed)[0])
                continue
            picked: list[tuple[int, float]] = []
            fetch = k + 8
            while True:
                found = list(zip(keys[:fetch].tolist(), scores[:fetch].tolist(), strict=True))
                picked = self._pick(aid, hashes.get(aid), vecs[row], found, k)
                if len(picked) == k or fetch >= len(keys):
                    break
                fetch *= 4
            if len(picked) < k:  # too few articles share a neighbour with it (a tight filter): cosine fills up,
                have = set(keys.tolist())  # scored 0, below every article that shares one
                extra = [(a, 0.0) for a, _ in self._search([aid], k + len(picked), allowed)[0] if a not in have]
                picked = self._pick(aid, hashes.get(aid), vecs[row], picked + extra, k)
            out.append(picked)
        return out

    def _pick(
        self,
        aid: int,
        group: Hashable,
        vector: np.ndarray,
        found: list[tuple[int, float]],
        k: int,
        known: Mapping[int, np.ndarray] | None = None,
    ) -> list[tuple[int, float]]:
        """The first ``k`` of ``found`` (other article, score), best first, that are neither the article, nor a copy
        of it (its duplicate group, or a cosine at the duplicate threshold), nor a copy of one already picked.
        ``known``: vectors already read (else they are read here)."""
        candidates = [o for o, _ in found if o != aid]
        cand_groups = self._groups(candidates)
        if known is not None:
            cand_vecs = {o: known[o] for o in candidates}
        else:
            cand_vecs = dict(zip(candidates, self.vectors(candidates), strict=True)) if candidates else {}
        picked: list[tuple[int, float]] = []
        seen = {group}
        picked_vecs: list[np.ndarray] = []
        for other, score in found:
            if other == aid or cand_groups.get(other) in seen:
                continue
            vec = cand_vecs[other]
            if float(vec @ vector) >= self._threshold:
                continue  # the same text under another id
            if any(float(vec @ v) >= self._threshold for v in picked_vecs):
                continue  # a copy of a story already listed: one entry per story
            seen.add(cand_groups.get(other))
            picked_vecs.append(vec)
            picked.append((other, score))
            if len(picked) == k:
                break
        return picked


class _Rows(Mapping[int, np.ndarray]):
    """Vectors of sorted keys, looked up by key without a dict of every row (a page reads ~1,600 and uses a few)."""

    def __init__(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self._keys = keys
        self._vectors = vectors

    def of(self, keys: np.ndarray) -> np.ndarray:
        return np.asarray(self._vectors[np.searchsorted(self._keys, keys)])

    def __getitem__(self, key: int) -> np.ndarray:
        i = int(np.searchsorted(self._keys, key))
        if i >= len(self._keys) or int(self._keys[i]) != key:
            raise KeyError(key)
        return np.asarray(self._vectors[i])

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys.tolist())

    def __len__(self) -> int:
        return len(self._keys)
