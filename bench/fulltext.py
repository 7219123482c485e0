"""Milvus full-text search (a BM25 Function) against newsdesk's BM25 on SciFact, lexical side only (issue 8).

    .venv/bin/python bench/fulltext.py --data ../shared/data/scifact --out bench/results/fulltext.json

Three rankings of the SciFact corpus (title and abstract as one document) for the test queries, nDCG@10 and
recall@100 by trec_eval's own code (pytrec_eval):

- ``newsdesk``: the in-memory BM25 (search/text/bm25.py), SQLite FTS5's formula and tokenizer (unicode61, diacritics
  removed, Porter stemming, query stopwords dropped): what a directory index and a stateless replica rank with.
- ``unstemmed``: the same BM25 code with Milvus Lite's standard analyzer's tokens (``\\w+``, lower-cased, no
  stemming, no folding): the tokenisation difference alone.
- ``milvus``: Milvus's own full-text search: a VARCHAR field with an analyzer feeding a BM25 Function into a
  SPARSE_FLOAT_VECTOR field, searched with the query text (``SPARSE_INVERTED_INDEX``, metric BM25, k1 1.2, b
  0.75), on Milvus Lite in this process unless ``--milvus-uri`` names a server. The analyzer asks for English
  stemming, which a cluster applies and Milvus Lite 3.2 silently ignores.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.text.bm25 import Postings  # noqa: E402
from search.text.fts import query_terms, stem  # noqa: E402
from search.vectors.milvus.vectors import MilvusConnection  # noqa: E402

ANALYZER = {"tokenizer": "standard", "filter": ["lowercase", {"type": "stemmer", "language": "english"}]}
MAX_TEXT = 65_000  # analysed text per document, under VARCHAR's limit


def read_corpus(data: Path) -> tuple[list[tuple[str, str, str]], dict[str, str], dict[str, dict[str, int]]]:
    docs = []
    with (data / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            docs.append((str(row["_id"]), str(row.get("title") or ""), str(row.get("text") or "")))
    queries = {}
    with (data / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            queries[str(row["_id"])] = str(row["text"])
    qrels: dict[str, dict[str, int]] = {}
    with (data / "qrels" / "test.tsv").open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.strip().split("\t")
            if len(parts) < 3 or not parts[2].lstrip("-").isdigit():
                continue
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return docs, {q: t for q, t in queries.items() if q in qrels}, qrels


def evaluate(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    import pytrec_eval

    scores = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    n = max(len(qrels), 1)
    return {
        "ndcg@10": round(sum(s.get("ndcg_cut_10", 0.0) for s in scores.values()) / n, 4),
        "recall@100": round(sum(s.get("recall_100", 0.0) for s in scores.values()) / n, 4),
    }


_WORD = re.compile(r"\w+", re.UNICODE)


def postings_run(
    docs: Sequence[tuple[str, str, str]], queries: dict[str, str], stemmed: bool
) -> dict[str, dict[str, float]]:
    """The in-memory BM25 over (title, body) columns; unstemmed, with Milvus Lite's standard analyzer's tokens."""
    import search.text.bm25 as bm25

    def lite_counts(text: str) -> tuple[int, Any]:
        from collections import Counter

        tokens = _WORD.findall(text.lower())
        return len(tokens), Counter(tokens)

    names = vars(bm25)  # Postings.build tokenizes through this module's fts_term_counts
    original = names["fts_term_counts"]
    if not stemmed:
        names["fts_term_counts"] = lite_counts
    try:
        postings = Postings.build(((i, (t, b)) for i, (_, t, b) in enumerate(docs)), 2)
    finally:
        names["fts_term_counts"] = original
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries.items():
        terms = query_terms(text)
        phrases = [stem(t) for t in terms] if stemmed else [t.lower() for t in terms]
        scores = postings.scores([p for p in phrases if p], (1.0, 1.0))
        top = scores.argsort()[::-1][:100]
        run[qid] = {docs[int(i)][0]: float(scores[i]) for i in top if scores[i] > 0}
    return run


def milvus_run(
    docs: Sequence[tuple[str, str, str]], queries: dict[str, str], uri: str, directory: Path
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    conn = MilvusConnection(uri, directory)
    client = conn.client
    name = "newsdesk_bench_fulltext"
    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=65_535, enable_analyzer=True, analyzer_params=ANALYZER)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(
            name="bm25", function_type=FunctionType.BM25, input_field_names=["text"], output_field_names=["sparse"]
        )
    )
    index = client.prepare_index_params()
    index.add_index(
        field_name="sparse",
        index_type="SPARSE_INVERTED_INDEX",
        metric_type="BM25",
        params={"bm25_k1": 1.2, "bm25_b": 0.75},
    )
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    started = time.perf_counter()
    for start in range(0, len(docs), 1000):
        rows = [
            {"id": start + i, "text": f"{t}\n{b}"[:MAX_TEXT]} for i, (_, t, b) in enumerate(docs[start : start + 1000])
        ]
        client.insert(name, rows)
    client.flush(name)
    inserted = time.perf_counter() - started
    run: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for qid, text in queries.items():
        hits = client.search(
            name,
            data=[text],
            anns_field="sparse",
            limit=100,
            output_fields=["id"],
            search_params={"metric_type": "BM25"},
        )[0]
        # Milvus Lite 3.2 returns BM25 scores negated (smaller is better on the wire); a cluster returns them as is
        run[qid] = {docs[int(h["id"])][0]: abs(float(h["distance"])) for h in hits}
    searched = time.perf_counter() - started
    client.drop_collection(name)
    conn.close()
    return run, {
        "insert_s": round(inserted, 2),
        "search_ms_per_query": round(searched / max(len(queries), 1) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--milvus-uri", default="fulltext.db", help="Milvus Lite .db (in a temporary directory) or URL")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    docs, queries, qrels = read_corpus(args.data)
    report: dict[str, Any] = {"documents": len(docs), "queries": len(queries), "milvus_uri": args.milvus_uri}
    report["newsdesk"] = evaluate(postings_run(docs, queries, stemmed=True), qrels)
    report["unstemmed"] = evaluate(postings_run(docs, queries, stemmed=False), qrels)
    with tempfile.TemporaryDirectory() as tmp:
        run, timing = milvus_run(docs, queries, args.milvus_uri, Path(tmp))
    report["milvus"] = {**evaluate(run, qrels), **timing}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
