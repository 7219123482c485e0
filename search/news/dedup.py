"""Near-duplicate detection: which articles are copies of one another, and which copy stands for the group.

News arrives as many copies of one text: the same wire story re-published under other ids, lightly rewritten
versions (a paragraph cut, a few words changed, a paragraph of local background added), and reworded headlines
over the same body. Search should show one of them. This module decides, per pair of articles, whether they are
duplicates, groups the pairs transitively, and names a ``canonical_id`` per group: the group's earliest-dated
article (ties: the lexicographically smallest id). It is pure (numpy and the standard library, no index, no
model) so the indexer and the query side can both use it and the tests can check every rule in isolation.

How a pair is decided (``DedupConfig`` holds the numbers; the module constants are the measured defaults):

1. *Exact*: the same normalised body (NFKC, casefold, punctuation and symbols removed, whitespace collapsed),
   compared by a 128-bit blake2b key. The headline is not part of the key, so a re-publication under a new
   headline is still an exact copy. Bodies shorter than ``SHORT_BODY_WORDS`` words carry the normalised headline
   in the key too: a one-line body ("Advertisement", "By Staff Reporter") says nothing about which story it is.
2. *Body*: MinHash signatures over word shingles estimate the Jaccard similarity of two bodies; LSH banding finds
   the candidate pairs without comparing every pair; a candidate is a duplicate when the estimated Jaccard reaches
   ``BODY_JACCARD``, or when the smaller body is at least ``MIN_SIZE_RATIO`` of the larger one (in shingles) and
   the estimated containment (shared shingles over the smaller set, derived from the Jaccard estimate and the two
   set sizes) reaches ``BODY_CONTAINMENT``. Containment is what survives paragraph drops and additions: a copy cut
   to half its paragraphs has Jaccard 0.5 with the original but containment 1. The size floor stops a short text
   that happens to sit inside long ones (a boilerplate footer, a quoted statement) from pulling them into one
   group. Short bodies take no part (too few shingles for a meaningful estimate).
3. *Headline*: headline vectors (unit-normalised embeddings) with cosine at least ``HEADLINE_COSINE`` make a pair
   only with more evidence, because two different stories often have near-identical headlines ("Shares fall in
   Tokyo" every other day): either the bodies share some text (estimated Jaccard at least
   ``HEADLINE_BODY_JACCARD``, well below the body rule's bar: the headline is the extra evidence; unrelated bodies
   share none), or both bodies are short (headline-only records, where the headline is all there is). And when
   both are dated, they are no more than ``HEADLINE_DAYS`` apart: reworded headlines of one event appear
   together, while a recurring headline on another day is another event (copies found by rule 1 or 2 have no
   time limit: a re-publication years later is still a copy). A headline match between a short and a long body is
   not a duplicate: a flash and the full story are one story, not one copy.

Every rule is a symmetric function of the two articles alone (the LSH condition included: "shares a band
bucket"), so the groups do not depend on the order articles arrive in: ``DedupIndex`` (incremental, with
removal) gives exactly the groups ``find_duplicates`` (batch) gives for the same articles.

Hashing is stable across processes and machines: words are hashed with blake2b (never Python's salted
``hash()``), shingles and the MinHash permutations are numpy uint64 arithmetic with seeds derived from blake2b.
``SIGNATURE_VERSION`` changes whenever that would give other values, and a persisted index of another version is
refused rather than silently mixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from search.jsontypes import JSONObject

U64 = npt.NDArray[np.uint64]
F32 = npt.NDArray[np.float32]
PairReason = Literal["exact", "body", "headline"]

SIGNATURE_VERSION = 1  # bump when normalisation, shingling or hashing changes: persisted signatures become stale

# The numbers below were measured with bench/dedup.py on BBC News (2,225 articles) plus 2,400 generated variants
# and hard negatives, grouped end to end (LSH, rules, union-find): tuned on one generated set (seed 5), checked on
# another (seed 6). The figures are in the benchmark's JSON report.
#
# 5-word shingles: unrelated articles of one category share almost none (estimated Jaccard 0.000 for all 300
# random same-category pairs of the tuning set), while a changed word spoils only 5 shingles (light edits: Jaccard
# 5th percentile 0.76).
SHINGLE_WORDS = 5
# 128 permutations: the Jaccard estimate's standard error is 0.042 at 0.35; 1 KiB of signature per distinct body.
NUM_PERM = 128
# 64 bands of 2 rows: a pair at Jaccard 0.35 becomes a candidate with probability 0.9998; at 0.27 (the weakest pair
# the containment rule accepts: containment 0.75 at size ratio 0.4) 0.992; at 0.01 (unrelated) 0.006.
BANDS = 64
ROWS = 2
# Body rule, chosen by the benchmark (highest recall whose pair precision, and that of every setting two grid steps
# looser in any one threshold, reaches 0.99). Tuning set: precision 1.000, recall 0.913; held-out set: precision
# 1.000, recall 0.915, no wrong merge, no group mixing categories. A lower Jaccard bar found more but merged other
# stories: 0.30 made 1 wrong merge and 0.25 two on the tuning set (a selection without the margin chose 0.25 and
# got a held-out precision of 0.947). The culprits are borrowed passages (a paragraph of another story: Jaccard up
# to ~0.2) that the 128-permutation estimate scatters upwards.
BODY_JACCARD = 0.35
# Containment recovers copies cut by a paragraph or two (two paragraphs dropped: Jaccard median 0.52, 5th
# percentile 0.05; containment median 0.99), but only with a size floor: at a ratio of 0.1 or 0.2 it linked
# borrowed passages (8 and 1 wrong merges). With the floor at 0.4 it adds 0.6 points of recall over Jaccard alone.
BODY_CONTAINMENT = 0.75
MIN_SIZE_RATIO = 0.4
# Headline rule, measured with --headlines (all-MiniLM-L6-v2, onnx-int8) by the same choice rule on top of the body
# rule. Tuning set: recall 0.950 (from 0.913 with bodies alone), precision 1.000; held-out: recall 0.954 (from
# 0.915), precision 1.000, no wrong merge; no reworded headline over another story's body was merged.
# At this body bar cosine 0.7 to 0.9 gave the same figures (0.95 lost a little recall); 0.85 is the middle of the
# plateau where the margin can be checked. A body bar of 0.05 or 0.1 found more (recall 0.989 / 0.975) but 0.05
# already made a wrong merge, and the headline alone (0.0) merges reworded headlines over other stories' bodies,
# so the two-step margin rules both out.
HEADLINE_COSINE = 0.85
HEADLINE_BODY_JACCARD = 0.15
# Bodies under 20 words are "short": no MinHash (a handful of shingles gives no usable estimate), and the exact key
# includes the headline. BBC's shortest body has 84 words, so this only matters for scraped or headline-only feeds.
SHORT_BODY_WORDS = 20
# Headline matches count only within 2 days of each other when both are dated: a recurring headline ("Bank of
# England provides money market help") on another day is another event. A design choice, not measured (BBC has no
# dates); Reuters-21578 (dated, 1,798 headline-only records) is where to measure it.
HEADLINE_DAYS = 2.0

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SIG_CHUNK = 4096  # shingles hashed per step: bounds the (shingles x permutations) matrix at 4 MiB for 128


@dataclass(frozen=True)
class DedupConfig:
    """The numbers of the duplicate rules (see the module docstring); an index keeps the config it was built with."""

    shingle_words: int = SHINGLE_WORDS
    num_perm: int = NUM_PERM
    bands: int = BANDS
    rows: int = ROWS
    body_jaccard: float = BODY_JACCARD
    body_containment: float = BODY_CONTAINMENT
    min_size_ratio: float = MIN_SIZE_RATIO
    headline_cosine: float = HEADLINE_COSINE
    headline_body_jaccard: float = HEADLINE_BODY_JACCARD
    short_body_words: int = SHORT_BODY_WORDS
    headline_days: float = HEADLINE_DAYS

    def __post_init__(self) -> None:
        if self.shingle_words < 1 or self.num_perm < 1 or self.bands < 1 or self.rows < 1:
            raise ValueError("shingle_words, num_perm, bands and rows must be positive")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands} x {self.rows}) exceeds num_perm ({self.num_perm})")


DEFAULT_CONFIG = DedupConfig()


# --- normalisation and exact keys -------------------------------------------------------------------------------


class _PunctuationTable(dict[int, int]):
    """A ``str.translate`` table mapping every punctuation (P*) and symbol (S*) code point to a space, filled
    lazily: a regex ``\\W`` would also split words at combining marks (Devanagari vowel signs, for one)."""

    def __missing__(self, cp: int) -> int:
        value = 0x20 if unicodedata.category(chr(cp))[0] in "PS" else cp
        self[cp] = value
        return value


_PUNCTUATION = _PunctuationTable()


def normalize_text(text: str) -> str:
    """``text`` as the words duplicate detection compares: NFKC (full-width and compatibility forms fold to their
    plain letters), casefolded, punctuation and symbols replaced by spaces, whitespace collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().translate(_PUNCTUATION).split())


def body_hash(text: str) -> str:
    """The exact-content key of a body (title-independent): hex blake2b-128 of its normalised text, so copies
    that differ only in case, punctuation, whitespace or Unicode form share it."""
    return hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=16, person=b"newsdesk-body").hexdigest()


def _exact_key(normalized_body: str, title: str, short: bool) -> str:
    if not short:
        return hashlib.blake2b(normalized_body.encode("utf-8"), digest_size=16, person=b"newsdesk-body").hexdigest()
    # A short body is only an exact copy together with its headline (see the module docstring, rule 1).
    payload = json.dumps([normalize_text(title), normalized_body]).encode("utf-8")
    return hashlib.blake2b(payload, digest_size=16, person=b"newsdesk-short").hexdigest()


# --- MinHash ----------------------------------------------------------------------------------------------------


def _mix(x: U64) -> U64:
    """splitmix64's finaliser: a bijection of uint64 that scatters every input bit over the output (wrapping
    arithmetic is intended: numpy uint64 arrays multiply modulo 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


@lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8, person=b"newsdesk-word").digest())


@lru_cache(maxsize=16)
def _seeds(count: int, salt: str) -> U64:
    """``count`` fixed 64-bit seeds, from blake2b rather than a numpy generator (whose streams may change)."""
    values = [
        int.from_bytes(hashlib.blake2b(f"{salt}/{i}".encode(), digest_size=8, person=b"newsdesk-seed").digest())
        for i in range(count)
    ]
    out = np.array(values, dtype=np.uint64)
    out.setflags(write=False)
    return out


def shingle_hashes(words: Sequence[str], k: int = SHINGLE_WORDS) -> U64:
    """Distinct 64-bit hashes of the ``k``-word shingles of ``words`` (one shingle of all words when there are
    fewer than ``k``; none for no words). Order inside a shingle matters; the hash is stable across processes."""
    if not words:
        return np.zeros(0, dtype=np.uint64)
    w = np.fromiter((_word_hash(t) for t in words), dtype=np.uint64, count=len(words))
    k = min(k, len(w))
    m = len(w) - k + 1
    h = w[:m].copy()
    for j in range(1, k):
        h = _mix(h) ^ w[j : j + m]
    return np.unique(_mix(h ^ np.uint64(k)))


def minhash(hashes: U64, num_perm: int = NUM_PERM) -> U64:
    """The MinHash signature of a set of shingle hashes: per permutation ``i``, the minimum of
    ``mix(h xor seed_i)`` (a seeded bijection of the 64-bit space standing in for a random permutation). The share
    of equal positions between two signatures estimates the two sets' Jaccard similarity. An empty set gives all
    ones (the maximum), which equals only another empty set's signature."""
    seeds = _seeds(num_perm, "perm")
    sig = np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    for start in range(0, len(hashes), _SIG_CHUNK):
        block = hashes[start : start + _SIG_CHUNK]
        np.minimum(sig, _mix(block[:, None] ^ seeds[None, :]).min(axis=0), out=sig)
    return sig


def band_hashes(signatures: U64, bands: int = BANDS, rows: int = ROWS) -> U64:
    """One 64-bit hash per LSH band of each signature (``signatures`` is ``(num_perm,)`` or ``(n, num_perm)``;
    the result ``(bands,)`` or ``(n, bands)``). The band index is mixed in, so hashes of different bands never
    meet in one bucket table. Two signatures are an LSH candidate pair when any band hash is equal."""
    sig = np.atleast_2d(signatures)[:, : bands * rows].reshape(-1, bands, rows)
    h = sig[:, :, 0].copy()
    for r in range(1, rows):
        h = _mix(h) ^ sig[:, :, r]
    out = _mix(h ^ _seeds(bands, "band")[None, :])
    return out[0] if signatures.ndim == 1 else out


def estimated_jaccard(a: U64, b: U64) -> float:
    """Share of equal MinHash positions: an unbiased estimate of Jaccard with standard error
    ``sqrt(J (1 - J) / num_perm)`` (0.044 at J = 0.5 with 128 permutations)."""
    return float(np.count_nonzero(a == b)) / len(a)


def jaccard(a: U64, b: U64) -> float:
    """Exact Jaccard similarity of two sets of shingle hashes (the oracle the estimate is tested against)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def lsh_candidate_probability(similarity: float, bands: int = BANDS, rows: int = ROWS) -> float:
    """Probability that two sets of Jaccard ``similarity`` share at least one LSH band: ``1 - (1 - s^r)^b``."""
    return float(1.0 - (1.0 - similarity**rows) ** bands)


@dataclass(frozen=True)
class Fingerprint:
    """What duplicate detection keeps of one body. ``signature`` and ``bands`` are ``None`` for a short body."""

    exact_key: str
    words: int
    shingles: int
    signature: U64 | None
    bands: U64 | None

    @property
    def short(self) -> bool:
        return self.signature is None


def fingerprint(text: str, title: str = "", config: DedupConfig = DEFAULT_CONFIG) -> Fingerprint:
    """The exact key, and for a body of at least ``short_body_words`` words its MinHash signature and band
    hashes. ``title`` only matters for a short body (rule 1 of the module docstring)."""
    norm = normalize_text(text)
    words = norm.split()
    short = len(words) < config.short_body_words
    key = _exact_key(norm, title, short)
    if short:
        return Fingerprint(key, len(words), 0, None, None)
    hashes = shingle_hashes(words, config.shingle_words)
    sig = minhash(hashes, config.num_perm)
    sig.setflags(write=False)
    bands = band_hashes(sig, config.bands, config.rows)
    bands.setflags(write=False)
    return Fingerprint(key, len(words), len(hashes), sig, bands)


# --- headlines --------------------------------------------------------------------------------------------------


def normalize_rows(vectors: npt.ArrayLike) -> F32:
    """Rows scaled to unit length (a zero row stays zero, so it matches nothing)."""
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    out: F32 = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    return out


def headline_pairs(
    vectors: npt.ArrayLike, threshold: float = HEADLINE_COSINE, block: int = 2048
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)`` with ``i < j`` whose headline vectors have cosine at least ``threshold``, sorted.

    ``vectors`` is ``(n, d)``, normalised here in case they are not. Blocked matrix products keep memory at
    ``block x n`` floats. This is only the headline half of rule 3: the caller must also require bodies that share
    text (or two short ones) and dates within ``HEADLINE_DAYS``, which ``find_duplicates`` and ``DedupIndex`` do.
    """
    v = normalize_rows(vectors)
    out: list[tuple[int, int, float]] = []
    for start in range(0, len(v), block):
        sims = v[start : start + block] @ v.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c:
                out.append((i, c, float(sims[r, c])))
    out.sort()
    return out


# --- the pair rule ----------------------------------------------------------------------------------------------


def _date_key(date: str | None) -> tuple[int, float]:
    """Sort key for "earliest": dated articles by their instant (naive times read as UTC), undated ones last."""
    if not date:
        return (1, 0.0)
    try:
        parsed = datetime.fromisoformat(date.replace("Z", "+00:00"))
    except ValueError:
        return (1, 0.0)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (0, parsed.timestamp())


def canonical_key(article_id: str, date: str | None) -> tuple[int, float, str]:
    """The canonical of a group is the member with the smallest key: earliest date, undated last, then id."""
    return (*_date_key(date), article_id)


@dataclass(frozen=True)
class _Item:
    """One article as the pair rule sees it."""

    id: str
    fp: Fingerprint
    date: tuple[int, float]
    vector: F32 | None


def _within_days(a: tuple[int, float], b: tuple[int, float], days: float) -> bool:
    if a[0] or b[0]:
        return True  # an undated side cannot contradict
    return abs(a[1] - b[1]) <= days * 86400.0


def _headline_rule(a: _Item, b: _Item, cosine: float, config: DedupConfig) -> bool:
    if cosine < config.headline_cosine or not _within_days(a.date, b.date, config.headline_days):
        return False
    if a.fp.signature is not None and b.fp.signature is not None:
        return estimated_jaccard(a.fp.signature, b.fp.signature) >= config.headline_body_jaccard
    return a.fp.short and b.fp.short


def containment_from_jaccard(j: float, size_a: int, size_b: int) -> float:
    """Share of the smaller set inside the larger one, from their Jaccard and sizes:
    ``|A & B| = J (|A| + |B|) / (1 + J)``, over ``min(|A|, |B|)``, capped at 1 (the estimate can overshoot)."""
    small = min(size_a, size_b)
    if small <= 0:
        return 0.0
    return min(1.0, j * (size_a + size_b) / ((1.0 + j) * small))


def body_similarity(a: Fingerprint, b: Fingerprint) -> tuple[float, float]:
    """(estimated Jaccard, estimated containment) of two long bodies; (0, 0) if either is short."""
    if a.signature is None or b.signature is None:
        return (0.0, 0.0)
    j = estimated_jaccard(a.signature, b.signature)
    return (j, containment_from_jaccard(j, a.shingles, b.shingles))


def body_match(a: Fingerprint, b: Fingerprint, config: DedupConfig = DEFAULT_CONFIG) -> bool:
    """Rule 2: two long bodies that share an LSH band, and whose estimated Jaccard reaches ``body_jaccard`` or
    whose sizes are within ``min_size_ratio`` and estimated containment reaches ``body_containment``.

    Requiring the shared band (not only the similarity) makes the rule exactly what LSH can find, so a batch run,
    an incremental one and a re-split after a removal all see the same pairs.
    """
    if a.bands is None or b.bands is None or not bool(np.any(a.bands == b.bands)):
        return False
    j, c = body_similarity(a, b)
    if j >= config.body_jaccard:
        return True
    ratio = min(a.shingles, b.shingles) / max(a.shingles, b.shingles, 1)
    return ratio >= config.min_size_ratio and c >= config.body_containment


def pair_reason(a: _Item, b: _Item, config: DedupConfig) -> PairReason | None:
    """Why ``a`` and ``b`` are duplicates, or ``None``: the one symmetric rule both the batch and the incremental
    paths apply (so they agree)."""
    if a.fp.exact_key == b.fp.exact_key:
        return "exact"
    if body_match(a.fp, b.fp, config):
        return "body"
    if a.vector is not None and b.vector is not None and _headline_rule(a, b, float(a.vector @ b.vector), config):
        return "headline"
    return None


# --- grouping ---------------------------------------------------------------------------------------------------


class UnionFind:
    """Disjoint sets over hashable keys, with path halving and union by size."""

    def __init__(self, items: Iterable[str] = ()) -> None:
        self._parent: dict[str, str] = {}
        self._size: dict[str, int] = {}
        for item in items:
            self.add(item)

    def add(self, item: str) -> None:
        if item not in self._parent:
            self._parent[item] = item
            self._size[item] = 1

    def find(self, item: str) -> str:
        parent = self._parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size.pop(rb)
        return ra

    def groups(self) -> list[list[str]]:
        """Every set, members sorted, the sets sorted by their first member."""
        out: dict[str, list[str]] = {}
        for item in self._parent:
            out.setdefault(self.find(item), []).append(item)
        return sorted((sorted(g) for g in out.values()), key=lambda g: g[0])


def cluster(ids: Iterable[str], pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Connected components of ``pairs`` over ``ids`` (every id, singletons included), as ``UnionFind.groups``."""
    uf = UnionFind(ids)
    for a, b in pairs:
        uf.add(a)
        uf.add(b)
        uf.union(a, b)
    return uf.groups()


def canonical_ids(groups: Iterable[Sequence[str]], dates: dict[str, str | None]) -> dict[str, str]:
    """Each member's canonical id: its group's earliest-dated member (undated last; ties: the smallest id)."""
    out: dict[str, str] = {}
    for group in groups:
        head = min(group, key=lambda i: canonical_key(i, dates.get(i)))
        for member in group:
            out[member] = head
    return out


# --- batch ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupDoc:
    """An article as batch detection takes it: ``text`` is the body (paragraphs), ``title`` the headline."""

    id: str
    text: str
    date: str | None = None
    title: str = ""
    headline_vector: npt.ArrayLike | None = None


@dataclass(frozen=True)
class DedupResult:
    """``pairs`` are the duplicate pairs found, ``(id_a, id_b, reason)`` with ``id_a < id_b``, sorted: enough to
    connect every group, not every pair of it (copies of one body are linked to its first occurrence, and body
    pairs are found between first occurrences). ``groups`` are the components with more than one member, members
    sorted; ``canonical`` maps every id to its canonical id."""

    pairs: list[tuple[str, str, PairReason]]
    groups: list[list[str]]
    canonical: dict[str, str]


def _items(docs: Sequence[DedupDoc], config: DedupConfig) -> list[_Item]:
    out = []
    for d in docs:
        vec = None if d.headline_vector is None else normalize_rows(d.headline_vector)[0]
        out.append(_Item(d.id, fingerprint(d.text, d.title, config), _date_key(d.date), vec))
    return out


def lsh_candidates(band_matrix: U64) -> set[tuple[int, int]]:
    """Row pairs ``(i, j)``, ``i < j``, that share at least one band hash, found by bucketing each band's hashes
    (sub-quadratic: only rows in one bucket are paired)."""
    pairs: set[tuple[int, int]] = set()
    for b in range(band_matrix.shape[1]):
        column = band_matrix[:, b]
        order = np.argsort(column, kind="stable")
        sorted_col = column[order]
        edges = np.flatnonzero(np.diff(sorted_col)) + 1
        for bucket in np.split(order, edges):
            if len(bucket) > 1:
                members = sorted(bucket.tolist())
                pairs.update((members[i], members[j]) for i in range(len(members)) for j in range(i + 1, len(members)))
    return pairs


def find_duplicates(docs: Sequence[DedupDoc], config: DedupConfig = DEFAULT_CONFIG) -> DedupResult:
    """Duplicate pairs, groups and canonical ids of a whole collection at once (ids must be unique).

    Exact copies are grouped by key; LSH proposes body pairs among distinct long bodies; ``headline_pairs``
    proposes headline pairs among documents that have a vector; every proposed pair goes through ``pair_reason``.
    """
    if len({d.id for d in docs}) != len(docs):
        raise ValueError("document ids must be unique")
    items = _items(docs, config)
    proposals: set[tuple[int, int]] = set()
    by_key: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_key.setdefault(it.fp.exact_key, []).append(i)
    for members in by_key.values():
        proposals.update((members[0], m) for m in members[1:])  # a star is enough to connect the copies
    # LSH over one representative per distinct long body: copies of it pair through the exact rule anyway.
    reps = [members[0] for members in by_key.values() if items[members[0]].fp.bands is not None]
    if reps:
        matrix = np.stack([items[r].fp.bands for r in reps])  # type: ignore[misc]
        for i, j in lsh_candidates(matrix):
            proposals.add((reps[i], reps[j]))
    with_vec = [i for i, it in enumerate(items) if it.vector is not None]
    if with_vec:
        vecs = np.stack([items[i].vector for i in with_vec])  # type: ignore[misc]
        for i, j, _ in headline_pairs(vecs, config.headline_cosine):
            proposals.add((with_vec[i], with_vec[j]))
    pairs: list[tuple[str, str, PairReason]] = []
    for i, j in proposals:
        reason = pair_reason(items[i], items[j], config)
        if reason is not None:
            a, b = sorted((items[i].id, items[j].id))
            pairs.append((a, b, reason))
    pairs.sort()
    groups = cluster((d.id for d in docs), ((a, b) for a, b, _ in pairs))
    canonical = canonical_ids(groups, {d.id: d.date for d in docs})
    return DedupResult(pairs, [g for g in groups if len(g) > 1], canonical)


# --- incremental ------------------------------------------------------------------------------------------------


class DuplicateIndex(Protocol):
    """The interface the indexer and the query side use; ``DedupIndex`` is the implementation."""

    def add(
        self,
        article_id: str,
        text: str,
        date: str | None = None,
        headline_vector: npt.ArrayLike | None = None,
        *,
        title: str = "",
    ) -> str: ...

    def remove(self, article_id: str) -> None: ...

    def canonical_id(self, article_id: str) -> str: ...

    def group(self, article_id: str) -> list[str]: ...

    def to_bytes(self) -> bytes: ...


@dataclass
class _Entry:
    """One distinct body (exact key) and the articles that carry it."""

    fp: Fingerprint
    members: set[str] = field(default_factory=set)


@dataclass
class _Article:
    id: str
    key: str
    date: str | None
    date_key: tuple[int, float]
    vector: F32 | None


class DedupIndex:
    """Duplicate groups kept up to date one article at a time, and persistable.

    Holds, per distinct body, its fingerprint and its LSH band buckets; per article, its date and headline vector;
    per group, its members and canonical id. ``add`` finds the new article's duplicates (the entry with its exact
    key, LSH candidates above the body threshold, headline matches that pass rule 3) and merges their groups.
    ``remove`` re-derives the components of the removed article's group only: a group can split when the removed
    article was the bridge, and no other group can change. Both keep the groups equal to ``find_duplicates`` on
    the same articles. Memory: a signature (8 bytes x ``num_perm``) and ``bands`` dict entries per distinct body,
    4 bytes x dimension (and 8 for its date) per headline vector. Headline matching scans the stored vectors dated
    within ``headline_days`` of the new article and the undated ones (an undated article: every one; a few ms at
    100k); put an ANN index in front if undated articles grow far beyond that.
    """

    def __init__(self, config: DedupConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self._articles: dict[str, _Article] = {}
        self._entries: dict[str, _Entry] = {}
        self._buckets: dict[int, set[str]] = {}  # band hash -> exact keys of the entries in that bucket
        self._vectors = np.zeros((0, 0), dtype=np.float32)  # headline vectors, rows [0, len(_vector_ids))
        self._vector_times = np.zeros(0, dtype=np.float64)  # their articles' instants (``_date_key``), NaN: undated
        self._vector_ids: list[str] = []
        self._vector_row: dict[str, int] = {}
        self._group_of: dict[str, int] = {}
        self._groups: dict[int, set[str]] = {}
        self._canonical: dict[int, str] = {}
        self._next_group = 0
        # What changed since the saved files this index was loaded from or last saved to (``stamp``, their JSON
        # stamp; None: no such files): the ids a save appends as a segment (search/news/grouping.py).
        self.touched: set[str] = set()
        self.stamp: JSONObject | None = None
        # the ids the saved segments changed since the saved base: with ``touched``, one segment that replaces them
        self.since_base: set[str] = set()

    # queries

    def __len__(self) -> int:
        return len(self._articles)

    def __contains__(self, article_id: object) -> bool:
        return article_id in self._articles

    def ids(self) -> list[str]:
        return sorted(self._articles)

    def canonical_id(self, article_id: str) -> str:
        """The canonical id of the article's group (its own id when it has no duplicate). KeyError if unknown."""
        return self._canonical[self._group_of[article_id]]

    def group(self, article_id: str) -> list[str]:
        """The article's group, canonical first, the rest sorted by id."""
        g = self._group_of[article_id]
        head = self._canonical[g]
        return [head, *sorted(m for m in self._groups[g] if m != head)]

    def groups(self) -> list[list[str]]:
        """Groups with more than one member, members sorted, groups sorted by first member (as ``DedupResult``)."""
        return sorted((sorted(m) for m in self._groups.values() if len(m) > 1), key=lambda g: g[0])

    def canonical_map(self) -> dict[str, str]:
        return {a: self._canonical[g] for a, g in self._group_of.items()}

    # updates

    def add(
        self,
        article_id: str,
        text: str,
        date: str | None = None,
        headline_vector: npt.ArrayLike | None = None,
        *,
        title: str = "",
    ) -> str:
        """Add (or replace) an article and return the canonical id of the group it joins (its own id when it has
        no duplicate). ``text`` is the body; ``title`` only counts for short bodies (exact-key rule). Invalid input
        (a headline vector of another dimension than the stored ones) raises ``ValueError`` before anything
        changes. Not thread-safe: one writer at a time, as the indexer is."""
        fp = fingerprint(text, title, self.config)
        vec = None if headline_vector is None else normalize_rows(headline_vector)[0]
        return self._add(article_id, fp, date, vec)

    def _add(self, article_id: str, fp: Fingerprint, date: str | None, vec: F32 | None) -> str:
        """``add`` of a fingerprint already taken and a headline vector already normalised (``apply_delta`` adds
        them as saved: normalising a unit vector again may move its last bit)."""
        if vec is not None:
            others = len(self._vector_ids) - (article_id in self._vector_row)
            if others and len(vec) != self._vectors.shape[1]:
                raise ValueError(f"headline vector has dimension {len(vec)}, the index holds {self._vectors.shape[1]}")
        if article_id in self._articles:
            self.remove(article_id)
        self.touched.add(article_id)
        art = _Article(article_id, fp.exact_key, date, _date_key(date), vec)
        me = _Item(article_id, fp, art.date_key, vec)
        neighbours: set[str] = set()
        entry = self._entries.get(fp.exact_key)
        if entry is not None:
            neighbours.update(entry.members)
        else:
            entry = _Entry(fp)
            self._entries[fp.exact_key] = entry
            if fp.bands is not None:
                for key in self._candidate_entries(fp.bands):
                    other = self._entries[key]
                    if body_match(fp, other.fp, self.config):
                        neighbours.update(other.members)
                for h in fp.bands.tolist():
                    self._buckets.setdefault(h, set()).add(fp.exact_key)
        if vec is not None and self._vector_ids:
            rows = self._headline_rows(art.date_key)
            block = self._vectors[: len(self._vector_ids)] if rows is None else self._vectors[rows]
            hits = np.flatnonzero(block @ vec >= self.config.headline_cosine)
            for row in (hits if rows is None else rows[hits]).tolist():
                other_id = self._vector_ids[row]
                if other_id not in neighbours and pair_reason(me, self._item(other_id), self.config) is not None:
                    neighbours.add(other_id)
        entry.members.add(article_id)
        self._articles[article_id] = art
        if vec is not None:
            self._store_vector(article_id, vec, art.date_key)
        g = self._new_group({article_id})
        for other_id in neighbours:
            g = self._merge(g, self._group_of[other_id])
        return self._canonical[g]

    def remove(self, article_id: str) -> None:
        """Forget an article (no error if unknown); its group is re-split if it held the group together."""
        art = self._articles.pop(article_id, None)
        if art is None:
            return
        self.touched.add(article_id)
        entry = self._entries[art.key]
        entry.members.discard(article_id)
        if not entry.members:
            del self._entries[art.key]
            if entry.fp.bands is not None:
                for h in entry.fp.bands.tolist():
                    bucket = self._buckets[h]
                    bucket.discard(art.key)
                    if not bucket:
                        del self._buckets[h]
        if art.vector is not None:
            self._drop_vector(article_id)
        g = self._group_of.pop(article_id)
        members = self._groups.pop(g)
        self._canonical.pop(g)
        members.discard(article_id)
        if members:
            for component in self._components(members):
                self._new_group(component)

    # internals

    def _item(self, article_id: str) -> _Item:
        a = self._articles[article_id]
        return _Item(a.id, self._entries[a.key].fp, a.date_key, a.vector)

    def _candidate_entries(self, bands: U64) -> set[str]:
        out: set[str] = set()
        for h in bands.tolist():
            bucket = self._buckets.get(h)
            if bucket:
                out.update(bucket)
        return out

    def _headline_rows(self, date_key: tuple[int, float]) -> npt.NDArray[np.int64] | None:
        """The stored headline vectors the headline rule could pair with an article of ``date_key``: those dated
        within ``headline_days`` of it and the undated ones (``_within_days``, to the same float arithmetic), so an
        add scans the days around its article rather than every headline of the index; None (every row) for an
        undated article."""
        if date_key[0]:
            return None
        times = self._vector_times[: len(self._vector_ids)]
        near = np.isnan(times) | (np.abs(times - date_key[1]) <= self.config.headline_days * 86400.0)
        return np.flatnonzero(near)

    def _store_vector(self, article_id: str, vec: F32, date_key: tuple[int, float]) -> None:
        n = len(self._vector_ids)
        if self._vectors.shape[1] != len(vec):  # the first vector (``add`` has checked the others' dimension)
            self._vectors = np.zeros((0, len(vec)), dtype=np.float32)
        if n == len(self._vectors):
            grown = np.zeros((max(16, 2 * n), len(vec)), dtype=np.float32)
            grown[:n] = self._vectors[:n]
            self._vectors = grown
            times = np.full(len(grown), np.nan)
            times[:n] = self._vector_times[:n]
            self._vector_times = times
        self._vectors[n] = vec
        self._vector_times[n] = np.nan if date_key[0] else date_key[1]
        self._vector_ids.append(article_id)
        self._vector_row[article_id] = n

    def _drop_vector(self, article_id: str) -> None:
        row = self._vector_row.pop(article_id)
        last = len(self._vector_ids) - 1
        if row != last:  # move the last row into the hole
            moved = self._vector_ids[last]
            self._vectors[row] = self._vectors[last]
            self._vector_times[row] = self._vector_times[last]
            self._vector_ids[row] = moved
            self._vector_row[moved] = row
        self._vector_ids.pop()

    def _new_group(self, members: set[str]) -> int:
        g = self._next_group
        self._next_group += 1
        self._groups[g] = members
        for m in members:
            self._group_of[m] = g
        self._canonical[g] = min(members, key=lambda i: canonical_key(i, self._articles[i].date))
        return g

    def _merge(self, a: int, b: int) -> int:
        if a == b:
            return a
        if len(self._groups[a]) < len(self._groups[b]):
            a, b = b, a
        moved = self._groups.pop(b)
        for m in moved:
            self._group_of[m] = a
        self._groups[a] |= moved
        ca, cb = self._canonical[a], self._canonical.pop(b)
        self._canonical[a] = min(ca, cb, key=lambda i: canonical_key(i, self._articles[i].date))
        return a

    def _components(self, members: set[str]) -> Iterator[set[str]]:
        """Connected components of the duplicate graph restricted to ``members`` (what is left of a group)."""
        ids = sorted(members)
        uf = UnionFind(ids)
        by_key: dict[str, list[str]] = {}
        for i in ids:
            by_key.setdefault(self._articles[i].key, []).append(i)
        for copies in by_key.values():
            for other in copies[1:]:
                uf.union(copies[0], other)
        reps = [copies[0] for copies in by_key.values()]
        items = {i: self._item(i) for i in ids}
        for x in range(len(reps)):
            for y in range(x + 1, len(reps)):
                if body_match(items[reps[x]].fp, items[reps[y]].fp, self.config):
                    uf.union(reps[x], reps[y])
        with_vec = [i for i in ids if items[i].vector is not None]
        if len(with_vec) > 1:
            vecs = np.stack([self._vectors[self._vector_row[i]] for i in with_vec])
            for x, y, _ in headline_pairs(vecs, self.config.headline_cosine):
                a, b = items[with_vec[x]], items[with_vec[y]]
                if uf.find(a.id) != uf.find(b.id) and pair_reason(a, b, self.config) is not None:
                    uf.union(a.id, b.id)
        for g in uf.groups():
            yield set(g)

    # persistence

    def to_bytes(self) -> bytes:
        """The index as an ``.npz`` archive (numpy arrays and one JSON header; no pickle), for the indexer to
        store beside its other files. Buckets and canonical ids are derived again on load; groups are stored
        (numbered by their first member, so one set of articles gives one archive), so loading costs no pair
        comparisons."""
        ids = sorted(self._articles)
        header, arrays = self._records(ids)
        group_row: dict[int, int] = {}
        for i in ids:
            group_row.setdefault(self._group_of[i], len(group_row))
        arrays["article_group"] = np.array([group_row[self._group_of[i]] for i in ids], dtype=np.int64)
        return _npz(header, arrays)

    def delta_bytes(self, *, whole: bool = False) -> bytes:
        """What changed since ``touched`` was last cleared (``whole``: since the saved base, ``since_base`` too), as
        an ``.npz`` segment: the touched ids as tombstones (removed, replaced or added), then the fingerprints, dates
        and headline vectors of those still held. ``apply_delta`` of it on the index as it was before gives this
        index's articles and groups: groups are a function of the articles alone, whatever order they came in (the
        class docstring)."""
        touched = sorted(self.touched | self.since_base if whole else self.touched)
        header, arrays = self._records([i for i in touched if i in self._articles])
        header["tombstones"] = touched
        return _npz(header, arrays)

    def _records(self, ids: list[str]) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        """The JSON header and arrays of the articles ``ids`` (sorted): dates, distinct bodies' fingerprints,
        headline vectors."""
        keys = sorted({self._articles[i].key for i in ids})
        key_row = {k: r for r, k in enumerate(keys)}
        sig_keys = [k for k in keys if self._entries[k].fp.signature is not None]
        vec_ids = [i for i in ids if self._articles[i].vector is not None]
        dim = self._vectors.shape[1] if vec_ids else 0
        header: JSONObject = {
            "version": SIGNATURE_VERSION,
            "config": asdict(self.config),
            "ids": ids,
            "dates": [self._articles[i].date for i in ids],
            "keys": keys,
            "words": [self._entries[k].fp.words for k in keys],
            "shingles": [self._entries[k].fp.shingles for k in keys],
            "sig_keys": sig_keys,
        }
        arrays: dict[str, np.ndarray] = {
            "article_entry": np.array([key_row[self._articles[i].key] for i in ids], dtype=np.int64),
            "signatures": np.stack([self._entries[k].fp.signature for k in sig_keys])  # type: ignore[misc]
            if sig_keys
            else np.zeros((0, self.config.num_perm), dtype=np.uint64),
            "vector_ids": _positions(ids, vec_ids),
            "vectors": np.stack([self._articles[i].vector for i in vec_ids])  # type: ignore[misc]
            if vec_ids
            else np.zeros((0, dim), dtype=np.float32),
        }
        return header, arrays

    @classmethod
    def from_bytes(cls, data: bytes) -> DedupIndex:
        """An index from ``to_bytes``; ``ValueError`` if it was made by another ``SIGNATURE_VERSION`` (rebuild)."""
        header, arrays = _read_npz(data, ("article_group",))
        index = cls(DedupConfig(**header["config"]))
        fps = index._fingerprints(header, arrays["signatures"])
        for key, fp in fps.items():
            index._entries[key] = _Entry(fp)
            if fp.bands is not None:
                for h in fp.bands.tolist():
                    index._buckets.setdefault(h, set()).add(key)
        vec_of = {header["ids"][int(i)]: arrays["vectors"][r] for r, i in enumerate(arrays["vector_ids"].tolist())}
        members: dict[int, set[str]] = {}
        for article_id, date, e, g in zip(
            header["ids"], header["dates"], arrays["article_entry"].tolist(), arrays["article_group"].tolist(),
            strict=True,
        ):  # fmt: skip
            key = header["keys"][e]
            vec = vec_of.get(article_id)
            index._articles[article_id] = _Article(article_id, key, date, _date_key(date), vec)
            index._entries[key].members.add(article_id)
            if vec is not None:
                index._store_vector(article_id, vec, index._articles[article_id].date_key)
            members.setdefault(int(g), set()).add(article_id)
        for group_members in members.values():
            index._new_group(group_members)
        return index

    def apply_delta(self, data: bytes) -> None:
        """Apply a segment from ``delta_bytes``: its tombstones leave, then its articles join with their saved
        fingerprints (no text is read again). ``ValueError`` for a segment of another version or config (the
        caller rebuilds); ``touched`` gains its ids, as any change."""
        header, arrays = _read_npz(data, ())
        if DedupConfig(**header["config"]) != self.config:
            raise ValueError("the segment was made with another duplicate config: rebuild it")
        fps = self._fingerprints(header, arrays["signatures"])
        vec_of = {header["ids"][int(i)]: arrays["vectors"][r] for r, i in enumerate(arrays["vector_ids"].tolist())}
        for article_id in header["tombstones"]:
            self.remove(str(article_id))
        for article_id, date, e in zip(header["ids"], header["dates"], arrays["article_entry"].tolist(), strict=True):
            if article_id not in header["tombstones"]:
                raise ValueError("a segment adds an article it does not first remove")
            vec = vec_of.get(article_id)
            self._add(article_id, fps[header["keys"][e]], date, None if vec is None else np.asarray(vec, np.float32))

    def _fingerprints(self, header: JSONObject, signatures: U64) -> dict[str, Fingerprint]:
        """The fingerprints a header and its signature rows describe, band hashes derived again."""
        cfg = self.config
        sig_of = dict(zip(header["sig_keys"], signatures, strict=True))
        bands = band_hashes(signatures, cfg.bands, cfg.rows) if len(signatures) else signatures
        band_of = dict(zip(header["sig_keys"], bands, strict=True))
        out: dict[str, Fingerprint] = {}
        for key, words, shingles in zip(header["keys"], header["words"], header["shingles"], strict=True):
            sig = sig_of.get(key)
            b = band_of.get(key)
            if sig is not None and b is not None:
                sig.setflags(write=False)
                b.setflags(write=False)
            out[key] = Fingerprint(key, int(words), int(shingles), sig, b)
        return out


def _npz(header: JSONObject, arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    encoded = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    np.savez(buf, allow_pickle=False, header=encoded, **arrays)
    return buf.getvalue()


def _read_npz(data: bytes, extra: tuple[str, ...]) -> tuple[JSONObject, dict[str, np.ndarray]]:
    """The header and arrays of ``to_bytes`` or ``delta_bytes``; ValueError for another ``SIGNATURE_VERSION``."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        header = json.loads(npz["header"].tobytes().decode("utf-8"))
        if not isinstance(header, dict) or header.get("version") != SIGNATURE_VERSION:
            version = header.get("version") if isinstance(header, dict) else None
            raise ValueError(
                f"dedup index has signature version {version}, this code makes {SIGNATURE_VERSION}: rebuild it"
            )
        arrays = {name: npz[name] for name in ("article_entry", "signatures", "vector_ids", "vectors", *extra)}
    arrays["signatures"] = arrays["signatures"].astype(np.uint64)
    arrays["vectors"] = arrays["vectors"].astype(np.float32)
    return header, arrays


def _positions(ids: list[str], subset: list[str]) -> npt.NDArray[np.int64]:
    pos = {a: i for i, a in enumerate(ids)}
    return np.array([pos[a] for a in subset], dtype=np.int64)
