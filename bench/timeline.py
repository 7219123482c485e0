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

``--vectors passage-mean`` (or ``mix:A``) serves other article vectors than the stored ones, and ``--stories
0.6/3,0.54/2`` groups the articles again at each story setting (``assign_stories``, in memory, on those vectors) and
scores the article timelines under both rules, ``keep`` (the story stays whatever its score) and ``floor`` (its
articles must reach the floor too), for every floor on both halves: the inputs of ``bench/story_choice.py``.
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
from bench.stories import article_vectors, vector_kind  # noqa: E402
from search.news.stories import StoryConfig, assign_stories  # noqa: E402
from search.ranking.catalog import NO_DATE, _Layered, _members  # noqa: E402
from search.service import SearchService  # noqa: E402
from search.settings import Settings  # noqa: E402
from search.storage.index import Index, open_index  # noqa: E402
from search.text.embedding import make_embedder  # noqa: E402

ARTICLE_FLOORS = tuple(round(0.3 + 0.05 * i, 2) for i in range(11))  # 0.30 .. 0.80
QUERY_FLOORS = tuple(round(0.1 + 0.05 * i, 2) for i in range(11))  # 0.10 .. 0.60


@dataclass(frozen=True)
class Entry:
    score: float
    relevant: bool
    kept_anyway: bool  # an article timeline's own story


def prf(lists: list[list[Entry]], floor: float, *, keep_story: bool = True) -> dict[str, float]:
    """Micro precision, recall and F1 of the entries at or above ``floor``, against the unfloored lists; with
    ``keep_story`` an article timeline's own story stays whatever its score (the product's rule), without it the
    story's articles must reach the floor too."""
    kept = [e for entries in lists for e in entries if (keep_story and e.kept_anyway) or e.score >= floor]
    relevant = sum(e.relevant for entries in lists for e in entries)
    hits = sum(e.relevant for e in kept)
    precision = hits / len(kept) if kept else 1.0
    recall = hits / relevant if relevant else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    off_topic = sum(
        any(not e.relevant and ((keep_story and e.kept_anyway) or e.score >= floor) for e in ls) for ls in lists
    )
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "entries_per_timeline": round(len(kept) / max(len(lists), 1), 2),
        "timelines_with_off_topic_entry": round(off_topic / max(len(lists), 1), 4),
    }


def choose(lists: list[list[Entry]], floors: tuple[float, ...], *, keep_story: bool = True) -> float:
    return max(floors, key=lambda f: (prf(lists, f, keep_story=keep_story)["f1"], f))


def story_setting(text: str) -> tuple[float, int]:
    """``threshold/window_days``, e.g. ``0.6/2``."""
    threshold, _, window = text.partition("/")
    try:
        return float(threshold), int(window)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected threshold/window_days, e.g. 0.6/2") from None


def use_vectors(index: Index, kind: str) -> None:
    """Serve ``kind`` article vectors (bench/stories.py's ``article_vectors``) from this open index, in memory: the
    mapped FAISS base is never written (a store changes its files only when saved)."""
    if kind == "stored":
        return
    vectors = article_vectors(index, kind)
    index.articles.remove(index.catalog.aids)
    index.articles.add(index.catalog.aids, vectors)


def relabel_stories(index: Index, threshold: float, window: int) -> None:
    """Group the index's articles into stories again with the product's ``assign_stories`` at this setting, on the
    article vectors it serves, in memory: what an index built with that setting would label (a build labels every
    article in date order against the ones before it, as this does)."""
    catalog = index.catalog
    vectors = index.articles.reconstruct_batch(catalog.aids)
    days = [None if d == NO_DATE else int(d) for d in catalog.days.tolist()]
    labels = assign_stories(catalog.ids, vectors, days, config=StoryConfig(threshold, window))
    catalog.story_labels = labels
    catalog._stories = _Layered(_members(labels, catalog.aids.tolist()))


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
    parser.add_argument(
        "--vectors",
        type=vector_kind,
        default="stored",
        help="the article vectors timelines (and --stories) use, in memory: stored, passage-mean or mix:A "
        "(bench/stories.py)",
    )
    parser.add_argument(
        "--stories",
        type=lambda text: [story_setting(x) for x in text.split(",") if x],
        default=[],
        help="story settings threshold/window_days,... : for each, the articles are grouped again in memory and the "
        "article timelines scored under both rules (keep: a story's articles stay whatever their score; floor: they "
        "must reach the floor too)",
    )
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
    index = open_index(args.index, embedder)
    use_vectors(index, args.vectors)
    service = SearchService(index, embedder, settings)
    names = sorted(t for t, members in by_topic.items() if len(members) >= 5)
    split = {"tuning": names[0::2], "heldout": names[1::2]}
    seeds = {part: [s for t in ts for _, s in sorted(by_topic[t])[: args.per_topic]] for part, ts in split.items()}

    def article_lists() -> dict[str, list[list[Entry]]]:
        out: dict[str, list[list[Entry]]] = {}
        for part, part_seeds in seeds.items():
            out[part] = [
                [
                    Entry(e.score, bool(topics.get(e.article.id, set()) & topics[seed]), e.same_story)
                    for e in service.timeline(seed, k=args.k).entries
                    if not e.is_self
                ]
                for seed in part_seeds
            ]
        return out

    query: dict[str, list[list[Entry]]] = {}
    for part, part_seeds in seeds.items():
        query[part] = [
            [
                Entry(e.score, bool(topics.get(e.article.id, set()) & topics[seed]), False)
                for e in service.query_timeline(titles[seed], k=args.k, mode="dense").entries
                if e.article.id != seed
            ]
            for seed in part_seeds
            if titles[seed].strip()
        ]
    lists: dict[str, dict[str, list[list[Entry]]]] = {"article": article_lists(), "query": query}
    report: dict[str, Any] = {
        **header("timeline.py"),
        "vectors": args.vectors,
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
    report["stories"] = []
    for threshold, window in args.stories:
        relabel_stories(index, threshold, window)
        relabelled = article_lists()
        entry: dict[str, Any] = {"threshold": threshold, "window_days": window}
        for rule, keep_story in (("keep", True), ("floor", False)):
            chosen = choose(relabelled["tuning"], ARTICLE_FLOORS, keep_story=keep_story)
            entry[rule] = {
                "chosen_floor": chosen,
                "at_chosen": {p: prf(v, chosen, keep_story=keep_story) for p, v in relabelled.items()},
                "at_product_floor": {
                    p: prf(v, shipped["article"], keep_story=keep_story) for p, v in relabelled.items()
                },
                "grid": {
                    p: {str(f): prf(v, f, keep_story=keep_story) for f in ARTICLE_FLOORS} for p, v in relabelled.items()
                },
            }
        report["stories"].append(entry)
        print(
            json.dumps(
                {k: entry[k] for k in ("threshold", "window_days")}
                | {r: (entry[r]["chosen_floor"], entry[r]["at_chosen"]["tuning"]["f1"]) for r in ("keep", "floor")}
            ),
            file=sys.stderr,
        )
    report["seconds"] = round(time.perf_counter() - started, 1)
    emit(report, args.out)


if __name__ == "__main__":
    main()
