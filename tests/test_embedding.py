"""Embedding backends (torch fp32, onnx-int8), the export cache, fingerprints, and span vectors ("late chunking").

All on the real bundled model. One int8 export per session, into a temporary cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import search.text.embedding as embedding
from api.cli import main
from indexer.build import build_index
from indexer.sources import read_sources
from search.errors import InvalidInput, ModelMismatch
from search.settings import Settings
from search.storage.index import MANIFEST, open_index
from search.text.embedding import (
    PROBE_MIN_COSINE,
    PROBE_SENTENCES,
    QUANT_WEIGHT_TYPES,
    Embedder,
    OnnxEmbedder,
    SentenceTransformerEmbedder,
    check_compatible,
    make_embedder,
    onnx_file_name,
    quantization_config,
)
from tests.conftest import CORPUS

SENTENCES = [
    *PROBE_SENTENCES,
    "The central bank raised interest rates by a quarter of a point.",
    "Heavy rain flooded the valley overnight, forcing hundreds to leave their homes.",
    "Ministers will vote on the new budget next week.",
]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def onnx(model_cache: Path) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(backend="onnx-int8", model_cache=model_cache)


@pytest.fixture(scope="module")
def torch_embedder() -> SentenceTransformerEmbedder:
    """fp32 torch, pinned: what the int8 backend is compared with (the suite's ``embedder`` is the product default)."""
    return SentenceTransformerEmbedder(backend="torch")


def test_the_suite_embeds_with_the_product_default_backend(embedder: Embedder) -> None:
    """Service, API and CLI tests run the backend users get, taken from ``Settings`` (issue 16, defect 2)."""
    assert embedder.fingerprint()["backend"] == Settings().backend
    assert type(embedder) is type(make_embedder(Settings()))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.sum(np.asarray(a) * np.asarray(b), axis=1)
    return out


# -- the onnx-int8 backend --------------------------------------------------------------------------------------


def test_onnx_int8_vectors_are_close_to_torch(torch_embedder: SentenceTransformerEmbedder, onnx) -> None:
    torch_vecs, int8_vecs = torch_embedder.encode(SENTENCES), onnx.encode(SENTENCES)
    assert int8_vecs.dtype == np.float32 and int8_vecs.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(int8_vecs, axis=1), 1.0, atol=1e-5)
    assert cosines(torch_vecs, int8_vecs).min() >= 0.98
    # Activations are quantised per batch (one scale per tensor), so a text's int8 vector depends a little on the
    # texts batched with it; the same batch gives the same vector.
    np.testing.assert_array_equal(onnx.encode(SENTENCES), int8_vecs)
    assert cosines(torch_vecs, onnx.encode(SENTENCES, batch_size=2)).min() >= 0.98
    assert onnx.encode([]).shape == (0, 384)


def test_export_happens_once_and_is_reused(onnx, model_cache: Path) -> None:
    assert onnx.onnx_exported
    assert onnx.onnx_path is not None and onnx.onnx_path.is_file()
    assert onnx.onnx_path.relative_to(onnx.onnx_path.parent.parent).as_posix() == onnx_file_name(onnx.quantization)
    mtime = onnx.onnx_path.stat().st_mtime_ns
    again = make_embedder(Settings(backend="onnx-int8", model_cache=model_cache))
    assert isinstance(again, OnnxEmbedder)  # the export exists: it runs alone, without torch
    assert not again.onnx_exported and again.onnx_path == onnx.onnx_path
    assert onnx.onnx_path.stat().st_mtime_ns == mtime
    exports = [p.name for p in model_cache.iterdir() if p.name != embedding.FILES_HASH_CACHE]
    assert exports == [onnx.onnx_path.parent.parent.name]  # no temporary leftovers
    np.testing.assert_allclose(again.encode(SENTENCES[:2]), onnx.encode(SENTENCES[:2]), atol=1e-6)


TEXTS = [
    *SENTENCES,
    "",
    "Café, naïve résumé: “quotes” — and an emoji 😀; 日本語のテキスト.",
    "A very long paragraph about markets. " * 80,  # past max_seq_length: truncated alike
    "Short",
]


def test_onnx_alone_gives_the_vectors_of_the_int8_path(onnx, model_cache: Path) -> None:
    """The ONNX-alone embedder (onnxruntime, the tokenizers library, numpy pooling) against sentence-transformers'
    int8 path: the same tokens, micro-batches and vectors, so an index built by either is queried by either."""
    alone = OnnxEmbedder.open("all-MiniLM-L6-v2", 2, model_cache)
    assert alone is not None and alone.onnx_path == onnx.onnx_path
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert alone._tokenize(TEXTS, False)[0][key] == [list(x) for x in onnx._tokenize(TEXTS, False)[0][key]]
    np.testing.assert_allclose(alone.encode(TEXTS), onnx.encode(TEXTS), atol=1e-6)
    spans = [[(0, min(len(t), 12)), (min(len(t), 12), len(t))] for t in TEXTS]
    (va, sa), (vb, sb) = alone.encode_spans(TEXTS, spans), onnx.encode_spans(TEXTS, spans)
    np.testing.assert_allclose(va, vb, atol=1e-6)
    for a, b in zip(sa, sb, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert [alone.count_tokens(t) for t in TEXTS] == [onnx.count_tokens(t) for t in TEXTS]
    assert (alone.dimension, alone.max_seq_length) == (onnx.dimension, onnx.max_seq_length)
    fp_alone, fp_st = alone.fingerprint(), onnx.fingerprint()
    assert {k: v for k, v in fp_alone.items() if k != "probe"} == {k: v for k, v in fp_st.items() if k != "probe"}
    np.testing.assert_allclose(fp_alone["probe"], fp_st["probe"], atol=1e-5)
    check_compatible(fp_st, alone)


def test_the_int8_query_path_imports_neither_torch_nor_sentence_transformers(onnx, model_cache: Path) -> None:
    """What makes a CLI search answer in a few seconds: torch and sentence-transformers cost ~5 s to import."""
    code = (
        "import sys; from search.text.embedding import make_embedder; from search.settings import Settings; "
        f"e = make_embedder(Settings(model_cache={str(model_cache)!r})); e.encode(['a query']); "
        "heavy = ('torch', 'sentence_transformers', 'transformers'); "
        "print(type(e).__name__, sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["OnnxEmbedder", "[]"], out.stderr


def test_onnx_alone_declines_what_it_cannot_run(tmp_path: Path, onnx, model_cache: Path) -> None:
    """A model with another head (a dense layer, CLS pooling), or no export yet: sentence-transformers runs it."""
    assert OnnxEmbedder.open("all-MiniLM-L6-v2", 1, tmp_path / "empty-cache") is None  # not exported there
    model = tmp_path / "model"
    shutil.copytree(embedding.resolve_model("all-MiniLM-L6-v2"), model)
    modules = json.loads((model / "modules.json").read_text())
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    (model / "modules.json").write_text(json.dumps([*modules, dense]))
    assert OnnxEmbedder.open(str(model), 1, model_cache) is None
    (model / "modules.json").write_text(json.dumps(modules))
    pooling = json.loads((model / "1_Pooling" / "config.json").read_text())
    (model / "1_Pooling" / "config.json").write_text(
        json.dumps({**pooling, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True})
    )
    assert OnnxEmbedder.open(str(model), 1, model_cache) is None


def test_export_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built in a temporary sibling and renamed: a failed export leaves nothing, a lost race keeps the winner's."""

    def fake_fp32(model: Any, path: Path) -> None:
        path.write_bytes(b"fp32")

    def fake_quantize(src: Path, dst: Path, config: str) -> None:
        dst.write_bytes(b"int8 " + src.read_bytes())

    monkeypatch.setattr(embedding, "_export_fp32", fake_fp32)
    monkeypatch.setattr(embedding, "_quantize", fake_quantize)
    no_model: Any = None  # _export_fp32 is faked: the model is never read
    target = tmp_path / "cache" / "model-abc"
    assert embedding._export_onnx_int8(no_model, target, "avx2")
    assert (target / "onnx" / "model_qint8_avx2.onnx").read_bytes() == b"int8 fp32"
    assert json.loads((target / "export.json").read_text())["config"] == "avx2"
    assert not (target / "model_fp32.onnx").exists()
    # a second process finishing the same export later: its rename fails, the first copy stays
    monkeypatch.setattr(embedding, "_quantize", lambda s, d, c: d.write_bytes(b"other"))
    assert not embedding._export_onnx_int8(no_model, target, "avx2")
    assert (target / "onnx" / "model_qint8_avx2.onnx").read_bytes() == b"int8 fp32"

    def broken(src: Path, dst: Path, config: str) -> None:
        dst.write_bytes(b"half")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(embedding, "_quantize", broken)
    with pytest.raises(RuntimeError):
        embedding._export_onnx_int8(no_model, tmp_path / "cache" / "model-def", "avx2")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["model-abc"]


def test_quantization_config_follows_cpu_flags() -> None:
    flags = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {}\n"
    assert quantization_config(flags.format("avx512f avx512_vnni"), "x86_64") == "avx512_vnni"
    assert quantization_config(flags.format("avx512f avx512bw"), "x86_64") == "avx512"
    assert quantization_config(flags.format(""), "x86_64") == "avx2"
    assert quantization_config("", "aarch64") == "arm64"
    assert quantization_config() in QUANT_WEIGHT_TYPES
    # file names as sentence-transformers' export_dynamic_quantized_onnx_model writes them
    assert onnx_file_name("avx2") == "onnx/model_qint8_avx2.onnx"
    assert onnx_file_name("avx512_vnni") == "onnx/model_qint8_avx512_vnni.onnx"


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(InvalidInput, match="backend"):
        SentenceTransformerEmbedder(backend="tensorrt")


def test_cli_commands_take_backend(runner: CliRunner) -> None:
    for command in ("index", "serve", "search", "eval"):
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "--backend [torch|onnx-int8]" in result.output
    result = runner.invoke(main, ["search", "anything", "--backend", "tensorrt"])
    assert result.exit_code == 2


# -- fingerprints and compatibility -----------------------------------------------------------------------------


def test_fingerprint_records_backend(torch_embedder: SentenceTransformerEmbedder, onnx) -> None:
    torch_fp, int8_fp = torch_embedder.fingerprint(), onnx.fingerprint()
    assert torch_fp["backend"] == "torch" and "quantization" not in torch_fp
    assert int8_fp["backend"] == "onnx-int8" and int8_fp["quantization"] == quantization_config()
    assert int8_fp["files_sha256"] == torch_fp["files_sha256"]  # the same model files, run differently


def test_manifest_records_backend(tmp_path: Path, onnx, model_cache: Path) -> None:
    target = tmp_path / "int8"
    settings = Settings(index_dir=target, backend="onnx-int8", model_cache=model_cache)
    build_index(list(read_sources([CORPUS]))[:3], target, settings, progress=False)  # embedder from settings
    model = json.loads((target / MANIFEST).read_text())["model"]
    assert model["backend"] == "onnx-int8" and model["quantization"] == onnx.quantization
    open_index(target, onnx).close()


def test_cli_index_builds_with_the_backend_asked_for(
    runner: CliRunner, tmp_path: Path, model_cache: Path, onnx, write_jsonl: Any
) -> None:
    rows = [{"id": "a", "title": "Rates", "text": "The central bank raised interest rates by a quarter point."}]
    source, target = write_jsonl("one.jsonl", rows), tmp_path / "cli-int8"
    env = {"NEWSDESK_MODEL_CACHE": str(model_cache)}
    result = runner.invoke(
        main, ["index", str(source), "--index", str(target), "--backend", "onnx-int8", "-q"], env=env
    )
    assert result.exit_code == 0, result.output
    assert json.loads((target / MANIFEST).read_text())["model"]["backend"] == "onnx-int8"


def test_torch_index_accepts_onnx_queries(tmp_path: Path, torch_embedder: SentenceTransformerEmbedder, onnx) -> None:
    target = tmp_path / "torch"
    build_index(list(read_sources([CORPUS]))[:3], target, Settings(index_dir=target), torch_embedder, progress=False)
    recorded = json.loads((target / MANIFEST).read_text())["model"]
    assert recorded["backend"] == "torch"
    probe_cosine = cosines(np.asarray(recorded["probe"]), np.asarray(onnx.fingerprint()["probe"])).min()
    assert probe_cosine >= PROBE_MIN_COSINE
    index = open_index(target, onnx)
    try:
        q = onnx.encode(["central bank interest rates"])
        assert index.passages.search(q, 3)[1].size
    finally:
        index.close()
    old = {k: v for k, v in recorded.items() if k != "backend"}  # an index from before backends existed
    check_compatible(old, torch_embedder)
    check_compatible(old, onnx)


def test_different_model_is_refused(torch_embedder: SentenceTransformerEmbedder, onnx) -> None:
    recorded = dict(torch_embedder.fingerprint())
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((384, 384)))
    other = dict(recorded, name="other-model", files_sha256="0" * 64)
    other["probe"] = (np.asarray(recorded["probe"]) @ rotation).tolist()
    for e in (torch_embedder, onnx):
        with pytest.raises(ModelMismatch, match="embeds text differently"):
            check_compatible(other, e)
    # same files, other backend, vectors too far apart: refused, naming the backends
    tampered = dict(recorded, probe=other["probe"])
    with pytest.raises(ModelMismatch, match="onnx-int8 backend"):
        check_compatible(tampered, onnx)
    check_compatible(tampered, torch_embedder)  # same files on the same backend: trusted without probing


# -- span vectors -----------------------------------------------------------------------------------------------

PARAGRAPHS = [
    (
        [
            "The city council met on Tuesday evening.",
            "It voted to close the old bridge because engineers found deep cracks in its supports.",
            "Residents will have to use a ferry until a new bridge opens in 2026.",
        ],
        [("Why was the bridge shut down?", 1), ("When will the replacement crossing be ready?", 2)],
    ),
    (
        [
            "The striker joined the club in January.",
            "She scored twice in the second half to win the cup final.",
            "Her contract runs until 2027.",
        ],
        [("Who won the final and how?", 1)],
    ),
    (
        [
            "The museum reopened on Saturday after a two-year renovation.",
            "Its new wing displays dinosaur fossils found in the nearby hills.",
            "Tickets cost ten pounds for adults, and children get in free.",
        ],
        [("How much does admission cost?", 2)],
    ),
]


def sentence_spans(sentences: list[str]) -> tuple[str, list[tuple[int, int]]]:
    text = " ".join(sentences)
    spans = []
    for s in sentences:
        start = text.index(s)
        spans.append((start, start + len(s)))
    return text, spans


@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
def test_span_vectors_find_the_answering_sentence(
    backend: str, torch_embedder: SentenceTransformerEmbedder, onnx
) -> None:
    e = torch_embedder if backend == "torch" else onnx
    texts, spans = zip(*(sentence_spans(sentences) for sentences, _ in PARAGRAPHS), strict=True)
    vectors, span_vectors = e.encode_spans(list(texts), list(spans), batch_size=2)
    np.testing.assert_allclose(vectors, e.encode(list(texts), batch_size=2), atol=1e-6)
    for (_, queries), sv in zip(PARAGRAPHS, span_vectors, strict=True):
        assert sv.shape == (3, 384) and sv.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(sv, axis=1), 1.0, atol=1e-5)
        for query, answer in queries:
            scores = sv @ e.encode([query])[0]
            assert int(np.argmax(scores)) == answer, (query, scores)


@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
def test_span_edge_cases(backend: str, torch_embedder: SentenceTransformerEmbedder, onnx) -> None:
    e = torch_embedder if backend == "torch" else onnx
    filler = "The committee discussed the report in detail. "
    head = filler * 40
    assert e.count_tokens(head) > e.max_seq_length  # the tail is past the model's truncation
    long_text = head + "A final sentence the model never sees."
    enc = e._model.tokenizer(long_text, truncation=True, max_length=e.max_seq_length, return_offsets_mapping=True)
    seen_end = max(end for _, end in enc["offset_mapping"])  # where the model's view of the text stops
    assert len(filler) < seen_end < len(head)
    short = "Short text.   Second."
    texts = [long_text, short, "No spans here."]
    straddling = (seen_end - len(filler), len(long_text))
    clipped = (straddling[0], seen_end)
    spans = [
        [(len(head), len(long_text)), (seen_end, len(long_text)), straddling, (0, len(filler)), clipped],
        [(5, 5), (11, 14), (0, 11)],
        [],
    ]
    vectors, span_vectors = e.encode_spans(texts, spans)
    np.testing.assert_allclose(vectors, e.encode(texts), atol=1e-6)
    assert [v.shape for v in span_vectors] == [(5, 384), (3, 384), (0, 384)]
    long_spans, short_spans = span_vectors[0], span_vectors[1]
    np.testing.assert_array_equal(long_spans[0], vectors[0])  # wholly past truncation: the text's vector
    np.testing.assert_array_equal(long_spans[1], vectors[0])
    # straddling the truncation point: the vector of the tokens the model did see
    np.testing.assert_array_equal(long_spans[2], long_spans[4])
    assert float(long_spans[2] @ vectors[0]) < 0.999
    assert float(long_spans[3] @ vectors[0]) < 0.999
    np.testing.assert_array_equal(short_spans[0], vectors[1])  # empty span
    np.testing.assert_array_equal(short_spans[1], vectors[1])  # blank span: no token starts in it
    assert float(short_spans[2] @ vectors[1]) < 0.999  # a real span has its own vector
    empty_vectors, empty_spans = e.encode_spans([], [])
    assert empty_vectors.shape == (0, 384) and empty_spans == []


def test_invalid_spans_are_refused(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="span lists"):
        embedder.encode_spans(["one", "two"], [[]])
    for bad in [(-1, 2), (3, 2), (0, 99)]:
        with pytest.raises(ValueError, match="not a range"):
            embedder.encode_spans(["some text"], [[bad]])


def test_model_cache_default_is_outside_the_repository() -> None:
    cache = Path(os.path.expanduser(Settings().model_cache))
    assert Path(__file__).resolve().parent.parent not in cache.resolve().parents


def test_onnx_encodes_concurrently_like_sequentially(onnx: SentenceTransformerEmbedder) -> None:
    """Request threads share one int8 embedder: only tokenizing takes turns, and results do not mix."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"Question number {i}: why did the central bank raise rates {i} times?" for i in range(24)]
    alone = [onnx.encode([t])[0] for t in texts]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda t: onnx.encode([t])[0], texts))
        spans = list(pool.map(lambda t: onnx.encode_spans([t], [[(0, 8)]])[0][0], texts))
    np.testing.assert_allclose(np.stack(together), np.stack(alone), atol=1e-6)
    np.testing.assert_allclose(np.stack(spans), np.stack(alone), atol=1e-6)


def test_the_model_files_hash_is_remembered_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, cache = tmp_path / "model", tmp_path / "cache"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"one")
    (model / "config.json").write_text("{}")
    first = embedding.cached_files_hash(model, cache)
    assert first == embedding.files_hash(model) and (cache / embedding.FILES_HASH_CACHE).is_file()
    calls: list[Path] = []
    real = embedding.files_hash

    def counting(path: Path) -> str | None:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(embedding, "files_hash", counting)
    assert embedding.cached_files_hash(model, cache) == first and calls == []  # remembered: nothing hashed
    (model / "weights.bin").write_bytes(b"two")  # another size and modification time
    changed = embedding.cached_files_hash(model, cache)
    assert calls == [model] and changed == real(model) != first


def test_one_query_takes_the_short_path_with_the_batched_vector(
    onnx, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search embeds one text: the ONNX-alone embedder runs it straight through the session, and its vector is
    bit for bit the micro-batch path's (empty, unicode and truncated texts included). The batch machinery is
    replaced by a failure here, so the old path (through ``_onnx_batches``) fails this test."""
    alone = OnnxEmbedder.open("all-MiniLM-L6-v2", 2, model_cache)
    assert alone is not None
    batched = [SentenceTransformerEmbedder.encode(alone, [text]) for text in TEXTS]

    def no_batches(*args: object, **kwargs: object) -> None:
        raise AssertionError("one text went through the micro-batches")

    monkeypatch.setattr(alone, "_onnx_batches", no_batches)
    for text, expected in zip(TEXTS, batched, strict=True):
        vector = alone.encode([text])
        assert vector.shape == (1, 384) and vector.dtype == np.float32
        np.testing.assert_array_equal(vector, expected)
    assert cosines(alone.encode([SENTENCES[0]]), onnx.encode([SENTENCES[0]])).min() > 0.9999
    with pytest.raises(AssertionError, match="micro-batches"):
        alone.encode(TEXTS[:2])  # two texts still batch
