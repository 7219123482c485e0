"""Does a default recency decay help answer RealTime QA? Chosen on dev, reported on held-out.

RealTime QA questions are dated (``question_date``): each is searched with ``as_of`` = its date and each half-life
of ``--half-lives``, and without decay; the metric is answer recall@k over the passages of the result page (the
share of questions one of whose first k passages holds an answer string). The half-life with the best dev recall is
then measured once on the held-out questions (later in time), beside no decay. The corpus is the union of the
articles the web search returned for both sets (bench/realtimeqa.py ``select``), indexed once into ``--work``.

    .venv/bin/python bench/recency.py --data ../shared/data/realtimeqa --work bench/results/recency \
        --dev 40 --heldout 40 --out bench/results/recency.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from bench.realtimeqa import select
from search.ranking.evaluation import answer_recall
from search.ranking.recency import Recency
from search.service import SearchService
from search.settings import Settings


def _questions(path: Path) -> list[tuple[str, list[str], str]]:
    """(question, answers, ISO date) of a selection file, with dates from the question ids (``20230106_3``)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        day = str(row["id"]).split("_")[0]
        out.append((str(row["text"]), [str(a) for a in row["answers"]], f"{day[:4]}-{day[4:6]}-{day[6:8]}"))
    return out


def recall(
    service: SearchService, questions: list[tuple[str, list[str], str]], half_life: str | None, k: int, mode: str
) -> float:
    """Answer recall@k of the result pages' passages, with ``half_life`` decay as of each question's date."""
    texts: list[list[str]] = []
    for question, _, day in questions:
        decay = Recency.of(half_life, day) if half_life else None
        page = service.search(question, k=k, mode=mode, recency=decay)
        texts.append([p.text for r in page.results for p in r.passages])
    return answer_recall(texts, [a for _, a, _ in questions], k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/realtimeqa"))
    parser.add_argument("--work", type=Path, default=Path("bench/results/recency"))
    parser.add_argument("--dev", type=int, default=40)
    parser.add_argument("--heldout", type=int, default=40)
    parser.add_argument("--half-lives", default="1d,3d,7d,30d,90d,365d")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--mode", default="hybrid")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from indexer.build import build_index
    from indexer.sources import read_sources
    from search.loading import load_service

    started = time.perf_counter()
    picked = select(args.data, args.work, args.dev, args.heldout)
    index_dir = args.work / "index"
    settings = Settings.from_env(None, index_dir=index_dir)
    if not (index_dir / "manifest.json").exists():
        build_index(read_sources([Path(str(picked["corpus"]))]), index_dir, settings, progress=False)
    built = time.perf_counter() - started
    service = load_service(settings)
    dev, heldout = _questions(args.work / "rtqa-dev.jsonl"), _questions(args.work / "rtqa-heldout.jsonl")
    dev_figures: dict[str, float] = {"none": recall(service, dev, None, args.k, args.mode)}
    for half_life in args.half_lives.split(","):
        dev_figures[half_life] = recall(service, dev, half_life, args.k, args.mode)
    best = max(dev_figures, key=lambda h: (dev_figures[h], h == "none"))  # a tie keeps no decay
    held: dict[str, float] = {"none": recall(service, heldout, None, args.k, args.mode)}
    if best != "none":
        held[best] = recall(service, heldout, best, args.k, args.mode)
    report = {
        "command": "bench/recency.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "cpu": platform.processor() or platform.machine(),
        "corpus_articles": picked["articles"],
        "questions": {"dev": picked["dev"], "heldout": picked["heldout"]},
        "metric": f"answer_recall@{args.k} ({args.mode}), as_of = question date",
        "dev": dev_figures,
        "chosen_on_dev": best,
        "heldout": held,
        "seconds": {"select_and_index": round(built, 1), "total": round(time.perf_counter() - started, 1)},
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
