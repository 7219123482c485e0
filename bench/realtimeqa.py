"""RealTime QA collections for evaluation: questions with answer strings, and the articles a web search returned.

``select`` picks a tuning set (dev) and a later held-out set of questions, and writes the union of their search
results as one JSONL corpus, so both are measured on the same index. Data stay in ``../shared/data``; only the
selection (ids) and the working corpus go to the work directory, which is git-ignored.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any


def load_questions(data: Path) -> list[dict[str, Any]]:
    with (data / "questions_dev.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_search_results(data: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with (data / "search_results.tsv").open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            qid, _rank, article = line.rstrip("\n").split("\t")
            out.setdefault(qid, []).append(article)
    return out


def pick(
    data: Path, n_dev: int, n_heldout: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[str]]]:
    """Dev: the first ``n_dev`` 2023 questions; held-out: the last ``n_heldout`` 2024 questions (later in time);
    and every question's search results."""
    results = load_search_results(data)
    usable = [
        q for q in load_questions(data) if q["question_id"] in results and any(a.strip() for a in q["answer_text"])
    ]
    usable.sort(key=lambda q: (q["question_date"], q["question_id"]))
    dev = [q for q in usable if q["question_date"].startswith("2023")][:n_dev]
    heldout = [q for q in usable if q["question_date"].startswith("2024")][-n_heldout:]
    return dev, heldout, results


def select(data: Path, work: Path, n_dev: int, n_heldout: int) -> dict[str, Any]:
    """Writes the dev and held-out questions (``pick``) and the union of their search results as one corpus."""
    dev, heldout, results = pick(data, n_dev, n_heldout)
    wanted = {a for q in dev + heldout for a in results[q["question_id"]]}
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "rtqa-corpus.jsonl"
    kept = 0
    with gzip.open(data / "news_corpus.jsonl.gz", "rt", encoding="utf-8") as src, corpus.open("w") as out:
        for line in src:
            record = json.loads(line)
            if record["id"] in wanted:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                kept += 1
    for name, qs in (("dev", dev), ("heldout", heldout)):
        with (work / f"rtqa-{name}.jsonl").open("w", encoding="utf-8") as fh:
            for q in qs:
                row = {"id": q["question_id"], "text": q["question"], "answers": q["answer_text"]}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"dev": len(dev), "heldout": len(heldout), "articles": kept, "corpus": str(corpus)}


def question_day(question: dict[str, Any]) -> str:
    """A question's date as ISO ``YYYY-MM-DD``: the file writes both ``2023/01/06`` and ``2024-12-06``."""
    return str(question["question_date"]).replace("/", "-")[:10]


def prefix_slices(data: Path, work: Path, articles: int) -> dict[str, Any]:
    """The first ``articles`` articles of the corpus as one JSONL file, and every question whose search results all
    lie in them (with an answer), by date: the earlier half is ``dev`` (tuning), the later half ``heldback`` (never
    looked at while choosing). Each question row carries its ``date`` (the ``as_of`` of answer ranking).

    Why a prefix of the corpus: it is what a build of N articles indexes anyway (bench/archive.py's real-model
    subset is the same file), so one index serves several hundred questions - every one of them with all the
    articles its search returned, among thousands of other articles' passages - instead of 100 per build."""
    results = load_search_results(data)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"rtqa-first{articles}.jsonl"
    held: set[str] = set()
    with gzip.open(data / "news_corpus.jsonl.gz", "rt", encoding="utf-8") as src, corpus.open("w") as out:
        for i, line in enumerate(src):
            if i >= articles:
                break
            held.add(json.loads(line)["id"])
            out.write(line)
    usable = [
        q
        for q in load_questions(data)
        if q["question_id"] in results
        and all(a in held for a in results[q["question_id"]])
        and any(a.strip() for a in q["answer_text"])
    ]
    usable.sort(key=lambda q: (question_day(q), q["question_id"]))
    half = len(usable) // 2
    counts: dict[str, Any] = {"articles": len(held), "corpus": str(corpus)}
    for name, qs in (("dev", usable[:half]), ("heldback", usable[half:])):
        with (work / f"rtqa-first{articles}-{name}.jsonl").open("w", encoding="utf-8") as fh:
            for q in qs:
                row = {"id": q["question_id"], "text": q["question"], "answers": q["answer_text"]}
                fh.write(json.dumps(row | {"date": question_day(q)}, ensure_ascii=False) + "\n")
        counts[name] = {"questions": len(qs), "from": question_day(qs[0]), "to": question_day(qs[-1])} if qs else {}
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/realtimeqa"))
    parser.add_argument("--work", type=Path, default=Path("bench/results/quality"))
    parser.add_argument("--dev", type=int, default=100)
    parser.add_argument("--heldout", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(select(args.data, args.work, args.dev, args.heldout)))


if __name__ == "__main__":
    main()
