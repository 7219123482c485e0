"""Resident memory by component (search/memory.py): what an open index's parts and the model hold, against RSS."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from api.cli import main
from indexer.build import build_index
from indexer.sources import read_sources
from search.memory import deep_size, memory_report, process_rss
from search.settings import Settings
from search.storage.index import open_index
from tests.fakes import HashEmbedder, wire_articles

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("vectors", "postings", "catalog", "owners", "profiles")  # every index holds these


def wire_index(root: Path, n: int) -> Path:
    source = root / f"wire-{n}.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in wire_articles(n, seed=5)), encoding="utf-8")
    target = root / f"idx-{n}"
    build_index(read_sources([source]), target, Settings(index_dir=target), HashEmbedder(), progress=False)
    return target


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("memory")
    return wire_index(root, 60), wire_index(root, 360)


def test_parts_grow_with_the_corpus_and_sum_below_rss(two_sizes: tuple[Path, Path]) -> None:
    small, large = (open_index(path, None, read_only=True) for path in two_sizes)
    try:
        a, b = small.memory(), large.memory()
        for part in PARTS:
            assert 0 < a[part] < b[part], part
        # 64-d float32 vectors: at least 256 bytes a passage, plus the id map, for both stores
        assert b["vectors"] >= 256 * (large.passages.count() + large.articles.count())
        assert b["owners"] == 24 * large.passages.count()
        report = memory_report(b, HashEmbedder())
        assert report["model"] == 0  # a hashing embedder holds no weights
        assert sum(v for k, v in report.items() if k not in ("rss", "other")) <= report["rss"]
        assert report["other"] == report["rss"] - sum(v for k, v in report.items() if k not in ("rss", "other"))
    finally:
        small.close()
        large.close()


def test_faiss_vectors_are_counted_from_their_codes_and_ids(two_sizes: tuple[Path, Path]) -> None:
    """An exact index holds 4 bytes a dimension a vector, 8 a position in its id map and an estimated hashtable
    entry per id: within 64 bytes a vector of what the vectors themselves take."""
    index = open_index(two_sizes[1], None, read_only=True)
    try:
        n, dim = index.passages.count(), index.passages.dimension
        held = index.memory()["vectors"] - index.articles.count() * (4 * dim + 48)
        assert n * 4 * dim <= held <= n * (4 * dim + 64)
    finally:
        index.close()


def test_deep_size_counts_shared_buffers_once() -> None:
    base = np.zeros(1_000_000, np.uint8)
    assert 1_000_000 <= deep_size(base) < 1_001_000
    assert deep_size([base, base[10:], base[::2]]) < 1_001_000  # views of one buffer
    assert deep_size({"a": base, "b": np.ones(1000, np.uint8)}) >= 1_001_000
    words = {f"term{i}": i for i in range(1000)}
    assert deep_size(words) > 1000 * 50  # each key's string and the dict's table


def test_rss_is_this_process(two_sizes: tuple[Path, Path]) -> None:
    before = process_rss()
    block = np.ones(64 * 2**20, np.uint8)  # touched: resident
    assert process_rss() - before >= 48 * 2**20
    del block


def test_stats_memory_reports_every_documented_key(runner: CliRunner, two_sizes: tuple[Path, Path]) -> None:
    result = runner.invoke(main, ["stats", "--index", str(two_sizes[1]), "--json", "--memory"])
    assert result.exit_code == 0, result.output
    memory = json.loads(result.stdout)["memory"]
    assert set(PARTS) <= set(memory) and {"model", "rss", "other", "sentence_vectors", "duplicates"} <= set(memory)
    assert memory["model"] > 1_000_000  # the configured model, loaded as a server loads it
    assert sum(v for k, v in memory.items() if k not in ("rss", "other")) <= memory["rss"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Memory") :].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert documented == set(memory)

    text = runner.invoke(main, ["stats", "--index", str(two_sizes[1]), "--memory"])
    assert text.exit_code == 0, text.output
    (line,) = [x for x in text.stdout.splitlines() if x.startswith("memory")]
    assert "resident:" in line and "vectors" in line and "other" in line
    plain = runner.invoke(main, ["stats", "--index", str(two_sizes[1]), "--json"])
    assert "memory" not in json.loads(plain.stdout)  # without --memory: manifest and SQLite alone, milliseconds


def test_metrics_expose_memory_by_component(client: FlaskClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").get_data(as_text=True)
    families: dict[str, Any] = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.labels["component"]: s.value for s in families["newsdesk_memory_bytes"].samples}
    assert set(PARTS) | {"model", "rss", "other"} <= set(samples)
    assert samples["model"] > 1_000_000 and samples["rss"] >= sum(samples[p] for p in PARTS)


def test_model_weights_are_counted_as_loaded(embedder: Any) -> None:
    """torch holds the fp32 weights: their bytes match the safetensors file (its header aside); the int8 path adds
    the ONNX file its session reads, and the embedder the product ships reports what it loaded."""
    from search.text.embedding import SentenceTransformerEmbedder, resolve_model

    weights = (Path(resolve_model("all-MiniLM-L6-v2")) / "model.safetensors").stat().st_size
    torch_model = SentenceTransformerEmbedder("all-MiniLM-L6-v2", backend="torch")
    assert abs(torch_model.memory_bytes() - weights) < 0.01 * weights
    assert embedder.onnx_path is not None and embedder.memory_bytes() >= embedder.onnx_path.stat().st_size > 0


def test_milvus_vectors_hold_nothing_in_process(milvus_service: Any) -> None:
    """On Milvus the vectors live in its server (or Milvus Lite's process): 0 here, the rest still counted."""
    memory = milvus_service.index.memory()
    assert memory["vectors"] == 0 and memory["postings"] > 0 and memory["catalog"] > 0
