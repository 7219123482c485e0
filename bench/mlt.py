"""BBC News more-like-this: category precision@k of ``SearchService.similar`` against two baselines, one command.

    .venv/bin/python bench/mlt.py --data ../shared/data/bbc --out bench/results/mlt.json

Issue 5, acceptance criterion 2: for every BBC article, its "more like this" list, with the article itself and its
duplicates excluded, should hold articles of the same category: precision@5 >= 0.96. The BBC categories (business,
entertainment, politics, sport, tech) are coarse, so the figure measures whether neighbours are on-topic at all,
not whether they cover the same event.

Methods, all over the same 2,225 articles with the same exclusion rule:

- ``newsdesk``: ``SearchService.similar(id, k)`` on a built BBC index, in process, with the index's settings
  (``NEWSDESK_SIMILAR_SCORING``: ``profile``, shared-neighbour profiles over fused article-vector and tf-idf
  similarity, ``search/news/neighbours.py``; ``cosine``, the article vectors' cosine). ``newsdesk_cosine`` is the same
  call with ``similar_scoring=cosine``, the first-order baseline inside newsdesk.
- ``tfidf_mlt`` (baseline): scikit-learn ``TfidfVectorizer`` over headline + body (sublinear tf, English stop words,
  L2-normalised rows), cosine nearest neighbours. Elasticsearch's ``more_like_this`` builds a query from the
  document's highest-tf-idf terms; the full tf-idf cosine is the same idea without its term cut-off.
- ``dense_whole_article`` (baseline): headline + whole body embedded as one text by the same model
  (``SentenceTransformerEmbedder(backend="onnx-int8")``), truncated at the model's max sequence length as
  sentence-transformers truncates, cosine nearest neighbours.
- ``prototypes`` (not shipped code; candidate changes to ``related.py`` measured on the same index's stored
  vectors): article vectors centred on the corpus mean; the mean of body passages only; passage-pair scorings (best
  pair, mean best match); a convex fusion of article-vector cosine with the tf-idf cosine; and second-order
  (shared-neighbour) similarity over the dense, tf-idf or fused neighbour lists. A scoring with a parameter chosen
  on BBC itself also reports a two-fold estimate (chosen on half the articles, scored on the other half), so a
  figure tuned to this data is not passed off as a measurement. Skip them with ``--no-prototypes``.

Exclusions. An article's duplicates are the union (transitively closed) of its group in ``duplicate_groups.json``
(98 pairs) and every article whose body (paragraphs, whitespace-normalised) is exactly equal to its own. Body
equality finds 136 pairs: the listed 98 plus 38 with a reworded headline over the same text, which are copies of
one story too and would otherwise count as free hits. Each method ranks more than k articles, the query and its
duplicates are dropped, and the first k that remain are scored; a list shorter than k counts its missing places
as misses (the denominator is always k), so no method gains by returning fewer.

The index. ``--index`` (default: the BBC index ``bench/reindex.py`` leaves) is used only if its articles are
exactly the BBC corpus: the same ids and content hashes (headline and paragraphs). Otherwise (missing, or e.g. the
reindex benchmark's final state with 1% of articles edited and 1% deleted) the corpus is written to
``<work>/bbc-corpus.jsonl`` as ``{id, title, paragraphs, source: "BBC", tags: [category]}`` and
``newsdesk index`` builds (or incrementally updates) ``<work>/index`` with the ``NEWSDESK_*`` settings in effect.
The report says which index was used and why.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.scifact import BenchError, child_env, git_commit, git_dirty, loadavg, newsdesk_exe  # noqa: E402
from indexer.sources import FieldMap, to_article  # noqa: E402

TARGET = 0.96  # issue 5, acceptance 2: category precision@5
KS = (1, 5, 10)
FUSION_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
SECOND_ORDER_KS = (20, 40, 80, 160, 320)


# -- data ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BbcArticle:
    id: str
    category: str
    title: str
    paragraphs: tuple[str, ...]

    def text(self) -> str:
        """Headline and body as one text: what the whole-article baselines see."""
        return "\n".join((self.title, *self.paragraphs))


def read_articles(path: Path) -> list[BbcArticle]:
    """The BBC rows of ``articles.jsonl.gz`` (a folder holding it, or the file); a row without an id, category,
    headline or paragraphs list is an error rather than a silently smaller corpus."""
    if path.is_dir():
        path = path / "articles.jsonl.gz"
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    out: list[BbcArticle] = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                try:
                    out.append(
                        BbcArticle(
                            id=str(row["id"]),
                            category=str(row["category"]),
                            title=str(row["title"]),
                            paragraphs=tuple(str(p) for p in row["paragraphs"]),
                        )
                    )
                except (KeyError, TypeError) as exc:
                    raise BenchError(f"{path}:{n}: not a BBC article row ({exc!r})") from None
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: unreadable ({exc})") from None
    if len({a.id for a in out}) != len(out):
        raise BenchError(f"{path}: article ids are not unique")
    return out


def read_duplicate_groups(path: Path) -> list[list[str]]:
    """``duplicate_groups.json``: a JSON list of groups, each a list of at least two article ids."""
    try:
        groups = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: unreadable ({exc})") from None
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and len(g) >= 2 and all(isinstance(i, str) for i in g) for g in groups
    ):
        raise BenchError(f"{path}: expected a list of lists of at least two article ids")
    return groups


def body_key(paragraphs: Iterable[str]) -> str:
    """The body as compared for exact duplicates: paragraphs joined, runs of whitespace made one space. Case and
    punctuation count, so only a verbatim copy of the text matches."""
    return " ".join(" ".join(paragraphs).split())


def duplicate_groups(articles: Sequence[BbcArticle], listed: Iterable[Iterable[str]]) -> dict[str, frozenset[str]]:
    """Every article's duplicate group (itself included): the listed groups and exact body equality, merged
    transitively (union-find), so "a copy of a copy" is excluded too."""
    parent = {a.id: a.id for a in articles}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for group in listed:
        members = list(group)
        unknown = [m for m in members if m not in parent]
        if unknown:
            raise BenchError(f"duplicate group {members} names articles not in the corpus: {unknown}")
        for m in members[1:]:
            union(members[0], m)
    first_with_body: dict[str, str] = {}
    for a in articles:
        key = body_key(a.paragraphs)
        if key in first_with_body:
            union(first_with_body[key], a.id)
        else:
            first_with_body[key] = a.id
    members_of: dict[str, set[str]] = {}
    for a in articles:
        members_of.setdefault(find(a.id), set()).add(a.id)
    return {a.id: frozenset(members_of[find(a.id)]) for a in articles}


def duplicate_stats(
    articles: Sequence[BbcArticle], listed: Sequence[Sequence[str]], groups: Mapping[str, frozenset[str]]
) -> dict[str, Any]:
    """How many groups each source of duplicates gives, for the report."""
    by_body: dict[str, list[str]] = {}
    for a in articles:
        by_body.setdefault(body_key(a.paragraphs), []).append(a.id)
    body_groups = {frozenset(v) for v in by_body.values() if len(v) > 1}
    listed_sets = {frozenset(g) for g in listed}
    merged = {g for g in groups.values() if len(g) > 1}
    return {
        "listed_groups": len(listed_sets),
        "body_equal_groups": len(body_groups),
        "body_equal_not_listed": len(body_groups - listed_sets),
        "listed_not_body_equal": len(listed_sets - body_groups),
        "merged_groups": len(merged),
        "merged_group_sizes": dict(sorted(Counter(len(g) for g in merged).items())),
        "articles_with_duplicates": sum(len(g) for g in merged),
        "groups_spanning_categories": 0,  # filled by the caller, which knows the categories
    }


# -- scoring ------------------------------------------------------------------------------------------------------


def precision_at(
    ranked: Sequence[str], query: str, excluded: Iterable[str], category_of: Mapping[str, str], k: int
) -> float:
    """Share of the first ``k`` ranked articles, after dropping ``query`` and ``excluded``, with ``query``'s category.
    The denominator is ``k`` even when fewer remain: a missing place is a miss."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    drop = {query, *excluded}
    kept = [r for r in ranked if r not in drop][:k]
    return sum(category_of[r] == category_of[query] for r in kept) / k


def evaluate(
    rankings: Mapping[str, Sequence[str]],
    category_of: Mapping[str, str],
    groups: Mapping[str, frozenset[str]],
    ks: Sequence[int] = KS,
    queries: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Mean precision@k over ``queries`` (default: every article of ``category_of``; a ranking is required for each,
    so every method is judged on the same articles), overall and per category, and how many lists ran short of
    ``max(ks)``. ``category_of`` must cover every ranked article, not only the queries."""
    asked = list(category_of) if queries is None else list(queries)
    missing = [a for a in asked if a not in rankings]
    if missing:
        raise BenchError(f"{len(missing)} articles have no ranking, e.g. {missing[:5]}")
    per: dict[int, dict[str, float]] = {
        k: {a: precision_at(rankings[a], a, groups.get(a, ()), category_of, k) for a in asked} for k in ks
    }
    short = sum(len([r for r in rankings[a] if r != a and r not in groups.get(a, ())]) < max(ks) for a in asked)
    out: dict[str, Any] = {"articles": len(asked)}
    out.update({f"precision@{k}": round(statistics.fmean(per[k].values()), 4) for k in ks})
    categories: dict[str, Any] = {}
    for cat in sorted({category_of[a] for a in asked}):
        ids = [a for a in asked if category_of[a] == cat]
        categories[cat] = {"articles": len(ids)} | {
            f"precision@{k}": round(statistics.fmean(per[k][a] for a in ids), 4) for k in ks
        }
    out["per_category"] = categories
    out["short_lists"] = short
    return out


def top_k_excluding(
    scores: np.ndarray, ids: Sequence[str], groups: Mapping[str, frozenset[str]], k: int
) -> dict[str, list[str]]:
    """Each row's ``k`` best columns by score (ties: lower column first), never the row's own article or its
    duplicates: the nearest-neighbour step of every all-pairs method."""
    position = {a: i for i, a in enumerate(ids)}
    out: dict[str, list[str]] = {}
    for i, a in enumerate(ids):
        row = np.array(scores[i], dtype=np.float64)
        row[[position[d] for d in groups.get(a, frozenset()) | {a} if d in position]] = -np.inf
        n = min(k, int(np.isfinite(row).sum()))
        cand = np.argpartition(-row, n - 1)[:n] if n else np.zeros(0, dtype=np.int64)
        order = cand[np.lexsort((cand, -row[cand]))]
        out[a] = [ids[j] for j in order.tolist()]
    return out


def tfidf_similarity(texts: Sequence[str]) -> np.ndarray:
    """All-pairs cosine of tf-idf vectors (sublinear tf, English stop words, L2-normalised rows)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    matrix = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit_transform(list(texts))
    return np.asarray((matrix @ matrix.T).toarray(), dtype=np.float32)


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """All-pairs cosine of the rows (rows of zero norm score 0 with everything)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = (v / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    out: np.ndarray = unit @ unit.T
    return out


def centred(vectors: np.ndarray) -> np.ndarray:
    """Rows minus the corpus mean, renormalised. Sentence-embedding spaces are anisotropic (every news text shares
    a large common component), which compresses cosines between articles; removing the mean spreads them."""
    v = np.asarray(vectors, dtype=np.float32)
    v = v - v.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    out: np.ndarray = v / np.where(norms > 0, norms, 1.0)
    return out


def passage_pair_similarities(
    vectors: np.ndarray, owner: np.ndarray, n_articles: int, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Article-by-article (best passage pair, mean best match) from passage vectors.

    ``owner[i]`` is the article (0..n_articles-1) of passage row ``i``; every article needs at least one passage.
    Best pair is ``max_ij cos(p_i, q_j)``; mean best match (symmetric Chamfer) is the mean over one article's
    passages of their best cosine in the other, averaged over both directions. Computed a block of passages at a
    time, so memory stays at ``block x passages`` floats."""
    order = np.argsort(owner, kind="stable")
    p = np.asarray(vectors, dtype=np.float32)[order]
    own = np.asarray(owner)[order]
    counts = np.bincount(own, minlength=n_articles)
    if (counts == 0).any():
        raise ValueError("every article needs at least one passage")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    best_pair = np.full((n_articles, n_articles), -np.inf, dtype=np.float32)
    directed = np.zeros((n_articles, n_articles), dtype=np.float64)  # sum over a's passages of best match in b
    for lo in range(0, len(p), block):
        hi = min(len(p), lo + block)
        best_in = np.maximum.reduceat(p[lo:hi] @ p.T, starts, axis=1)  # (rows, articles): each row's best per article
        rows_own = own[lo:hi]
        seg = np.flatnonzero(np.r_[True, rows_own[1:] != rows_own[:-1]])
        arts = rows_own[seg]
        best_pair[arts] = np.maximum(best_pair[arts], np.maximum.reduceat(best_in, seg, axis=0))
        directed[arts] += np.add.reduceat(best_in.astype(np.float64), seg, axis=0)
    directed /= counts[:, None]
    chamfer = ((directed + directed.T) / 2).astype(np.float32)
    return best_pair, chamfer


def mean_of_passages(vectors: np.ndarray, owner: np.ndarray, n_articles: int, keep: np.ndarray) -> np.ndarray:
    """Each article's normalised mean of its passages where ``keep`` holds (all of them if none does): e.g. body
    passages only. Body passages are embedded with the headline in front, so the headline passage on top of them
    weighs the headline twice; a short article is then mostly its headline."""
    out = np.zeros((n_articles, vectors.shape[1]), dtype=np.float64)
    counts = np.bincount(owner[keep], minlength=n_articles)
    np.add.at(out, owner[keep], vectors[keep])
    empty = counts == 0
    if empty.any():
        fallback = np.isin(owner, np.flatnonzero(empty))
        np.add.at(out, owner[fallback], vectors[fallback])
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    result: np.ndarray = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return result


def fused(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """Convex fusion ``alpha * a + (1 - alpha) * b`` of two similarity matrices, each first divided by its rows'
    largest off-diagonal value, so the weight means the same whatever each side's cosine range."""

    def scaled(m: np.ndarray) -> np.ndarray:
        off = m.astype(np.float32, copy=True)
        np.fill_diagonal(off, -np.inf)
        top = off.max(axis=1, keepdims=True)
        return np.asarray(m, dtype=np.float32) / np.where(top > 0, top, 1.0)

    out: np.ndarray = alpha * scaled(a) + (1 - alpha) * scaled(b)
    return out


def two_fold(
    make: Callable[[Any], np.ndarray],
    params: Sequence[Any],
    ids: Sequence[str],
    category_of: Mapping[str, str],
    groups: Mapping[str, frozenset[str]],
) -> dict[str, Any]:
    """An honest estimate for a tuned scoring: pick the parameter (``make(param)`` gives the similarity matrix) on
    half the query articles (even positions) by precision@5, score the other half with it, and the reverse;
    neighbours still come from the whole corpus. Ties go to the earlier parameter."""
    halves = [list(ids[0::2]), list(ids[1::2])]
    ranked = [top_k_excluding(make(p), ids, groups, 5) for p in params]

    def p5(i: int, half: list[str]) -> float:
        return float(evaluate(ranked[i], category_of, groups, (5,), queries=half)["precision@5"])

    folds = []
    for tune, test in ((halves[0], halves[1]), (halves[1], halves[0])):
        best = max(range(len(params)), key=lambda i: (p5(i, tune), -i))
        folds.append({"param": params[best], "tuned_on": len(tune), "test_precision@5": p5(best, test)})
        folds[-1]["tested"] = len(test)
    weighted = sum(f["test_precision@5"] * f["tested"] for f in folds) / len(ids)
    in_sample = {
        str(p): round(float(evaluate(r, category_of, groups, (5,))["precision@5"]), 4)
        for p, r in zip(params, ranked, strict=True)
    }
    return {"folds": folds, "precision@5": round(weighted, 4), "precision@5_in_sample": in_sample}


def second_order(sim: np.ndarray, k: int) -> np.ndarray:
    """Shared-neighbour similarity: each article becomes its row of ``sim`` kept at its ``k`` best other articles
    (negatives clipped to 0) plus itself at 1, L2-normalised; two articles score the cosine of those profiles.
    Articles that the same articles resemble score high even when their own cosine is middling, which pulls a
    borderline article (a business story about strikes) toward the company it keeps."""
    m = np.asarray(sim, dtype=np.float32)
    n = len(m)
    k = min(k, n - 1)
    off = m.copy()
    np.fill_diagonal(off, -np.inf)
    rows = np.arange(n)[:, None]
    keep = np.argpartition(-off, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((n, 0), dtype=np.int64)
    profile = np.zeros_like(m)
    profile[rows, keep] = np.maximum(m[rows, keep], 0)
    np.fill_diagonal(profile, 1.0)
    profile /= np.linalg.norm(profile, axis=1, keepdims=True)
    out: np.ndarray = profile @ profile.T
    return out


# -- the index ----------------------------------------------------------------------------------------------------


def corpus_row(article: BbcArticle) -> dict[str, Any]:
    """A BBC row in the corpus format ``indexer/sources.py`` reads."""
    return {
        "id": article.id,
        "title": article.title,
        "paragraphs": list(article.paragraphs),
        "source": "BBC",
        "tags": [article.category],
    }


def expected_hashes(articles: Sequence[BbcArticle]) -> dict[str, str]:
    """Each article's content hash as the indexer computes it from the corpus row (``Article.content_hash``)."""
    out: dict[str, str] = {}
    for a in articles:
        parsed = to_article(corpus_row(a), FieldMap(), a.id)
        if parsed is None:
            raise BenchError(f"{a.id}: no headline and no text")
        out[a.id] = parsed.content_hash()
    return out


def index_hashes(index: Path) -> dict[str, str] | None:
    """id -> content hash of every article in an index, read-only; None when there is no readable index."""
    from search.storage.index import SQLITE

    db = index / SQLITE
    if not (index / "manifest.json").is_file() or not db.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return {str(i): str(h) for i, h in conn.execute("SELECT id, content_hash FROM articles")}
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def index_difference(expected: Mapping[str, str], found: Mapping[str, str] | None) -> dict[str, Any]:
    """How an index's articles differ from the corpus: missing, extra and changed ids (a few of each shown)."""
    if found is None:
        return {"matches": False, "reason": "no index"}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    changed = sorted(a for a in set(expected) & set(found) if expected[a] != found[a])
    return {
        "matches": not (missing or extra or changed),
        "missing": len(missing),
        "extra": len(extra),
        "changed": len(changed),
        "examples": {"missing": missing[:3], "extra": extra[:3], "changed": changed[:3]},
    }


def ensure_index(requested: Path, work: Path, articles: Sequence[BbcArticle]) -> dict[str, Any]:
    """An index holding exactly the BBC corpus: ``requested`` if it does, else ``<work>/index``, built or updated
    by the real CLI (``newsdesk index``) when it does not match either."""
    expected = expected_hashes(articles)
    info: dict[str, Any] = {"requested": str(requested)}
    diff = index_difference(expected, index_hashes(requested))
    info["requested_check"] = diff
    if diff["matches"]:
        info |= {"path": str(requested), "built": False}
        return info
    index = work / "index"
    work_diff = index_difference(expected, index_hashes(index))
    info["work_check_before"] = work_diff
    info["path"] = str(index)
    if work_diff["matches"]:
        info["built"] = False
        return info
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "bbc-corpus.jsonl"
    corpus.write_text("".join(json.dumps(corpus_row(a), ensure_ascii=False) + "\n" for a in articles), "utf-8")
    cmd = [newsdesk_exe(), "index", str(corpus), "--index", str(index)]
    print(f"mlt: building {index} ({' '.join(cmd[1:])})", file=sys.stderr)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"newsdesk index exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    after = index_difference(expected, index_hashes(index))
    if not after["matches"]:
        raise BenchError(f"{index} still differs from the corpus after newsdesk index: {after}")
    info |= {
        "built": True,
        "build_command": cmd,
        "build_seconds": round(seconds, 1),
        "build_summary": proc.stderr.strip().splitlines()[-1:] or None,
    }
    return info


# -- methods ------------------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """The opened index and what the prototypes read from it: stored article and passage vectors by BBC id."""

    service: Any
    article_ids: list[str]  # BBC ids in the order of the rows below
    article_vectors: np.ndarray
    passage_vectors: np.ndarray
    passage_owner: np.ndarray  # row in article_ids of each passage vector
    passage_is_title: np.ndarray  # bool: the headline passage (the others are body passages)
    open_seconds: float


def open_service(index: Path) -> Loaded:
    """``SearchService`` on the index, built as the CLI builds it, plus its stored vectors keyed by BBC id."""
    from search.service import SearchService
    from search.settings import Settings
    from search.storage.index import open_index
    from search.text.embedding import make_embedder

    started = time.perf_counter()
    settings = Settings.from_env(index_dir=index)
    embedder = make_embedder(settings)
    service = SearchService(open_index(index, embedder), embedder, settings)
    open_seconds = time.perf_counter() - started
    store = service.index.sqlite
    aids_list, vecs_list = zip(*store.iter_vectors("articles"), strict=True)
    aids = np.concatenate(aids_list)
    refs = store.article_refs(aids.tolist())
    ids = [refs[int(a)].id for a in aids]
    row_of_aid = {int(a): i for i, a in enumerate(aids)}
    pids_list, pvecs_list = zip(*store.iter_vectors("passages"), strict=True)
    pids = np.concatenate(pids_list)
    owners = service.index.owners.articles_of(pids)
    fields = dict(store.connection().execute("SELECT id, field FROM passages").fetchall())
    return Loaded(
        service=service,
        article_ids=ids,
        article_vectors=np.concatenate(vecs_list),
        passage_vectors=np.concatenate(pvecs_list),
        passage_owner=np.asarray([row_of_aid[int(o)] for o in owners], dtype=np.int64),
        passage_is_title=np.asarray([fields[int(p)] == "title" for p in pids], dtype=bool),
        open_seconds=round(open_seconds, 2),
    )


def newsdesk_rankings(
    service: Any, ids: Sequence[str], groups: Mapping[str, frozenset[str]], need: int
) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, float]]], list[float]]:
    """``service.similar`` for every article, asked for ``need`` plus the article's duplicates (the slack the
    exclusion may take); returns rankings, (id, score) lists for the failure report, and per-call milliseconds."""
    rankings: dict[str, list[str]] = {}
    scored: dict[str, list[tuple[str, float]]] = {}
    ms: list[float] = []
    max_k = int(service.settings.max_k)
    for a in ids:
        k = min(max_k, need + len(groups.get(a, frozenset())))
        started = time.perf_counter()
        response = service.similar(a, k=k)
        ms.append((time.perf_counter() - started) * 1000)
        scored[a] = [(r.article.id, float(r.score)) for r in response.results]
        rankings[a] = [i for i, _ in scored[a]]
    return rankings, scored, ms


def failures(
    scored: Mapping[str, Sequence[tuple[str, float]]],
    by_id: Mapping[str, BbcArticle],
    groups: Mapping[str, frozenset[str]],
    examples: int,
) -> dict[str, Any]:
    """Where a method's top 5 leaves the category: confusion counts (query category -> neighbour category) and the
    articles with the fewest same-category neighbours, with their lists."""
    confusion: dict[str, Counter[str]] = {}
    worst: list[tuple[float, str]] = []
    for a, hits in scored.items():
        cat = by_id[a].category
        top = [(i, s) for i, s in hits if i != a and i not in groups.get(a, frozenset())][:5]
        wrong = [by_id[i].category for i, _ in top if by_id[i].category != cat]
        confusion.setdefault(cat, Counter()).update(wrong)
        worst.append((len(wrong) / 5, a))
    worst.sort(key=lambda t: (-t[0], t[1]))
    shown = []
    for share, a in worst[:examples]:
        top = [(i, s) for i, s in scored[a] if i != a and i not in groups.get(a, frozenset())][:5]
        shown.append(
            {
                "id": a,
                "title": by_id[a].title,
                "wrong_share": share,
                "top5": [{"id": i, "category": by_id[i].category, "title": by_id[i].title, "score": s} for i, s in top],
            }
        )
    return {
        "wrong_neighbour_categories": {c: dict(n.most_common()) for c, n in sorted(confusion.items())},
        "articles_with_a_wrong_neighbour": sum(1 for s, _ in worst if s > 0),
        "worst": shown,
    }


def whole_article_vectors(articles: Sequence[BbcArticle], embedder: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Headline + body of each article embedded as one text; also how many texts the model truncated."""
    texts = [a.text() for a in articles]
    limit = int(embedder.max_seq_length)
    lengths = [int(embedder.count_tokens(t)) for t in texts]
    started = time.perf_counter()
    vectors = np.asarray(embedder.encode(texts, batch_size=32), dtype=np.float32)
    seconds = time.perf_counter() - started
    return vectors, {
        "max_seq_length": limit,
        "texts_truncated": sum(n > limit for n in lengths),
        "median_tokens": int(statistics.median(lengths)),
        "encode_seconds": round(seconds, 1),
    }


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn(*args)
    return out, round(time.perf_counter() - started, 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "bbc")
    parser.add_argument("--index", type=Path, default=ROOT / "bench" / "results" / "reindex" / "index")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "mlt")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mlt.json")
    parser.add_argument("--no-prototypes", action="store_true", help="Skip the candidate scorings (prototypes).")
    parser.add_argument("--examples", type=int, default=12, help="Worst newsdesk articles shown in the report.")
    args = parser.parse_args(argv)
    started_all = time.perf_counter()
    try:
        report = run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report["total_seconds"] = round(time.perf_counter() - started_all, 1)
    save(args.out, report)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def save(path: Path, report: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> dict[str, Any]:
    articles = read_articles(args.data)
    listed = read_duplicate_groups(args.data / "duplicate_groups.json")
    groups = duplicate_groups(articles, listed)
    by_id = {a.id: a for a in articles}
    category_of = {a.id: a.category for a in articles}
    dup = duplicate_stats(articles, listed, groups)
    dup["groups_spanning_categories"] = sum(
        1 for g in {g for g in groups.values() if len(g) > 1} if len({category_of[i] for i in g}) > 1
    )
    report: dict[str, Any] = {
        "benchmark": "bbc-more-like-this",
        "command": [sys.executable, *sys.argv],
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_1min_start": loadavg(),
        },
        "data": {
            "path": str(args.data),
            "articles": len(articles),
            "categories": dict(sorted(Counter(category_of.values()).items())),
            "duplicates": dup,
        },
        "protocol": (
            "For every article: rank other articles, drop the article and its duplicates (duplicate_groups.json "
            "merged with exact body equality), score the first k by category; a short list's missing places are "
            "misses. precision@k is the mean over all articles."
        ),
        "target": {"metric": "newsdesk precision@5", "at_least": TARGET},
    }
    need = max(KS)
    ids = [a.id for a in articles]

    report["index"] = ensure_index(args.index, args.work, articles)
    loaded = open_service(Path(report["index"]["path"]))
    service = loaded.service
    report["index"] |= {
        "open_seconds": loaded.open_seconds,
        "articles": service.index.store.counts()[0],
        "passages": service.index.store.counts()[1],
        "model": service.index.manifest["model"].get("name"),
        "backend": service.index.manifest["model"].get("backend"),
        "chunking": service.index.manifest.get("chunking"),
        "duplicate_threshold": service.settings.duplicate_threshold,
    }
    methods: dict[str, Any] = {}

    print("mlt: newsdesk similar ...", file=sys.stderr)
    rankings, scored, ms = newsdesk_rankings(service, ids, groups, need)
    methods["newsdesk"] = evaluate(rankings, category_of, groups) | {
        "how": f"SearchService.similar(id, k=10 + duplicates), similar_scoring={service.settings.similar_scoring}",
        "seconds": round(sum(ms) / 1000, 2),
        "ms_per_article": {
            "mean": round(statistics.fmean(ms), 3),
            "p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3),
        },
    }

    print("mlt: newsdesk similar, cosine scoring ...", file=sys.stderr)
    cosine = type(service)(service.index, service.embedder, service.settings.replace(similar_scoring="cosine"))
    rankings_cos, _, ms_cos = newsdesk_rankings(cosine, ids, groups, need)
    methods["newsdesk_cosine"] = evaluate(rankings_cos, category_of, groups) | {
        "how": "SearchService.similar(id, k=10 + duplicates), similar_scoring=cosine (article vectors' cosine)",
        "seconds": round(sum(ms_cos) / 1000, 2),
    }

    print("mlt: tf-idf ...", file=sys.stderr)
    texts = [a.text() for a in articles]
    tfidf, tfidf_s = timed(tfidf_similarity, texts)
    ranked_tfidf, knn_s = timed(top_k_excluding, tfidf, ids, groups, need)
    methods["tfidf_mlt"] = evaluate(ranked_tfidf, category_of, groups) | {
        "how": "sklearn TfidfVectorizer(sublinear_tf=True, stop_words='english') on headline + body, cosine",
        "seconds": round(tfidf_s + knn_s, 2),
        "fit_and_all_pairs_seconds": tfidf_s,
    }

    print("mlt: whole-article dense ...", file=sys.stderr)
    from search.text.embedding import SentenceTransformerEmbedder

    embedder = service.embedder
    load_s = 0.0
    if getattr(embedder, "backend", None) != "onnx-int8":
        embedder, load_s = timed(
            lambda: SentenceTransformerEmbedder(service.settings.model, service.settings.threads, backend="onnx-int8")
        )
    whole, whole_info = whole_article_vectors(articles, embedder)
    whole_sim = cosine_matrix(whole)
    ranked_whole, knn_s = timed(top_k_excluding, whole_sim, ids, groups, need)
    methods["dense_whole_article"] = (
        evaluate(ranked_whole, category_of, groups)
        | {
            "how": f"{embedder.name} (onnx-int8) on headline + body as one text, truncated at the model's limit",
            "seconds": round(whole_info["encode_seconds"] + knn_s, 2),
            "model_load_seconds": round(load_s, 2) or None,
        }
        | whole_info
    )

    p5 = {m: methods[m]["precision@5"] for m in methods}
    report["methods"] = methods
    report["ratios"] = {
        f"newsdesk / {m} precision@5": round(p5["newsdesk"] / p5[m], 4) if p5[m] else None
        for m in ("newsdesk_cosine", "tfidf_mlt", "dense_whole_article")
    }
    report["acceptance"] = {
        "newsdesk precision@5": p5["newsdesk"],
        "target": TARGET,
        "met": p5["newsdesk"] >= TARGET,
    }
    report["newsdesk_failures"] = failures(scored, by_id, groups, args.examples)

    if not args.no_prototypes:
        save(args.out, report | {"prototypes": "running"})  # the main figures survive a failing prototype
        print("mlt: prototypes ...", file=sys.stderr)
        report["prototypes"] = prototypes(loaded, ids, category_of, groups, tfidf, whole_sim, need)
    report["machine"]["loadavg_1min_end"] = loadavg()
    return report


def prototypes(
    loaded: Loaded,
    ids: Sequence[str],
    category_of: Mapping[str, str],
    groups: Mapping[str, frozenset[str]],
    tfidf: np.ndarray,
    whole_sim: np.ndarray,
    need: int,
) -> dict[str, Any]:
    """Candidate article scorings on the index's stored vectors, for the recommendations; none is shipped code.
    Matrices are reordered to ``ids`` (the corpus order the baselines use). A scoring with a tuned parameter also
    reports the two-fold estimate (tuned on half the articles, scored on the other half), not only its best."""
    row = {a: i for i, a in enumerate(loaded.article_ids)}
    if set(row) != set(ids):
        raise BenchError("the index's articles are not the corpus's")
    perm = np.asarray([row[a] for a in ids], dtype=np.int64)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    owner = inverse[loaded.passage_owner]
    out: dict[str, Any] = {}

    def record(name: str, how: str, sim: np.ndarray, seconds: float) -> None:
        ranked, knn_s = timed(top_k_excluding, sim, ids, groups, need)
        full = evaluate(ranked, category_of, groups)
        out[name] = {
            "how": how,
            **{f"precision@{k}": full[f"precision@{k}"] for k in KS},
            "per_category_precision@5": {c: v["precision@5"] for c, v in full["per_category"].items()},
            "seconds": round(seconds + knn_s, 2),
        }

    mean_sim, s = timed(cosine_matrix, loaded.article_vectors[perm])
    record(
        "mean_vector", "stored article vectors (mean of all passages), exact cosine: newsdesk's scoring", mean_sim, s
    )
    centred_sim, s = timed(lambda v: cosine_matrix(centred(v)), loaded.article_vectors[perm])
    record("mean_vector_centred", "stored article vectors minus the corpus mean, renormalised", centred_sim, s)
    body = mean_of_passages(loaded.passage_vectors, owner, len(ids), ~loaded.passage_is_title)
    body_sim, s = timed(cosine_matrix, body)
    record("mean_body_passages", "normalised mean of body passages only (no headline passage), cosine", body_sim, s)
    (pair, chamfer), s = timed(passage_pair_similarities, loaded.passage_vectors, owner, len(ids))
    record("passage_best_pair", "max over passage pairs of cosine", pair, s / 2)
    record(
        "passage_mean_best_match", "each passage's best cosine in the other article, averaged both ways", chamfer, s / 2
    )
    del pair, chamfer

    for name, base in (("mean_vector", mean_sim), ("mean_body_passages", body_sim)):
        out[f"fused_{name}_tfidf"] = {
            "how": f"alpha * {name} cosine + (1 - alpha) * tf-idf cosine, each scaled by its row's best; alpha tuned",
            "params": "alpha",
        } | two_fold(partial(fused, base, tfidf), FUSION_ALPHAS, ids, category_of, groups)
    record(
        "fused_whole_article_tfidf_0.5",
        "0.5 * whole-article dense + 0.5 * tf-idf, row-scaled (untuned)",
        fused(whole_sim, tfidf, 0.5),
        0.0,
    )

    started = time.perf_counter()
    for name, base in (("mean_body_passages", body_sim), ("tfidf", tfidf)):
        out[f"second_order_{name}"] = {
            "how": f"second_order({name} cosine, k): cosine of the articles' top-k neighbour profiles; k tuned",
            "params": "k",
        } | two_fold(partial(second_order, base), SECOND_ORDER_KS, ids, category_of, groups)
    grid = [(a, k) for a in (0.4, 0.6) for k in SECOND_ORDER_KS]
    out["second_order_fused_body_tfidf"] = {
        "how": "second_order(fused(mean_body_passages, tf-idf, alpha), k); (alpha, k) tuned",
        "params": "(alpha, k)",
    } | two_fold(lambda p: second_order(fused(body_sim, tfidf, p[0]), p[1]), grid, ids, category_of, groups)
    out["second_order_seconds_all"] = round(time.perf_counter() - started, 1)
    sim, s = timed(lambda: second_order(fused(body_sim, tfidf, 0.4), 160))
    record("second_order_fused_body_tfidf_0.4_k160", "one fixed setting of the above, with precision@1/10", sim, s)
    return out


if __name__ == "__main__":
    sys.exit(main())
