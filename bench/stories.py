"""Story grouping quality on Reuters-21578, and the threshold and window the product uses, chosen by measurement.

One command::

    .venv/bin/python bench/stories.py --index bench/results/reuters/index --out bench/results/stories.json

The index is a newsdesk index of ``../shared/data/reuters21578/articles.jsonl.gz`` (``newsdesk index`` it first;
topics become tags). Stories are re-grouped here from the index's article vectors and dates by the product's own
``assign_stories`` for each (threshold, window) of a grid, and compared with a reference grouping that Reuters
does not have but approximates: articles of the same first topic in the same ISO week (articles without a topic
are grouped but not scored). The proxy is coarse (one topic-week holds many events, so completeness against it is
low for any event grouping); it ranks settings, it does not measure absolute quality.

Reported per setting: purity (share of each story's articles in its majority reference group, weighted by story
size), completeness (the same with the roles swapped), their harmonic mean, B-cubed precision and recall, the
number of stories and the share of singletons. The chosen setting maximises the harmonic mean of purity and
completeness among settings with purity >= ``--min-purity`` (a story should not mix events; default 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scifact import git_commit, git_dirty  # noqa: E402
from search.news.stories import StoryConfig, assign_stories  # noqa: E402
from search.ranking.catalog import NO_DATE  # noqa: E402

THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
WINDOWS = (1, 3, 7)
EPOCH = date(1970, 1, 1).toordinal()


def purity(clusters: Sequence[str], classes: Sequence[str]) -> float:
    """Share of items in their cluster's majority class (weighted by cluster size)."""
    by_cluster: dict[str, Counter[str]] = defaultdict(Counter)
    for c, k in zip(clusters, classes, strict=True):
        by_cluster[c][k] += 1
    return sum(max(cnt.values()) for cnt in by_cluster.values()) / max(len(clusters), 1)


def bcubed(clusters: Sequence[str], classes: Sequence[str]) -> tuple[float, float]:
    """B-cubed precision and recall (Bagga and Baldwin, 1998), averaged over items."""
    pair = Counter(zip(clusters, classes, strict=True))
    size_c, size_k = Counter(clusters), Counter(classes)
    n = len(clusters)
    if n == 0:
        return 0.0, 0.0
    p = sum(pair[(c, k)] / size_c[c] for c, k in zip(clusters, classes, strict=True)) / n
    r = sum(pair[(c, k)] / size_k[k] for c, k in zip(clusters, classes, strict=True)) / n
    return p, r


def scores(stories: Sequence[str], reference: Sequence[str | None]) -> dict[str, float]:
    scored = [(s, r) for s, r in zip(stories, reference, strict=True) if r is not None]
    clusters, classes = [s for s, _ in scored], [r for _, r in scored if r is not None]
    pur, comp = purity(clusters, classes), purity(classes, clusters)
    bp, br = bcubed(clusters, classes)
    sizes = Counter(stories)
    return {
        "purity": round(pur, 4),
        "completeness": round(comp, 4),
        "f": round(2 * pur * comp / (pur + comp), 4) if pur + comp else 0.0,
        "bcubed_precision": round(bp, 4),
        "bcubed_recall": round(br, 4),
        "stories": len(sizes),
        "singleton_share": round(sum(1 for s in stories if sizes[s] == 1) / max(len(stories), 1), 4),
    }


def reference_groups(days: Sequence[int | None], tags: Sequence[Sequence[str]]) -> list[str | None]:
    """First topic and ISO week; None for an article without a topic or a date."""
    out: list[str | None] = []
    for d, t in zip(days, tags, strict=True):
        if d is None or not t:
            out.append(None)
            continue
        year, week, _ = date.fromordinal(d + EPOCH).isocalendar()
        out.append(f"{t[0]}|{year}-W{week:02d}")
    return out


def dated_rows(days: Sequence[int | None], since: date | None, until: date | None) -> np.ndarray:
    """Rows of the articles dated in [``since``, ``until``) (every row when neither is given; an undated article only
    then): the part of the index a dated split groups and scores."""
    if since is None and until is None:
        return np.arange(len(days))
    lo = since.toordinal() - EPOCH if since else None
    hi = until.toordinal() - EPOCH if until else None
    return np.asarray(
        [r for r, d in enumerate(days) if d is not None and (lo is None or d >= lo) and (hi is None or d < hi)],
        dtype=np.int64,
    )


def passage_means(store: Any, aids: np.ndarray) -> np.ndarray:
    """Each article's normalised mean of its stored passage vectors, in ``aids`` order: what an index built before
    issue 18 stored as the article vector (indexer/build.py's ``_mean_vector`` then), so stories from both kinds of
    article vector are compared on the very same passages."""
    pids, owners = store.passage_owners()
    row_of = {int(a): i for i, a in enumerate(np.asarray(aids).tolist())}
    owner_row = dict(zip(pids.tolist(), (row_of.get(int(o), -1) for o in owners.tolist()), strict=True))
    out: np.ndarray | None = None
    for ids, vecs in store.iter_vectors("passages"):
        if out is None:
            out = np.zeros((len(row_of), vecs.shape[1]), dtype=np.float64)
        rows = np.asarray([owner_row.get(int(p), -1) for p in ids.tolist()], dtype=np.int64)
        np.add.at(out, rows[rows >= 0], vecs[rows >= 0])
    if out is None:
        return np.zeros((len(row_of), 0), dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    means: np.ndarray = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return means


def vector_kind(text: str) -> str:
    """``stored``, ``passage-mean`` or ``mix:A`` (0 <= A <= 1), checked for argparse."""
    if text in ("stored", "passage-mean"):
        return text
    if text.startswith("mix:"):
        try:
            weight = float(text[4:])
        except ValueError:
            weight = -1.0
        if 0.0 <= weight <= 1.0:
            return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected stored, passage-mean or mix:A with A in [0, 1]")


def article_vectors(index: Any, kind: str) -> np.ndarray:
    """The article vectors of ``kind`` in catalog order: the stored ones (headline + lead since issue 18), the
    normalised means of passages (before it), or ``mix:A``, normalise(A * stored + (1 - A) * mean), both normalised
    first (the issue's "compare with today's mean of passages and with mixes")."""
    aids = index.catalog.aids
    if kind == "stored":
        stored: np.ndarray = index.articles.reconstruct_batch(aids)
        return stored
    means = passage_means(index.store, aids)
    if kind == "passage-mean":
        return means
    weight = float(kind.removeprefix("mix:"))
    mixed = weight * index.articles.reconstruct_batch(aids).astype(np.float64) + (1.0 - weight) * means
    norms = np.linalg.norm(mixed, axis=1, keepdims=True)
    out: np.ndarray = (mixed / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--index", type=Path, default=ROOT / "bench/results/reuters/index")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/stories.json")
    parser.add_argument("--min-purity", type=float, default=0.9)
    parser.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    parser.add_argument("--windows", default=",".join(map(str, WINDOWS)))
    parser.add_argument(
        "--vectors",
        type=vector_kind,
        default="stored",
        help="stored: the index's article vectors (headline + lead since issue 18); passage-mean: each article's "
        "normalised mean of its stored passage vectors, the article vector before issue 18 (before/after on one "
        "index); mix:A: normalise(A * stored + (1 - A) * passage-mean)",
    )
    parser.add_argument(
        "--since",
        type=date.fromisoformat,
        default=None,
        help="group and score only the articles dated on or after this ISO date (a dated split: tune on one part of "
        "the index, confirm on the other)",
    )
    parser.add_argument("--until", type=date.fromisoformat, default=None, help="... and dated before this ISO date")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from search.storage.index import open_index

    if not (args.index / "manifest.json").is_file():
        print(
            f"error: no index at {args.index} (newsdesk index ../shared/data/reuters21578/articles.jsonl.gz "
            f"--index {args.index})",
            file=sys.stderr,
        )
        return 1
    index = open_index(args.index, None)
    catalog = index.catalog
    vectors = article_vectors(index, args.vectors)
    days: list[int | None] = [None if d == NO_DATE else int(d) for d in catalog.days.tolist()]
    tags = [
        [catalog.tag_names[c] for c in catalog.tag_codes[catalog.tag_offsets[r] : catalog.tag_offsets[r + 1]]]
        for r in range(len(catalog))
    ]
    rows = dated_rows(days, args.since, args.until)
    ids = [catalog.ids[r] for r in rows]
    vectors, days, tags = vectors[rows], [days[r] for r in rows], [tags[r] for r in rows]
    reference = reference_groups(days, tags)
    grid: list[dict[str, Any]] = []
    for threshold in [float(x) for x in args.thresholds.split(",")]:
        for window in [int(x) for x in args.windows.split(",")]:
            started = time.perf_counter()
            labels = assign_stories(ids, vectors, days, config=StoryConfig(threshold, window))
            row = {"threshold": threshold, "window_days": window, **scores(labels, reference)}
            row["seconds"] = round(time.perf_counter() - started, 1)
            grid.append(row)
            print(json.dumps(row), file=sys.stderr)
    eligible = [g for g in grid if g["purity"] >= args.min_purity] or grid
    chosen = max(eligible, key=lambda g: (g["f"], g["purity"]))
    baselines = {"every_article_alone": scores(ids, reference)}
    report = {
        "benchmark": "stories",
        "index": str(args.index),
        "vectors": args.vectors,
        "articles": len(ids),
        "dates": {"since": str(args.since) if args.since else None, "until": str(args.until) if args.until else None},
        "scored_articles": sum(r is not None for r in reference),
        "reference": "same first topic and ISO week (Reuters-21578 topics); articles without topic or date unscored",
        "grid": grid,
        "baselines": baselines,
        "min_purity": args.min_purity,
        "chosen": chosen,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
    }
    text = json.dumps(report, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(
        f"chosen: threshold {chosen['threshold']} window {chosen['window_days']} days: purity {chosen['purity']} "
        f"completeness {chosen['completeness']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
