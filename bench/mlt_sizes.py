"""More like this on small corpora: from what size do shared-neighbour profiles beat plain cosine?

    .venv/bin/python bench/mlt_sizes.py --index DIR --sizes 50,100,200,400,800 --seeds 5 \\
        --out bench/results/mlt_sizes.json

``similar()`` ranks by shared-neighbour profiles (``search/news/neighbours.py``): each article's profile holds its
``min(160, n / 10)`` nearest articles, so on an 18-article corpus a profile is one neighbour and most articles share
none (the sample showed 13 of 17 results at similarity 0.000, filled up in cosine order). This measures where the
profiles start to pay: BBC News subsampled at each size (``--seeds`` random draws per size, the same draws for both
scorings), and within each draw, for every article, its BBC category precision@5 among the others (its exact
duplicates excluded, as in ``bench/mlt.py``) under

- ``cosine``: the article vectors' cosine (what ``similar_scoring=cosine`` ranks by);
- ``profile``: ``NeighbourGraph.build`` over the draw alone (its own tf-idf and neighbours, exactly as an index of
  those articles would build it), ranked by ``NeighbourGraph.rank``, then the articles sharing no neighbour in
  cosine order, as ``RelatedFinder`` fills a list.

The article vectors and texts are read from ``--index``, any index of BBC articles in the ``bench/mlt.py`` corpus
format (ids and categories from ``--data``); article vectors do not depend on the rest of the corpus, so a draw
needs no re-embedding. ``zero_scores@5`` is the share of profile top-5 entries that share no neighbour with the
article (shown as similarity 0). The report's ``rule`` is the smallest size from which profiles beat cosine's
precision@5 in every draw, at that size and every larger one measured: "measured to help", not "as good on
average" (below 20 articles a profile holds one neighbour and the mean difference is within the draws' noise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.mlt import (  # noqa: E402
    duplicate_groups,
    evaluate,
    open_service,
    read_articles,
    read_duplicate_groups,
    save,
    top_k_excluding,
)
from bench.scifact import git_commit, loadavg  # noqa: E402
from search.news.neighbours import DEFAULT_NEIGHBOURS, NeighbourGraph  # noqa: E402
from search.text.bm25 import Postings  # noqa: E402

DEPTH = 20  # ranked places kept per article: enough for precision@10 after dropping duplicates


def draw_rankings(
    ids: Sequence[str],
    keys: np.ndarray,
    vectors: np.ndarray,
    texts: dict[int, tuple[str, list[str]]],
    groups: dict[str, frozenset[str]],
) -> tuple[dict[str, list[str]], dict[str, list[str]], float]:
    """(cosine rankings, profile rankings, share of profile top-5 places with no shared neighbour) of one draw."""
    cosine = top_k_excluding(vectors @ vectors.T, ids, groups, DEPTH)
    order = np.argsort(keys)
    keys, vectors, ids = keys[order], vectors[order], [ids[i] for i in order.tolist()]
    rows = [(int(k), (texts[int(k)][0], "\n".join(texts[int(k)][1]))) for k in keys.tolist()]
    graph = NeighbourGraph.build(keys, vectors, Postings.build(rows, 2), 0, DEFAULT_NEIGHBOURS)
    id_of = dict(zip(keys.tolist(), ids, strict=True))
    profile: dict[str, list[str]] = {}
    zero = 0
    for key in keys.tolist():
        me = id_of[key]
        ranked, _ = graph.rank(key)
        shared = [id_of[int(k)] for k in ranked.tolist() if id_of[int(k)] not in groups.get(me, frozenset())]
        seen = set(shared)
        rest = [a for a in cosine[me] if a not in seen]
        profile[me] = (shared + rest)[:DEPTH]
        zero += max(0, 5 - len(shared))
    return cosine, profile, zero / (5 * len(keys))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "bbc")
    parser.add_argument("--index", type=Path, required=True, help="An index of BBC articles (bench/mlt.py format).")
    parser.add_argument("--sizes", default="50,100,200,400,800", help="Comma-separated corpus sizes.")
    parser.add_argument("--seeds", type=int, default=5, help="Random draws per size.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mlt_sizes.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    articles = read_articles(args.data)
    groups = duplicate_groups(articles, read_duplicate_groups(args.data / "duplicate_groups.json"))
    category_of = {a.id: a.category for a in articles}
    loaded = open_service(args.index)
    store = loaded.service.index.store
    catalog = loaded.service.index.catalog
    key_of = dict(zip(catalog.ids, catalog.aids.tolist(), strict=True))
    ids_all = [i for i in loaded.article_ids if i in category_of]
    vec_of = dict(zip(loaded.article_ids, loaded.article_vectors, strict=True))
    texts = {aid: (title, paragraphs) for aid, title, paragraphs in store.article_text_rows()}

    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    report: dict[str, Any] = {
        "command": [sys.executable, *sys.argv],
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "loadavg_1min_start": loadavg()},
        "index": {"path": str(args.index), "articles": len(ids_all)},
        "neighbours": {"k": DEFAULT_NEIGHBOURS.k, "dense_weight": DEFAULT_NEIGHBOURS.dense_weight},
        "seeds": args.seeds,
        "sizes": {},
    }
    for n in sizes:
        if n > len(ids_all):
            report["sizes"][str(n)] = {"skipped": f"the index holds {len(ids_all)} articles"}
            continue
        per: dict[str, list[float]] = {"cosine": [], "profile": [], "zero": []}
        draws = args.seeds if n < len(ids_all) else 1  # the whole index is one draw
        for seed in range(draws):
            rng = np.random.default_rng(seed)
            ids = sorted(rng.choice(ids_all, size=n, replace=False).tolist())
            keys = np.asarray([key_of[i] for i in ids], dtype=np.int64)
            vectors = np.stack([vec_of[i] for i in ids]).astype(np.float32)
            sub_groups = {a: groups[a] & frozenset(ids) for a in ids}
            cats = {a: category_of[a] for a in ids}
            cosine, profile, zero = draw_rankings(ids, keys, vectors, texts, sub_groups)
            per["cosine"].append(evaluate(cosine, cats, sub_groups, ks=(5,))["precision@5"])
            per["profile"].append(evaluate(profile, cats, sub_groups, ks=(5,))["precision@5"])
            per["zero"].append(zero)
        diff = [p - c for p, c in zip(per["profile"], per["cosine"], strict=True)]
        report["sizes"][str(n)] = {
            "draws": draws,
            "profile_k": min(DEFAULT_NEIGHBOURS.k, n // 10),
            "cosine_precision@5": round(statistics.fmean(per["cosine"]), 4),
            "profile_precision@5": round(statistics.fmean(per["profile"]), 4),
            "profile_minus_cosine": round(statistics.fmean(diff), 4),
            "profile_minus_cosine_range": [round(min(diff), 4), round(max(diff), 4)],
            "profile_zero_scores@5": round(statistics.fmean(per["zero"]), 4),
        }
    measured = [n for n in sizes if "profile_minus_cosine" in report["sizes"][str(n)]]
    helps = [n for n in measured if report["sizes"][str(n)]["profile_minus_cosine_range"][0] > 0]
    rule = next((n for n in measured if all(m in helps for m in measured if m >= n)), None)
    report["rule"] = {
        "profiles_from_articles": rule,
        "how": "smallest size measured from which profiles beat cosine's precision@5 in every draw, at that size "
        "and every larger one",
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["machine"]["loadavg_1min_end"] = loadavg()
    save(args.out, report)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
