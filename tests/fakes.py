"""A fast, deterministic stand-in for the model, for tests of index mechanics at a size the real model makes slow.

Texts become hashed bags of words (a fixed random sign and slot per word), so texts sharing words are close and the
"meaning" is fully known to the test; the real model is used wherever behaviour depends on meaning.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np

WORD = re.compile(r"\w+")


class HashEmbedder:
    name = "hash-bag-of-words"

    def __init__(self, dimension: int = 64) -> None:
        self.dimension = dimension

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(self.dimension, dtype=np.float32)
        for word in WORD.findall(text.casefold()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            v[h % self.dimension] += 1.0 if (h >> 32) & 1 else -1.0
        norm = float(np.linalg.norm(v))
        if norm == 0:
            v[0], norm = 1.0, 1.0
        return v / norm

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return np.stack([self._one(t) for t in texts]) if texts else np.zeros((0, self.dimension), np.float32)

    def encode_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        return self.encode(texts), [self.encode([t[a:b] for a, b in sp]) for t, sp in zip(texts, spans, strict=True)]

    def count_tokens(self, text: str) -> int:
        return len(WORD.findall(text))

    def fingerprint(self) -> dict[str, Any]:
        probe = self.encode(["North Korea accuses the United States of building an alliance in Asia."] * 3)
        return {"name": self.name, "dimension": self.dimension, "files_sha256": None, "probe": probe.tolist()}


TOPICS = {
    "grain": "wheat corn harvest export tonnes crop farmers",
    "crude": "oil barrels opec crude refinery prices output",
    "money-fx": "dollar yen currency exchange central bank rates",
    "earn": "profit quarter dividend shares earnings net revenue",
    "ship": "port vessels shipping cargo strike tanker freight",
}
SOURCES = ("Reuters", "AP", "AFP", "UPI")


def wire_articles(n: int = 600, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` dated wire stories: a topic (as category), a source, a date in 1987, words drawn from the topic."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    rows = []
    for i in range(n):
        topic = names[int(rng.integers(len(names)))]
        words = TOPICS[topic].split()
        filler = [f"w{int(x)}" for x in rng.integers(0, 400, size=8)]  # bodies long and distinct: not duplicates
        body = " ".join(rng.choice(words, size=12).tolist() + filler) + f" report number {i}."
        title = " ".join(rng.choice(words, size=4).tolist())
        month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
        rows.append(
            {
                "id": f"wire/{i:04d}",
                "title": title,
                "date": f"1987-{month:02d}-{day:02d}",
                "source": SOURCES[int(rng.integers(len(SOURCES)))],
                "category": topic,
                "paragraphs": [body],
            }
        )
    return rows
