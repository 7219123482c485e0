"""Related stories and more-like-this, from article vectors (the normalised mean of an article's passages).

No text is re-embedded: the vectors were stored at build time. An article's exact duplicates (the same headline and
paragraphs under another id, or a vector closer than the duplicate threshold) are never offered as "related", and
copies of one story are listed once.

An article's neighbours do not depend on the query, and the same popular articles fill many result pages, so they
are cached per process until the store's generation changes (any write, by this process or another).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from search.store import Store
from search.vectors import VectorStore

GroupOf = Callable[[Sequence[int]], Mapping[int, Hashable]]  # article keys -> duplicate group of each


class RelatedFinder:
    def __init__(
        self,
        store: Store,
        articles: VectorStore,
        duplicate_threshold: float,
        cache_size: int = 16384,
        groups: GroupOf | None = None,
    ) -> None:
        """``groups`` maps article keys to their duplicate group (articles of one group are listed once, and never
        for each other); without it, exact copies are recognised by their stored content hashes."""
        self._store = store
        self._groups: GroupOf = groups or store.content_hashes
        self._articles = articles
        self._threshold = duplicate_threshold
        self._cache: OrderedDict[tuple[int, int], list[tuple[int, float]]] = OrderedDict()
        self._cache_size = cache_size
        self._generation: int | None = None
        self._lock = threading.Lock()

    def vectors(self, aids: list[int]) -> np.ndarray:
        """Article vectors from the FAISS copy in memory; from SQLite if FAISS lags the store."""
        try:
            return self._articles.reconstruct_batch(np.asarray(aids, dtype=np.int64))
        except KeyError:
            return np.stack([self._store.article_vector(a) for a in aids])

    def nearest(self, aids: list[int], k: int, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """For each article key, up to ``k`` (article key, cosine) of other, non-duplicate articles, best first;
        ``allowed`` (sorted keys) limits the candidates (a filter; such answers are not cached)."""
        if not aids or k <= 0:
            return [[] for _ in aids]
        if allowed is not None:
            return self._search(aids, k, allowed)
        generation = self._store.generation()
        with self._lock:
            if generation != self._generation:
                self._cache.clear()
                self._generation = generation
            known = {a: self._cache[(a, k)] for a in aids if (a, k) in self._cache}
            for a in known:
                self._cache.move_to_end((a, k))
        todo = list(dict.fromkeys(a for a in aids if a not in known))
        if todo:
            known.update(zip(todo, self._search(todo, k), strict=True))
            with self._lock:
                if generation == self._generation:
                    for a in todo:
                        self._cache[(a, k)] = known[a]
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        return [list(known[a]) for a in aids]

    def _search(self, aids: list[int], k: int, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        vecs = self.vectors(aids)
        hashes = self._groups(aids)
        total = self._articles.count() if allowed is None else len(allowed)
        fetch = k + 8
        while True:
            scores, ids = self._articles.search(vecs, fetch, allowed=allowed)
            cand_hashes = self._groups([int(i) for i in ids.ravel() if i >= 0])
            found = np.unique(ids[ids >= 0])
            cand_vecs = dict(zip(found.tolist(), self.vectors(found.tolist()), strict=True))
            out: list[list[tuple[int, float]]] = []
            short = False
            for row, aid in enumerate(aids):
                picked: list[tuple[int, float]] = []
                seen = {hashes.get(aid)}
                picked_vecs: list[np.ndarray] = []
                for score, other in zip(scores[row], ids[row], strict=True):
                    other = int(other)
                    if other < 0 or other == aid or score >= self._threshold or cand_hashes.get(other) in seen:
                        continue
                    vec = cand_vecs[other]
                    if any(float(vec @ v) >= self._threshold for v in picked_vecs):
                        continue  # a copy of a story already listed: one entry per story
                    seen.add(cand_hashes.get(other))
                    picked_vecs.append(vec)
                    picked.append((other, float(score)))
                    if len(picked) == k:
                        break
                short = short or (len(picked) < k and ids[row][-1] >= 0)
                out.append(picked)
            if not short or fetch >= total:
                return out
            fetch = min(total, fetch * 4)
