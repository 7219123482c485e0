"""Which sentence the results page marks: is it the one that holds the answer? Measured on RealTime QA.

One command::

    .venv/bin/python bench/sentences.py --out bench/results/sentences.json

For each question (dev: the first ``--dev`` 2023 questions; held-out: the last ``--heldout`` 2024 questions, later
in time, never used for tuning) the articles a web search returned for it are cut into passages by the product's
chunker; the first passage (in search-result order) in which an answer string occurs exactly once and that has at
least two sentences is the question's passage, and the sentence holding that occurrence is the right one. Each
scorer marks one sentence of that passage for the question; reported is the share of questions where it marked the
right one.

Scorers: ``first`` (the lead sentence, a baseline), ``stored`` (the sentence vectors an index stores: late-chunked
from the passage's own forward pass, as the indexer makes them), ``standalone`` (each sentence embedded alone, as
the highlighter does for an index without stored vectors), and each vector plus ``w`` times the sentence's
IDF-weighted share of the query's terms (``search.ranking.highlight.sentence_scores``; IDF over the collection's
passages),
for a grid of ``w`` chosen on dev. Also reported: the cosine of each question to its answering passage against
its cosine to the other questions' answering passages, which sets the results page's relevance labels
(``search/pages.py``). The splitter (``search.text.chunking.sentence_spans``) decides the sentences, so its
changes are measured by running this before and after them (the questions kept can differ slightly: the count is
reported).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.realtimeqa import pick  # noqa: E402
from bench.scifact import git_commit, git_dirty  # noqa: E402
from indexer.build import embedding_input, make_chunker  # noqa: E402
from search.models import Article  # noqa: E402
from search.ranking.highlight import sentence_scores  # noqa: E402
from search.settings import Settings  # noqa: E402
from search.text.bm25 import idf  # noqa: E402
from search.text.chunking import Chunk, sentence_spans  # noqa: E402
from search.text.embedding import Embedder, make_embedder  # noqa: E402
from search.text.fts import fts_term_counts, query_terms, stem  # noqa: E402

WEIGHTS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 1.0)


@dataclass(frozen=True)
class Case:
    """One question's passage and which of its sentences holds the answer."""

    question: str
    article: Article
    chunk: Chunk
    spans: list[tuple[int, int]]
    answer_sentence: int


def select_questions(data: Path, n_dev: int, n_heldout: int) -> dict[str, list[dict[str, Any]]]:
    """Dev and held-out questions as ``bench/realtimeqa.py`` picks them, each with its search results."""
    dev, heldout, results = pick(data, n_dev, n_heldout)
    for q in dev + heldout:
        q["articles"] = results[q["question_id"]]
    return {"dev": dev, "heldout": heldout}


def header(name: str) -> dict[str, Any]:
    """What every bench report starts with: the command, the commit and the machine."""
    return {
        "command": " ".join([f"bench/{name}", *sys.argv[1:]]),
        "commit": git_commit(),
        "dirty": git_dirty(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
    }


def emit(report: dict[str, Any], out: Path | None) -> None:
    """Print the report, and write it to ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def load_articles(data: Path, wanted: set[str]) -> dict[str, Article]:
    out: dict[str, Article] = {}
    with gzip.open(data / "news_corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record["id"] in wanted:
                paragraphs = tuple(p for p in record.get("paragraphs") or () if p and p.strip())
                out[record["id"]] = Article(id=record["id"], title=record.get("title") or "", paragraphs=paragraphs)
    return out


def find_case(question: dict[str, Any], articles: dict[str, Article], chunks: dict[str, list[Chunk]]) -> Case | None:
    """The first passage holding an answer string exactly once, in a passage of two or more sentences."""
    answers = [a.strip() for a in question["answer_text"] if a.strip()]
    for aid in question["articles"]:
        article = articles.get(aid)
        if article is None:
            continue
        for chunk in chunks[aid]:
            if chunk.field != "body":
                continue
            folded = chunk.text.casefold()
            for answer in answers:
                hits = [m.start() for m in re.finditer(re.escape(answer.casefold()), folded)]
                if len(hits) != 1:
                    continue
                spans = [(s.start, s.end) for s in sentence_spans(chunk.text)]
                if len(spans) < 2:
                    continue
                at, end = hits[0], hits[0] + len(answer)
                inside = [i for i, (s, e) in enumerate(spans) if s <= at and end <= e]
                if len(inside) == 1:
                    return Case(question["question"], article, chunk, spans, inside[0])
    return None


def term_weights(query: str, df: Counter[str], rows: int) -> dict[str, float]:
    terms = (stem(t) for t in query_terms(query))
    return {t: idf(rows, df[t]) for t in terms if df[t]}


def measure(cases: list[Case], embedder: Embedder, settings: Settings, df: Counter[str], rows: int) -> dict[str, Any]:
    """Accuracy of each scorer on ``cases``."""
    queries = embedder.encode([c.question for c in cases], batch_size=32)
    inputs = [embedding_input(c.article, c.chunk, settings.title_context) for c in cases]
    shifted = [
        [(len(t) - len(c.chunk.text) + s, len(t) - len(c.chunk.text) + e) for s, e in c.spans]
        for c, t in zip(cases, inputs, strict=True)
    ]
    passages, stored = embedder.encode_spans(inputs, shifted, batch_size=32)
    texts = [[c.chunk.text[s:e] for s, e in c.spans] for c in cases]
    flat = embedder.encode([t for ts in texts for t in ts], batch_size=64)
    standalone, i = [], 0
    for ts in texts:
        standalone.append(flat[i : i + len(ts)])
        i += len(ts)
    weights = [term_weights(c.question, df, rows) for c in cases]
    right = np.asarray([c.answer_sentence for c in cases])
    out: dict[str, Any] = {
        "questions": len(cases),
        "mean_sentences": round(float(np.mean([len(c.spans) for c in cases])), 2),
    }
    out["first"] = round(float(np.mean(right == 0)), 4)
    for name, vectors in (("stored", stored), ("standalone", standalone)):
        for w in (0.0, *WEIGHTS):
            chosen = [
                int(np.argmax(sentence_scores(v, ts, q, tw, w)))
                for v, ts, q, tw in zip(vectors, texts, queries, weights, strict=True)
            ]
            out[name if w == 0 else f"{name}+lexical@{w}"] = round(float(np.mean(np.asarray(chosen) == right)), 4)
    lexical_only = [
        int(np.argmax(sentence_scores(np.zeros((len(ts), 1)), ts, np.zeros(1), tw, 1.0)))
        for ts, tw in zip(texts, weights, strict=True)
    ]
    # what a passage's cosine to the query says: the answering passage against the other questions' ones
    cosines = queries @ passages.T
    answering = np.diag(cosines)
    others = cosines[~np.eye(len(cases), dtype=bool)]
    out["passage_cosine"] = {
        "answering_median": round(float(np.median(answering)), 4),
        "answering_p25": round(float(np.percentile(answering, 25)), 4),
        "other_p95": round(float(np.percentile(others, 95)), 4) if len(others) else None,
        "other_p99": round(float(np.percentile(others, 99)), 4) if len(others) else None,
    }
    out["lexical-only"] = round(float(np.mean(np.asarray(lexical_only) == right)), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "realtimeqa")
    parser.add_argument("--dev", type=int, default=800)
    parser.add_argument("--heldout", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    settings = Settings()
    embedder = make_embedder(settings)
    chunker = make_chunker(settings, embedder)
    sets = select_questions(args.data, args.dev, args.heldout)
    articles = load_articles(args.data, {a for qs in sets.values() for q in qs for a in q["articles"]})
    # IDF over every passage of the collection (what the index's BM25 side would hold)
    df: Counter[str] = Counter()
    rows = 0
    chunks = {aid: chunker.chunk(article) for aid, article in articles.items()}
    for article_chunks in chunks.values():
        for chunk in article_chunks:
            rows += 1
            df.update(fts_term_counts(chunk.text)[1].keys())
    report: dict[str, Any] = {**header("sentences.py"), "passages_for_idf": rows}
    for name, questions in sets.items():
        cases = [c for q in questions if (c := find_case(q, articles, chunks)) is not None]
        report[name] = measure(cases, embedder, settings, df, rows)
    dev = report["dev"]
    for base in ("stored", "standalone"):
        best = max(WEIGHTS, key=lambda w: (dev[f"{base}+lexical@{w}"], -w))
        report[f"chosen_{base}_weight"] = best
        report[f"heldout_{base}_at_chosen"] = report["heldout"][f"{base}+lexical@{best}"]
    report["seconds"] = round(time.perf_counter() - started, 1)
    emit(report, args.out)


if __name__ == "__main__":
    main()
