"""The RealTime QA slices of ``bench/quality.py`` (no model, no index): which questions a prefix of the corpus
answers, split by date into dev and held back, each row dated for ``as_of``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from bench.quality import read_questions
from bench.realtimeqa import prefix_slices
from search.ranking.catalog import parse_day


def test_prefix_slices_keep_questions_whose_results_all_lie_in_the_prefix_dev_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with gzip.open(data / "news_corpus.jsonl.gz", "wt", encoding="utf-8") as fh:
        for i in range(5):
            fh.write(json.dumps({"id": f"a{i}", "title": f"t{i}", "paragraphs": [f"p{i}"]}) + "\n")
    questions = [  # id, date (both of the file's spellings), results, answers
        ("late", "2022/09/02", ["a0", "a1"], ["x"]),
        ("early", "2022-06-10", ["a1"], ["y"]),
        ("middle", "2022/07/01", ["a2", "a0"], ["z"]),
        ("outside", "2022/06/01", ["a1", "a4"], ["w"]),  # a4 is past the prefix of 3 articles
        ("blank", "2022/06/02", ["a0"], [" "]),  # no answer to find
        ("last", "2022/10/01", ["a2"], ["v"]),
    ]
    with (data / "questions_dev.jsonl").open("w", encoding="utf-8") as fh:
        for qid, day, _, answers in questions:
            row = {"question_id": qid, "question_date": day, "question": f"{qid}?", "answer_text": answers}
            fh.write(json.dumps(row) + "\n")
    with (data / "search_results.tsv").open("w", encoding="utf-8") as fh:
        fh.write("question_id\trank\tarticle_id\n")
        for qid, _, results, _ in questions:
            fh.writelines(f"{qid}\t{r}\t{a}\n" for r, a in enumerate(results))
    work = tmp_path / "work"
    counts = prefix_slices(data, work, 3)
    assert counts["articles"] == 3
    corpus = [json.loads(line)["id"] for line in (work / "rtqa-first3.jsonl").open(encoding="utf-8")]
    assert corpus == ["a0", "a1", "a2"]
    dev = read_questions(work / "rtqa-first3-dev.jsonl")
    held = read_questions(work / "rtqa-first3-heldback.jsonl")
    assert [q[0] for q in dev] == ["early", "middle"] and [q[0] for q in held] == ["late", "last"]
    assert dev[0][3] == parse_day("2022-06-10", "d") and held[0][3] == parse_day("2022-09-02", "d")
    assert counts["dev"] == {"questions": 2, "from": "2022-06-10", "to": "2022-07-01"}
