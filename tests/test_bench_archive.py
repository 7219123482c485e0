"""bench/archive.py on a tiny stand-in corpus: its hash embedder, and a two-size run's report (stages, memory,
latency, writes, ratios) through the indexer's own path."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.archive import CORPUS, QUESTIONS, HashVectorEmbedder
from tests.fakes import wire_articles

ROOT = Path(__file__).resolve().parent.parent


def test_hash_vectors_are_deterministic_unit_vectors_of_shared_words() -> None:
    embedder = HashVectorEmbedder()
    a, b, c = embedder.encode(["Oil prices rose", "oil prices rose again", "The harvest was late"])
    assert a.shape == (384,) and np.allclose([np.linalg.norm(v) for v in (a, b, c)], 1.0)
    assert np.array_equal(a, HashVectorEmbedder().encode(["Oil prices rose"])[0])  # no per-process seed
    assert float(a @ b) > float(a @ c)
    vectors, spans = embedder.encode_spans(["One. Two words."], [[(0, 4), (5, 15)]])
    assert vectors.shape == (1, 384) and spans[0].shape == (2, 384)
    assert embedder.count_tokens("Two words.") == 3 + 2  # tokens, and the model's [CLS] and [SEP]


def test_a_two_size_run_reports_every_figure(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = [{**r, "publish_date": r.pop("date")} for r in wire_articles(60, seed=9)]
    with gzip.open(data / CORPUS, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    questions = [{"question": q} for q in ("oil prices", "wheat harvest", "central bank rates")]
    (data / QUESTIONS).write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    out = tmp_path / "report.json"
    command = [sys.executable, str(ROOT / "bench" / "archive.py"), "--sizes", "12,24", "--work", str(tmp_path / "w")]
    command += ["--data", str(data), "--queries", "3", "--rounds", "1", "--no-real-model", "--out", str(out)]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text(encoding="utf-8"))
    small, large = report["sizes"]
    assert (small["articles"], large["articles"]) == (12, 24) and small["passages"] < large["passages"]
    stages = ("read", "chunk", "embed", "sqlite_write", "faiss", "labels", "bm25", "profiles", "caches_and_swap")
    for run in (small, large):
        build = run["build"]
        assert all(build[s] >= 0 for s in stages) and build["faiss"] > 0 and build["sqlite_write"] > 0
        assert abs(sum(build[s] for s in stages) - build["total"]) < 0.01
        assert run["open_s"] > 0 and run["memory"]["rss"] >= run["memory"]["vectors"] > 0
        assert set(run["latency_ms"]) == {"hybrid", "dense", "similar"}
        assert run["write"]["add_s"] >= run["write"]["add_excl_embedding_s"] > 0 and run["write"]["delete_s"] > 0
    assert large["memory"]["vectors"] > small["memory"]["vectors"]
    assert report["ratios"]["passages"] == round(large["passages"] / small["passages"], 2)
    assert report["projection"]["passages"] > large["passages"]
    assert "bench-hash-vectors" in report["embedder"]
