"""Related stories and more-like-this, from article vectors (the normalised mean of an article's passages).

No text is re-embedded: the vectors were stored at build time. An article's exact duplicates (the same headline and
paragraphs under another id, or a vector closer than the duplicate threshold) are never offered as "related".
"""

from __future__ import annotations

import numpy as np

from search.store import Store
from search.vectors import VectorStore


class RelatedFinder:
    def __init__(self, store: Store, articles: VectorStore, duplicate_threshold: float) -> None:
        self._store = store
        self._articles = articles
        self._threshold = duplicate_threshold

    def nearest(self, aids: list[int], k: int) -> list[list[tuple[int, float]]]:
        """For each article key, up to ``k`` (article key, cosine) of other, non-duplicate articles, best first."""
        if not aids or k <= 0:
            return [[] for _ in aids]
        vecs = np.stack([self._store.article_vector(a) for a in aids])
        hashes = self._store.content_hashes(aids)
        fetch = k + 8
        while True:
            scores, ids = self._articles.search(vecs, fetch)
            cand_hashes = self._store.content_hashes(int(i) for i in ids.ravel() if i >= 0)
            out: list[list[tuple[int, float]]] = []
            short = False
            for row, aid in enumerate(aids):
                picked: list[tuple[int, float]] = []
                for score, other in zip(scores[row], ids[row], strict=True):
                    other = int(other)
                    if other < 0 or other == aid:
                        continue
                    if cand_hashes.get(other) == hashes.get(aid) or score >= self._threshold:
                        continue
                    picked.append((other, float(score)))
                    if len(picked) == k:
                        break
                short = short or (len(picked) < k and ids[row][-1] >= 0)
                out.append(picked)
            if not short or fetch >= self._articles.count():
                return out
            fetch = min(self._articles.count(), fetch * 4)
