"""The ``newsdesk`` command line through click's CliRunner: index every source format, search, batch runs, check.

Each ``index`` or ``search`` invocation loads the model again (cheap once torch is imported: well under a second),
so the number of invocations is kept small.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from click.testing import CliRunner, Result

from api.cli import main, trec_id
from search.service import SearchService
from search.text.embedding import Embedder
from tests.conftest import CORPUS, make_service

CORPUS_IDS = {json.loads(line)["id"] for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()}
RANKED_LINE = re.compile(r"^\s*(\d+)\. \[(-?\d+\.\d{3})\] (.+)  \((.+)\)$")


def invoke(runner: CliRunner, *args: str | Path) -> Result:
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=True)


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, result.output
    assert result.exception is None, result.output


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """Exit 1 through the CLI's own error path (SystemExit, not a crash), one ``error:`` line, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def index_ids(index_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """id -> (title, paragraphs), read from the SQLite store, the index's source of truth."""
    with closing(sqlite3.connect(index_dir / "newsdesk.sqlite")) as conn:
        rows = conn.execute("SELECT id, title, paragraphs FROM articles").fetchall()
    return {r[0]: (r[1], json.loads(r[2])) for r in rows}


def top_id(index_dir: Path, embedder: Embedder, query: str) -> str:
    service: SearchService = make_service(index_dir, embedder)
    try:
        return service.search(query, k=1).results[0].article.id
    finally:
        service.index.close()


def check_passes(runner: CliRunner, index_dir: Path) -> None:
    result = invoke(runner, "check", "--index", index_dir)
    assert_ok(result)
    assert result.stdout.strip().endswith(": ok")
    assert result.stderr == ""


# -- index: every source format --------------------------------------------------------------------------------


def test_index_jsonl_then_check(runner: CliRunner, write_jsonl: Any, tmp_path: Path, embedder: Embedder) -> None:
    source = write_jsonl(
        "news.jsonl",
        [
            {
                "id": "w1",
                "title": "Volcano erupts near island town",
                "text": "Lava and ash forced the island's "
                "residents to leave their homes as the volcano erupted overnight.",
                "date": "2024-05-02",
            },
            {
                "id": "w2",
                "title": "Chess champion retains title",
                "paragraphs": [
                    "The reigning champion won the deciding game of the match after six hours of play.",
                    "It is her third title in a row.",
                ],
            },
            {
                "id": "w3",
                "headline": "Bakery wins prize for sourdough bread",
                "body": "A small bakery was named "
                "the best in the country for its sourdough loaves.\n\nQueues now start at dawn.",
            },
        ],
    )
    target = tmp_path / "idx"
    result = invoke(runner, "index", source, "--index", target)
    assert_ok(result)
    assert "indexed 3 articles" in result.stderr
    check_passes(runner, target)
    stored = index_ids(target)
    assert set(stored) == {"w1", "w2", "w3"}
    assert stored["w3"] == (
        "Bakery wins prize for sourdough bread",
        ["A small bakery was named the best in the country for its sourdough loaves.", "Queues now start at dawn."],
    )
    assert top_id(target, embedder, "lava from an eruption") == "w1"

    again = invoke(runner, "index", source, "--index", target)
    assert_ok(again)
    assert "0 added, 0 changed, 0 metadata updated, 0 deleted, 3 unchanged; 0 texts embedded" in again.stderr
    rebuilt = invoke(runner, "index", source, "--index", target, "--rebuild")
    assert_ok(rebuilt)
    assert "full build: --rebuild was given" in rebuilt.stderr
    check_passes(runner, target)


def test_index_gzipped_jsonl_then_check(runner: CliRunner, tmp_path: Path, embedder: Embedder) -> None:
    source = tmp_path / "news.jsonl.gz"
    rows = [
        {
            "_id": "g1",
            "title": "Heatwave breaks temperature records",
            "text": "Temperatures passed 40 degrees in several cities, breaking records set a decade ago.",
        },
        {
            "_id": "g2",
            "title": "Orchestra tours South America",
            "text": "The national orchestra begins a twelve-concert tour of South America next month.",
        },
    ]
    with gzip.open(source, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    target = tmp_path / "idx"
    assert_ok(invoke(runner, "index", source, "--index", target, "--quiet"))
    check_passes(runner, target)
    assert set(index_ids(target)) == {"g1", "g2"}
    assert top_id(target, embedder, "hot weather") == "g1"


def test_index_csv_with_mapped_fields_then_check(runner: CliRunner, tmp_path: Path, embedder: Embedder) -> None:
    source = tmp_path / "feed.csv"
    with source.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ref", "headline_text", "story", "published"])
        writer.writerow(
            [
                "c-1",
                "Rail strike halts trains",
                "Train drivers walked out on Monday.\n\nCommuters "
                "faced long delays, with most services cancelled across the region.",
                "2024-06-01",
            ]
        )
        writer.writerow(
            [
                "c-2",
                "Museum returns stolen painting",
                "A painting stolen forty years ago has been "
                "returned to the museum, which will put it on display in the spring.",
                "2024-06-03",
            ]
        )
    target = tmp_path / "idx"
    result = invoke(
        runner, "index", source, "--index", target, "--quiet",
        "--id-field", "ref", "--title-field", "headline_text", "--text-field", "story",
    )  # fmt: skip
    assert_ok(result)
    assert result.output == ""  # --quiet: no summary
    check_passes(runner, target)
    stored = index_ids(target)
    assert stored == {
        "c-1": (
            "Rail strike halts trains",
            [
                "Train drivers walked out on Monday.",
                "Commuters faced long delays, with most services cancelled across the region.",
            ],
        ),
        "c-2": (
            "Museum returns stolen painting",
            [
                "A painting stolen forty years ago has been returned to the museum, "
                "which will put it on display in the spring."
            ],
        ),
    }
    assert top_id(target, embedder, "artwork recovered after theft") == "c-2"


def test_index_directory_of_text_files_then_check(runner: CliRunner, tmp_path: Path, embedder: Embedder) -> None:
    root = tmp_path / "news"
    (root / "world").mkdir(parents=True)
    (root / "culture").mkdir()
    (root / "world" / "001.txt").write_text(
        "Earthquake shakes coastal city\n\nBuildings swayed as a strong earthquake struck the coast on Tuesday.\n"
        "No injuries were reported.\n",
        encoding="utf-8",
    )
    (root / "world" / "002.txt").write_text(
        "\n\nFarmers protest over grain prices\nHundreds of tractors blocked roads into the capital as farmers "
        "protested against falling grain prices.\n",
        encoding="utf-8",
    )
    (root / "culture" / "review.md").write_text(
        "# Film review: a quiet drama about two sisters\n\nThe film follows two sisters who inherit a farm and "
        "must decide whether to sell it.\n",
        encoding="utf-8",
    )
    (root / "world" / "notes.json").write_text('{"not": "an article"}', encoding="utf-8")  # ignored
    target = tmp_path / "idx"
    assert_ok(invoke(runner, "index", root, "--index", target, "--quiet"))
    check_passes(runner, target)
    stored = index_ids(target)
    assert set(stored) == {"world/001", "world/002", "culture/review"}
    assert stored["world/001"][0] == "Earthquake shakes coastal city"
    assert stored["world/002"][0] == "Farmers protest over grain prices"  # leading blank lines skipped
    assert stored["culture/review"][0] == "Film review: a quiet drama about two sisters"  # markdown '#' removed
    assert top_id(target, embedder, "tremor hits the seaside") == "world/001"


# -- index: errors -------------------------------------------------------------------------------------------------


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.suffix != ".sqlite-shm"}


@pytest.mark.parametrize("case", ["missing", "malformed", "unknown-format", "no-articles"])
def test_index_errors_are_one_line_and_change_nothing(
    runner: CliRunner, tmp_path: Path, corpus_index: Path, case: str
) -> None:
    if case == "missing":
        source, fragments = tmp_path / "nope.jsonl", ["nope.jsonl", "no such file"]
    elif case == "malformed":
        source = tmp_path / "bad.jsonl"
        source.write_text('{"id": "a", "title": "Fine"}\n\n{"id": "b", "title": oops}\n', encoding="utf-8")
        fragments = ["bad.jsonl:3:", "invalid JSON"]
    elif case == "unknown-format":
        source = tmp_path / "table.parquet"  # feeds (.xml) are a source format since issue 20
        source.write_bytes(b"PAR1\x15\x04\x15\x10")
        fragments = ["table.parquet", "unknown source format"]
    else:
        source = tmp_path / "empty.jsonl"
        source.write_text('{"id": "e1"}\n{"id": "e2", "title": "   ", "text": ""}\n', encoding="utf-8")
        fragments = ["no articles"]
    target = tmp_path / "idx"
    if case == "no-articles":
        # Into an existing index (a plain directory, as a copied index is): it must survive untouched.
        shutil.copytree(corpus_index, target, symlinks=False)
        before = snapshot(target)
        assert_one_line_error(invoke(runner, "index", source, "--index", target), *fragments)
        assert target.is_dir() and not target.is_symlink()
        assert snapshot(target) == before
        check_passes(runner, target)
    else:
        assert_one_line_error(invoke(runner, "index", source, "--index", target), *fragments)
        assert not target.exists() and not target.is_symlink()
    assert not list(tmp_path.glob(".idx*"))  # no half-built working directory either


# -- search: one query -------------------------------------------------------------------------------------------


def test_search_prints_ranked_lines(runner: CliRunner, corpus_index: Path, service: SearchService) -> None:
    query = "central bank raises interest rates"
    result = invoke(runner, "search", query, "--index", corpus_index, "--k", "3")
    assert_ok(result)
    lines = result.stdout.splitlines()
    ranked = [m for m in map(RANKED_LINE.match, lines) if m]
    expected = service.search(query, k=3).results  # the articles that match, up to 3
    assert [int(m.group(1)) for m in ranked] == list(range(1, len(expected) + 1)) and len(expected) >= 2
    assert len(lines) == 2 * len(expected)  # each ranked line is followed by its highlighted sentence
    assert f"articles 1-{len(expected)} of " in result.stderr
    scores = [float(m.group(2)) for m in ranked]
    assert scores == sorted(scores, reverse=True)
    assert [m.group(4) for m in ranked] == [r.article.id for r in expected]
    assert ranked[0].group(4) == "business/001" and ranked[1].group(4) != "copy-of-business-001"  # shown once
    assert [m.group(3) for m in ranked] == [r.article.title for r in expected]
    p = expected[0].passages[0]
    assert lines[1].strip() == p.text[p.highlight.start : p.highlight.end]


def test_search_json_has_the_api_shape(runner: CliRunner, corpus_index: Path, service: SearchService) -> None:
    # the fixture service and the CLI both embed with the default backend, so totals and scores agree
    args: list[str | Path] = ["search", "football match goals", "--index", corpus_index, "--k", "3", "--json"]
    result = invoke(runner, *args)
    assert_ok(result)
    body = json.loads(result.stdout)
    assert set(body) == {"query", "mode", "total", "results", "took_ms", "facets", "next_cursor", "notes"}
    assert body["query"] == "football match goals" and body["total"] == service.search("football match goals").total
    assert len(body["results"]) == min(3, body["total"])
    assert body["results"][0]["article"]["id"] == "sport/001"
    for r in body["results"]:
        assert set(r) == {"article", "score", "scores", "passages", "related", "also_reported"}
        assert set(r["article"]) == {"id", "title", "date", "source", "url", "canonical_id", "story_id"}
        for p in r["passages"]:
            assert set(p) == {"id", "text", "score", "field", "highlight", "scores"}
            assert 0 <= p["highlight"]["start"] < p["highlight"]["end"] <= len(p["text"])
        for rel in r["related"]:
            assert set(rel) == {"id", "title", "score"}
    expected = service.search("football match goals", k=3).results
    assert [r["article"]["id"] for r in body["results"]] == [r.article.id for r in expected]
    assert [r["score"] for r in body["results"]] == pytest.approx([r.score for r in expected], abs=1e-5)


def test_search_a_missing_index_is_a_one_line_error(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "search", "anything", "--index", tmp_path / "no-index-here")
    assert_one_line_error(result, "no index at", "no-index-here")


# -- search: batch mode ------------------------------------------------------------------------------------------


def read_trec(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines()]


def test_batch_search_writes_a_trec_run_and_passages(
    runner: CliRunner, corpus_index: Path, write_jsonl: Any, tmp_path: Path
) -> None:
    # Queries whose top 5 avoid "/leading slash & ünïcode id": a TREC run cannot hold an id with spaces (see below).
    queries = write_jsonl(
        "q.jsonl",
        [
            {"_id": "q1", "text": "central bank raises interest rates"},
            {"id": "q2", "text": "striker scores twice"},
            {"_id": 3, "text": "cheaper batteries for electric cars"},
            {"id": "q4", "text": "stock market shares fall", "extra": "ignored"},
        ],
    )
    run, passages = tmp_path / "out.trec", tmp_path / "out.jsonl"
    result = invoke(
        runner,
        "search",
        "--index",
        corpus_index,
        "--queries",
        queries,
        "--k",
        "5",
        "--run",
        run,
        "--passages",
        passages,
    )
    assert_ok(result)
    rows = read_trec(run)
    assert {r[0] for r in rows} == {"q1", "q2", "3", "q4"}
    n_passages = sum(len(json.loads(line)["passages"]) for line in passages.read_text(encoding="utf-8").splitlines())
    assert result.stderr.splitlines() == [  # a batch run says what it wrote
        f"wrote {run}: TREC run of 4 queries, {len(rows)} ranked articles (tag newsdesk)",
        f"wrote {passages}: 4 queries, {n_passages} ranked passages (JSON Lines)",
    ]
    by_query: dict[str, list[list[str]]] = {}
    for r in rows:
        assert len(r) == 6, r
        assert r[1] == "Q0" and r[5] == "newsdesk"
        assert r[2] in CORPUS_IDS
        by_query.setdefault(r[0], []).append(r)
    for qid, docs in by_query.items():
        assert 1 <= len(docs) <= 5
        assert [int(d[3]) for d in docs] == list(range(1, len(docs) + 1)), qid
        scores = [float(d[4]) for d in docs]
        assert scores == sorted(scores, reverse=True), qid
        assert len({d[2] for d in docs}) == len(docs)
    assert by_query["q1"][0][2] in {"business/001", "copy-of-business-001"}
    assert by_query["q2"][0][2] == "sport/001"
    assert by_query["3"][0][2] == "https://example.org/news/tech?id=7&lang=en"

    lines = passages.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    prows = [json.loads(line) for line in lines]
    assert [p["query_id"] for p in prows] == ["q1", "q2", "3", "q4"]
    assert prows[1]["query"] == "striker scores twice"
    for prow in prows:
        assert prow["passages"]
        for p in prow["passages"]:
            assert set(p) == {"article_id", "passage_id", "text", "score", "scores"}
            assert set(p["scores"]) == {"dense", "lexical", "fused", "recency"} and p["scores"]["fused"] == p["score"]
            assert p["article_id"] in CORPUS_IDS and isinstance(p["passage_id"], int) and p["text"]
        assert [p["score"] for p in prow["passages"]] == sorted((p["score"] for p in prow["passages"]), reverse=True)
    assert prows[1]["passages"][0]["article_id"] == "sport/001"


def test_batch_with_a_bad_query_row_fails_before_writing(
    runner: CliRunner, corpus_index: Path, write_jsonl: Any, tmp_path: Path
) -> None:
    queries = write_jsonl("q.jsonl", [{"_id": "q1", "text": "rates"}, {"_id": "q2", "query": "no text field"}])
    run = tmp_path / "out.trec"
    result = invoke(runner, "search", "--index", corpus_index, "--queries", queries, "--k", "5", "--run", run)
    assert_one_line_error(result, "q.jsonl:2:", "'text'")
    assert not run.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]


def test_batch_run_encodes_ids_holding_whitespace(
    runner: CliRunner, corpus_index: Path, write_jsonl: Any, tmp_path: Path
) -> None:
    # "/leading slash & ünïcode id" would split into several TREC fields: whitespace and % are percent-encoded.
    queries = write_jsonl("q.jsonl", [{"_id": "q 1", "text": "residents evacuated after flooding"}])
    run, passages = tmp_path / "out.trec", tmp_path / "out.jsonl"
    result = invoke(
        runner,
        "search",
        "--index",
        corpus_index,
        "--queries",
        queries,
        "--k",
        "8",
        "--run",
        run,
        "--passages",
        passages,
    )
    assert_ok(result)
    rows = read_trec(run)
    assert all(len(r) == 6 for r in rows)
    assert rows[0][:3] == ["q%201", "Q0", "/leading%20slash%20&%20ünïcode%20id"]
    assert {unquote(r[2]) for r in rows} <= CORPUS_IDS
    first = json.loads(passages.read_text(encoding="utf-8"))
    assert first["query_id"] == "q 1"  # JSON holds the id as it is
    assert first["passages"][0]["article_id"] == "/leading slash & ünïcode id"


def test_trec_id_leaves_ordinary_ids_alone() -> None:
    assert trec_id("business/001") == "business/001"
    assert trec_id("https://e.x/a?b=1&c=2") == "https://e.x/a?b=1&c=2"
    assert trec_id("50% off\tnow") == "50%25%20off%09now"
    assert unquote(trec_id("a b%c")) == "a b%c"


# -- check ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def index_copy(corpus_index: Path, tmp_path: Path, runner: CliRunner) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(corpus_index, copy, symlinks=False)
    check_passes(runner, copy)  # the copy is sound before each test damages it
    return copy


def problems(result: Result) -> list[str]:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    found = [line for line in result.stderr.splitlines() if line.startswith("problem: ")]
    assert found, result.stderr
    return found


def test_check_accepts_manifest_counts_a_crash_left_behind_and_open_repairs_them(
    runner: CliRunner, index_copy: Path
) -> None:
    """A writer killed between its commit and the manifest update leaves the counts (a cache of SQLite's) behind:
    a legal state that the next open repairs, so check does not call it a problem (tests/test_crash.py)."""
    from search.storage.index import open_index

    manifest_path = index_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["counts"]["articles"] == 8
    manifest["counts"]["articles"] = 9
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    assert_ok(invoke(runner, "check", "--index", index_copy))
    open_index(index_copy, None).close()
    assert json.loads(manifest_path.read_text(encoding="utf-8"))["counts"]["articles"] == 8


def test_check_detects_a_deleted_passage(runner: CliRunner, index_copy: Path) -> None:
    with closing(sqlite3.connect(index_copy / "newsdesk.sqlite")) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        (before,) = conn.execute("SELECT COUNT(*) FROM passages").fetchone()
        with conn:
            conn.execute("DELETE FROM passages WHERE id = (SELECT MAX(id) FROM passages WHERE field = 'body')")
        (after,) = conn.execute("SELECT COUNT(*) FROM passages").fetchone()
    assert after == before - 1
    found = problems(invoke(runner, "check", "--index", index_copy))
    assert any(f"{before} passages" in p and str(after) in p for p in found), found

    # With the manifest made to agree, the FAISS file still holds the deleted passage's vector.
    manifest_path = index_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["counts"]["passages"] = after
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    found = problems(invoke(runner, "check", "--index", index_copy))
    assert any("vectors.faiss" in p for p in found), found


def test_check_a_missing_index(runner: CliRunner, tmp_path: Path) -> None:
    found = problems(invoke(runner, "check", "--index", tmp_path / "nothing"))
    assert len(found) == 1 and "no index at" in found[0]


# -- eval -----------------------------------------------------------------------------------------------------------


def test_eval_prints_metrics_per_mode_and_answer_recall(
    runner: CliRunner, corpus_index: Path, write_jsonl: Any, tmp_path: Path
) -> None:
    queries = write_jsonl(
        "q.jsonl",
        [
            {"_id": "q1", "text": "football derby goals"},
            {"_id": "q2", "text": "semiconductor chip shortage hits carmaker"},
            {"question_id": "a1", "question": "How many residents were evacuated?", "answer_text": ["about 200"]},
            {"id": "a2", "text": "What did the central bank raise?", "answers": ["benchmark interest rate"]},
        ],
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\tsport/001\t1\nq2\tbusiness/002\t1\n", encoding="utf-8")
    result = invoke(runner, "eval", "--index", corpus_index, "--queries", queries, "--qrels", qrels, "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    assert set(report) == {"hybrid", "dense", "lexical"}
    for figures in report.values():
        assert figures["queries"] == 2 and figures["questions"] == 2
        assert figures["ndcg@10"] == figures["mrr@10"] == 1.0  # both judged articles rank first in every mode
        assert figures["recall@100"] == 1.0
        assert figures["answer_recall@1"] <= figures["answer_recall@5"] <= figures["answer_recall@20"]
    assert report["hybrid"]["answer_recall@5"] == 1.0
    table = invoke(runner, "eval", "--index", corpus_index, "--queries", queries, "--qrels", qrels, "--mode", "dense")
    assert_ok(table)
    assert table.stdout.splitlines()[0].split()[:2] == ["mode", "ndcg@10"]
    assert table.stdout.splitlines()[1].split()[0] == "dense"


def test_eval_needs_judgments_or_answers(runner: CliRunner, corpus_index: Path, write_jsonl: Any) -> None:
    queries = write_jsonl("q.jsonl", [{"_id": "q1", "text": "football"}])
    result = invoke(runner, "eval", "--index", corpus_index, "--queries", queries)
    assert result.exit_code == 2 and "--qrels" in result.output


# -- stats ----------------------------------------------------------------------------------------------------------


def test_stats_prints_what_the_index_holds(runner: CliRunner, corpus_index: Path) -> None:
    result = invoke(runner, "stats", "--index", corpus_index, "--json")
    assert_ok(result)
    info = json.loads(result.stdout)
    manifest = json.loads((corpus_index / "manifest.json").read_text(encoding="utf-8"))
    assert info["index"] == "corpus" and info["path"] == str(corpus_index.resolve())
    assert (info["model"], info["dimension"]) == ("all-MiniLM-L6-v2", 384)
    assert info["backend"] == manifest["model"].get("backend", "torch")
    assert (info["articles"], info["passages"]) == (8, len(index_passage_rows(corpus_index)))
    assert info["newest_date"] == "2024-04-11"
    assert info["faiss"]["factory"] == "IDMap2,Flat" and info["faiss"]["metric"] == manifest["faiss"]["metric"]
    on_disk = [p for p in corpus_index.resolve().rglob("*") if p.is_file()]
    assert info["size_bytes"] == sum(p.stat().st_size for p in on_disk) > 0
    assert info["updated_at"] == manifest["updated_at"]

    text = invoke(runner, "stats", "--index", corpus_index)
    assert_ok(text)
    lines = dict(line.split(None, 1) for line in text.stdout.splitlines() if not line.startswith("on disk"))
    assert lines["index"].startswith("corpus")
    assert lines["model"].startswith("all-MiniLM-L6-v2") and "384 dimensions" in lines["model"]
    assert (lines["articles"], lines["newest"]) == ("8", "2024-04-11")
    assert lines["faiss"].startswith("IDMap2,Flat")
    assert any(line.startswith("on disk") and "KiB" in line for line in text.stdout.splitlines())


def test_stats_of_a_missing_index_is_a_one_line_error(runner: CliRunner, tmp_path: Path) -> None:
    assert_one_line_error(invoke(runner, "stats", "--index", tmp_path / "nothing"), "no index at")


def index_passage_rows(index_dir: Path) -> list[Any]:
    with closing(sqlite3.connect(index_dir / "newsdesk.sqlite")) as conn:
        return conn.execute("SELECT id FROM passages").fetchall()


# -- issue 15: search takes the API's filters; mistakes fail before the model loads; index reports what it did --


def test_search_takes_the_api_filters_facets_and_mode(runner: CliRunner, corpus_index: Path) -> None:
    args: list[str | Path] = ["search", "interest rates", "--index", corpus_index, "--json", "--facets"]
    args += ["--mode", "lexical"]
    result = invoke(runner, *args, "--source", "Example Wire", "--from", "2024-03-01", "--to", "2024-03-31")
    assert_ok(result)
    body = json.loads(result.stdout)
    assert body["mode"] == "lexical" and body["results"]
    for r in body["results"]:
        assert r["article"]["source"] == "Example Wire" and "2024-03-01" <= r["article"]["date"][:10] <= "2024-03-31"
    # each facet counts the matches passing the *other* filters (a click replaces that part), so the source facet
    # lists the sources a reader could switch to, the filtered one among them
    assert "Example Wire" in [f["value"] for f in body["facets"]["source"]]
    sport = invoke(runner, "search", "scores", "--index", corpus_index, "--category", "sport", "--facets", "--k", "3")
    assert_ok(sport)
    assert "(sport/001)" in sport.stdout and "category: sport (1)" in sport.stdout
    none = invoke(runner, "search", "interest rates", "--index", corpus_index, "--source", "No Such Outlet")
    assert_ok(none)
    assert none.stdout == "" and "no articles match 'interest rates'" in none.stderr
    assert "note: " in none.stderr and "No Such Outlet" in none.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", " "], "query must not be empty"),
        (["search", "x", "--k", "0"], "k must be between 1 and"),
        (["search", "x", "--offset", "-1"], "offset must be between 0 and"),
        (["search", "x", "--from", "2024-13-01"], "from must be an ISO date"),
        (["search", "x", "--from", "2024-03-02", "--to", "2024-03-01"], "is after to"),
        (["search", "x", "--index", "MISSING"], "no index at"),
        (["eval", "--queries", "QUERIES", "--qrels", "QRELS", "--index", "MISSING"], "no index at"),
        (["add", "QUERIES", "--index", "MISSING"], "no index at"),  # a one-article source
    ],
)
def test_argument_mistakes_fail_before_the_model_loads(
    runner: CliRunner,
    corpus_index: Path,
    tmp_path: Path,
    write_jsonl: Any,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    def no_model(*_: Any, **__: Any) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("search.text.embedding.make_embedder", no_model)
    queries = write_jsonl("q.jsonl", [{"_id": "1", "text": "x"}])
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n1\tsport/001\t1\n", encoding="utf-8")
    swap = {"MISSING": str(tmp_path / "missing"), "QUERIES": str(queries), "QRELS": str(qrels)}
    args = [swap.get(a, a) for a in args]
    full = args if "--index" in args else [*args, "--index", str(corpus_index)]
    assert_one_line_error(invoke(runner, *full), message)


def test_a_batch_query_that_cannot_run_fails_before_the_model_loads(
    runner: CliRunner, corpus_index: Path, write_jsonl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("search.text.embedding.make_embedder", lambda *_: pytest.fail("the model was loaded"))
    queries = write_jsonl("q.jsonl", [{"_id": "1", "text": "fine"}, {"_id": "2", "text": "  "}])
    result = invoke(runner, "search", "--queries", queries, "--run", tmp_path / "r.trec", "--index", corpus_index)
    assert_one_line_error(result, "query '2': query must not be empty")
    filtered = invoke(runner, "search", "--queries", queries, "--run", tmp_path / "r.trec", "--source", "X")
    assert filtered.exit_code == 2 and "apply to a single query" in filtered.output


def test_index_reports_metadata_updates_and_warns_before_deleting_added_articles(
    runner: CliRunner, tmp_path: Path, write_jsonl: Any
) -> None:
    target = tmp_path / "idx"
    records = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    source = write_jsonl("c.jsonl", records)
    assert_ok(invoke(runner, "index", source, "--index", target, "-q"))
    extra = write_jsonl("extra.jsonl", [{"id": "added/1", "title": "Cocoa climbs", "text": "Cocoa rose on Tuesday."}])
    assert_ok(invoke(runner, "add", extra, "--index", target))
    records[0]["date"] = "Sat, 16 Mar 2024 10:00:00 GMT"  # an RSS date: read, and applied without re-embedding
    kept = invoke(runner, "index", write_jsonl("c.jsonl", records), "--index", target, "--keep-missing")
    assert_ok(kept)
    assert "1 metadata updated" in kept.stderr and "1 missing from the sources kept" in kept.stderr
    assert "added/1" in index_ids(target)
    result = invoke(runner, "index", source.parent / "c.jsonl", "--index", target)
    assert_ok(result)
    warning, summary = result.stderr.splitlines()[0], result.stderr.splitlines()[-1]
    assert warning == (
        "warning: 1 of the 1 articles missing from the sources were added by newsdesk add or the API and will be "
        "deleted; run with --keep-missing to keep articles missing from the sources"
    )
    assert "1 deleted (1 of them written by newsdesk add or the API)" in summary
    assert "added/1" not in index_ids(target)


def test_index_skip_bad_records_lists_them_and_stops_without_it(runner: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(
        b'{"id": "1", "title": "One", "text": "First.", "date": "8 Jan 2005"}\n'
        b'{"id": "2", "title": "caf\xe9", "text": "x"}\n'
        b'{"id": "3", "title": "Three", "text": "Third.", "date": "soon"}\n'
    )
    target = tmp_path / "idx"
    stopped = invoke(runner, "index", source, "--index", target)
    assert_one_line_error(stopped, f"{source}:2:26: not UTF-8 text")
    assert not target.exists()
    result = invoke(runner, "index", source, "--index", target, "--skip-bad-records")
    assert_ok(result)
    lines = result.stderr.splitlines()
    assert lines[-3:] == [
        f"field 'date': 1 value(s) could not be read as dates and were indexed undated (the raw value is kept in "
        f"extra.date_raw): {source}:3 'soon'",
        "skipped 1 bad record(s) (--skip-bad-records):",
        f"  {source}:2:26: not UTF-8 text (byte 0xe9: invalid continuation byte)",
    ]
    assert set(index_ids(target)) == {"1", "3"}


def test_progress_moves_per_batch_of_passages_and_logs_lines_off_a_terminal(
    tmp_path: Path,
    embedder: Embedder,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from indexer.build import IndexProgress, build_index
    from indexer.sources import read_sources
    from search.settings import Settings

    monkeypatch.setattr(IndexProgress, "LOG_EVERY_S", 0.0)  # a line at every step
    settings = Settings(index_dir=tmp_path / "idx", batch_size=4)
    build_index(read_sources([CORPUS]), settings.index_dir, settings, embedder, progress=None)  # stderr: no tty
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("indexing: ")]
    passages = [int(line.split(", ")[1].split()[0]) for line in lines]
    # all of the corpus is one group of articles, yet the passage count moves batch by batch before it is written
    assert len([line for line in lines if line.startswith("indexing: 0/")]) >= 2
    assert passages == sorted(passages) and passages[-1] > passages[0]
    assert lines[-1].startswith(f"indexing: {len(CORPUS_IDS)}/{len(CORPUS_IDS)} articles")
