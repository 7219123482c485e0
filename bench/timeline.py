"""Timeline relevance floors, chosen on Reuters topics: which neighbours a timeline may list.

The index is a newsdesk index of a dated Reuters-21578 slice, the 2,500 earliest articles with a topic and a body
of over 200 characters (``--write-slice`` writes it from ``../shared/data/reuters21578``)::

    .venv/bin/python bench/timeline.py --write-slice bench/results/reuters-timeline/articles.jsonl
    .venv/bin/newsdesk index bench/results/reuters-timeline/articles.jsonl --index bench/results/reuters-timeline/index
    .venv/bin/python bench/timeline.py --index bench/results/reuters-timeline/index \\
        --articles bench/results/reuters-timeline/articles.jsonl --out bench/results/timeline.json

Seeds: up to ``--per-topic`` articles (earliest first) of every first topic with at least 5 articles. For each
seed, its article timeline (``SearchService.timeline``) and a query timeline for its headline
(``SearchService.query_timeline``, the seed itself not judged) are taken with no floor; an entry is relevant when
it shares a Reuters topic with the seed. For each candidate floor, entries below it are dropped (an article
timeline keeps its story's articles whatever their score, as the product does) and micro precision, recall
(against the unfloored list) and F1 are computed. Topics are split in two by name order: the floor is chosen on
the even ones (best F1; ties: the higher floor) and reported on the odd ones, never used for choosing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sentences import emit, header  # noqa: E402
from search.service import SearchService  # noqa: E402
from search.settings import Settings  # noqa: E402
from search.storage.index import open_index  # noqa: E402
from search.text.embedding import make_embedder  # noqa: E402

ARTICLE_FLOORS = tuple(round(0.3 + 0.05 * i, 2) for i in range(11))  # 0.30 .. 0.80
QUERY_FLOORS = tuple(round(0.1 + 0.05 * i, 2) for i in range(11))  # 0.10 .. 0.60


@dataclass(frozen=True)
class Entry:
    score: float
    relevant: bool
    kept_anyway: bool  # an article timeline's own story


def prf(lists: list[list[Entry]], floor: float) -> dict[str, float]:
    """Micro precision, recall and F1 of the entries at or above ``floor``, against the unfloored lists."""
    kept = [e for entries in lists for e in entries if e.kept_anyway or e.score >= floor]
    relevant = sum(e.relevant for entries in lists for e in entries)
    hits = sum(e.relevant for e in kept)
    precision = hits / len(kept) if kept else 1.0
    recall = hits / relevant if relevant else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    off_topic = sum(any(not e.relevant and (e.kept_anyway or e.score >= floor) for e in ls) for ls in lists)
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "entries_per_timeline": round(len(kept) / max(len(lists), 1), 2),
        "timelines_with_off_topic_entry": round(off_topic / max(len(lists), 1), 4),
    }


def choose(lists: list[list[Entry]], floors: tuple[float, ...]) -> float:
    return max(floors, key=lambda f: (prf(lists, f)["f1"], f))


def write_slice(data: Path, out: Path, n: int = 2500) -> int:
    """The ``n`` earliest dated Reuters articles with a topic and a body, as newsdesk JSONL (topics become tags)."""
    rows = []
    with gzip.open(data / "articles.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if r.get("date") and r.get("topics") and r.get("paragraphs") and len(" ".join(r["paragraphs"])) > 200:
                rows.append(r)
    rows.sort(key=lambda r: (r["date"], r["id"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for r in rows[:n]:
            keep = {k: r[k] for k in ("id", "title", "date", "paragraphs", "topics")}
            fh.write(json.dumps({**keep, "source": "Reuters"}) + "\n")
    return min(n, len(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-slice", type=Path, default=None, help="write the Reuters slice here and stop")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "reuters21578")
    parser.add_argument("--index", type=Path)
    parser.add_argument("--articles", type=Path, help="the JSONL the index was built from (topics)")
    parser.add_argument("--per-topic", type=int, default=8)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.write_slice:
        print(json.dumps({"articles": write_slice(args.data, args.write_slice), "out": str(args.write_slice)}))
        return
    if args.index is None or args.articles is None:
        parser.error("--index and --articles are required")
    started = time.perf_counter()
    topics: dict[str, set[str]] = {}
    titles: dict[str, str] = {}
    by_topic: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with args.articles.open(encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            topics[r["id"]] = set(r["topics"])
            titles[r["id"]] = r["title"]
            by_topic[r["topics"][0]].append((r["date"], r["id"]))
    settings = Settings(index_dir=args.index, timeline_min_similarity=-1.0, timeline_min_relevance=-1.0)
    embedder = make_embedder(settings)
    service = SearchService(open_index(args.index, embedder), embedder, settings)
    names = sorted(t for t, members in by_topic.items() if len(members) >= 5)
    split = {"tuning": names[0::2], "heldout": names[1::2]}
    lists: dict[str, dict[str, list[list[Entry]]]] = {"article": {}, "query": {}}
    for part, part_topics in split.items():
        article_lists: list[list[Entry]] = []
        query_lists: list[list[Entry]] = []
        for topic in part_topics:
            for _, seed in sorted(by_topic[topic])[: args.per_topic]:
                line = service.timeline(seed, k=args.k)
                article_lists.append(
                    [
                        Entry(e.score, bool(topics.get(e.article.id, set()) & topics[seed]), e.same_story)
                        for e in line.entries
                        if not e.is_self
                    ]
                )
                if not titles[seed].strip():
                    continue
                q = service.query_timeline(titles[seed], k=args.k, mode="dense")
                query_lists.append(
                    [
                        Entry(e.score, bool(topics.get(e.article.id, set()) & topics[seed]), False)
                        for e in q.entries
                        if e.article.id != seed
                    ]
                )
        lists["article"][part] = article_lists
        lists["query"][part] = query_lists
    report: dict[str, Any] = {
        **header("timeline.py"),
        "topics": {part: len(ts) for part, ts in split.items()},
        "timelines": {kind: {p: len(v) for p, v in parts.items()} for kind, parts in lists.items()},
    }
    product = Settings()  # the floors the product ships: what a before/after of the index compares
    shipped = {"article": product.timeline_min_similarity, "query": product.timeline_min_relevance}
    for kind, floors in (("article", ARTICLE_FLOORS), ("query", QUERY_FLOORS)):
        chosen = choose(lists[kind]["tuning"], floors)
        report[kind] = {
            "chosen_floor": chosen,
            "no_floor": {p: prf(v, -1.0) for p, v in lists[kind].items()},
            "at_chosen": {p: prf(v, chosen) for p, v in lists[kind].items()},
            "product_floor": shipped[kind],
            "at_product_floor": {p: prf(v, shipped[kind]) for p, v in lists[kind].items()},
            "grid_tuning": {str(f): prf(lists[kind]["tuning"], f) for f in floors},
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    emit(report, args.out)


if __name__ == "__main__":
    main()
