"""What embedding alone costs a 10-article write of real news: the floor under issue 17's "under 2 s including
embedding".

    .venv/bin/python bench/write_floor.py --out bench/results/write_floor.json     # about 3 minutes on 2 cores

Draws ``--batches`` seeded batches of ``--articles`` RealTime QA articles (non-empty ones, uniformly from the whole
corpus: the size of write a newsroom's feed brings), and for each runs ``indexer.build.new_articles``, the step a
write (``newsdesk add``, the API's POST, ``Writer.upsert``) runs before it touches the index: chunking, the
headline + lead inputs, and the embedding of every passage (with its sentence vectors from the same forward pass)
and lead, with the product's default backend (onnx-int8) and settings. In the same run, on the same inputs:

- ``baseline``: the plain sentence-transformers loop (``SentenceTransformer.encode(batch_size=32)``, torch fp32)
  over the same unique inputs: what the product's int8 path is measured against;
- ``gemm_floor_s``: the seconds the batch's matrix products alone would take at onnxruntime's best int8 GEMM rate
  on this machine (``MatMulInteger``, uint8 x int8 as the int8 model runs it, one single-threaded call per core
  at once, measured here), from the model's shape and each input's token count: the least any int8 runtime
  built on these kernels could spend, with attention, softmax, layer norms, GELU, quantising the activations,
  tokenizing and pooling all free.

Each batch reports passages, inputs embedded, tokens (real, and padded as the micro-batches run them), seconds
(wall, and this process's CPU) and the share of the 2 s bar. The summary gives the median batch. CPU flags are
printed beside the figures: the int8 kernels differ with AVX-512 VNNI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.scifact import write_report  # noqa: E402
from bench.slow import cpu_flags  # noqa: E402
from indexer.build import embedding_input, lead_input, lead_limit, make_chunker, new_articles  # noqa: E402
from indexer.sources import read_sources  # noqa: E402
from search.models import Article  # noqa: E402
from search.settings import Settings  # noqa: E402
from search.text.embedding import ONNX_TOKEN_BUDGET, make_embedder, micro_batches, resolve_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "realtimeqa" / "news_corpus.jsonl.gz"
BAR_S = 2.0  # issue 17 acceptance 2: a 10-article write under 2 s including embedding
GEMM_ROWS = 4096  # rows of the timed int8 product: large enough that the kernel runs at its best


def draw_batches(data: Path, batches: int, articles: int, seed: int) -> list[list[Article]]:
    """``batches`` disjoint draws of ``articles`` non-empty articles, uniformly over the corpus."""
    corpus = [a for a in read_sources([data]) if a.paragraphs]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(corpus), size=batches * articles, replace=False)
    return [[corpus[int(i)] for i in picked[b * articles : (b + 1) * articles]] for b in range(batches)]


def model_shape(model: Any) -> dict[str, int]:
    """Layers, hidden width and feed-forward width of a sentence-transformers model's transformer."""
    config = model[0].auto_model.config
    return {
        "layers": int(config.num_hidden_layers),
        "hidden": int(config.hidden_size),
        "intermediate": int(config.intermediate_size),
    }


def gemm_macs(lengths: list[int], shape: dict[str, int]) -> int:
    """Multiply-accumulates of the encoder's matrix products for sequences of these token counts: per layer, the
    four projections (4 h^2 a token), the feed-forward pair (2 h i a token) and attention's two products (2 L h a
    token, L the sequence's length)."""
    h, i, layers = shape["hidden"], shape["intermediate"], shape["layers"]
    return sum(layers * (n * (4 * h * h + 2 * h * i) + 2 * n * n * h) for n in lengths)


def int8_gemm_rate(shape: dict[str, int], threads: int, seconds: float = 3.0) -> float:
    """onnxruntime's int8 product rate on this machine, MACs a second: ``MatMulInteger`` of a uint8 (rows x hidden)
    by an int8 (hidden x intermediate) matrix, the encoder's largest product, one single-threaded session call per
    thread, ``threads`` at once (as the product runs its micro-batches)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    h, i = shape["hidden"], shape["intermediate"]
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 128, size=(h, i), dtype=np.int8), name="B")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "int8_gemm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, h])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [None, i])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del onnx
    a = rng.integers(0, 256, size=(GEMM_ROWS, h), dtype=np.uint8)
    session.run(["Y"], {"A": a})  # warm-up
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(slot: int) -> None:
        while time.perf_counter() < stop:
            session.run(["Y"], {"A": a})
            counts[slot] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    return sum(counts) * GEMM_ROWS * h * i / elapsed


def one_batch(batch: list[Article], settings: Settings, embedder: Any, baseline: Any, rate: float) -> dict[str, Any]:
    """The write's chunk-and-embed step on ``batch``, and the baseline and GEMM floor on the same inputs."""
    chunker = make_chunker(settings, embedder)
    chunked = [(a, chunker.chunk(a)) for a in batch]
    limit = lead_limit(embedder, settings)
    inputs = [embedding_input(a, c, settings.title_context) for a, chunks in chunked for c in chunks]
    leads = [lead_input(a, limit, embedder.count_tokens) for a in batch]
    unique = list(dict.fromkeys([*inputs, *leads]))
    tokens = baseline.tokenizer(unique, truncation=True, max_length=baseline.max_seq_length)["input_ids"]
    lengths = [len(t) for t in tokens]
    padded = sum(len(g) * lengths[g[0]] for g in micro_batches(lengths))
    wall, cpu = time.perf_counter(), time.process_time()
    _rows, embedded = new_articles(batch, chunker, embedder, settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    base_wall = time.perf_counter()
    baseline.encode(unique, batch_size=32, normalize_embeddings=True)
    base_wall = time.perf_counter() - base_wall
    macs = gemm_macs(lengths, model_shape(baseline))
    return {
        "articles": len(batch),
        "paragraphs": sum(len(a.paragraphs) for a in batch),
        "passages": len(inputs),
        "embedded": int(embedded),
        "tokens": sum(lengths),
        "padded_tokens": padded,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "share_of_bar": round(wall / BAR_S, 3),
        "baseline_seconds": round(base_wall, 3),
        "ratio_to_baseline": round(base_wall / wall, 3),
        "gemm_macs": macs,
        "gemm_floor_s": round(macs / rate, 3),
        "achieved_macs_per_s": round(macs / wall / 1e9, 1),
    }


def run(data: Path, batches: int, articles: int, seed: int) -> dict[str, Any]:
    settings = Settings()
    embedder = make_embedder(settings)
    from sentence_transformers import SentenceTransformer

    baseline = SentenceTransformer(resolve_model(settings.model), device="cpu")
    warm = ["a short warm-up text for both paths"] * 8
    embedder.encode(warm)
    baseline.encode(warm)
    drawn = draw_batches(data, batches, articles, seed)
    shape = model_shape(baseline)
    rate = int8_gemm_rate(shape, settings.threads)
    results = []
    for n, batch in enumerate(drawn):
        result = one_batch(batch, settings, embedder, baseline, rate)
        results.append(result)
        print(f"batch {n}: {json.dumps(result)}", file=sys.stderr)
    median = sorted(results, key=lambda r: r["seconds"])[len(results) // 2]
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": {"machine": platform.machine(), "cores": os.cpu_count(), "flags": cpu_flags(_cpuinfo())},
        "load_average": list(os.getloadavg()),
        "backend": settings.backend,
        "threads": settings.threads,
        "onnx_token_budget": ONNX_TOKEN_BUDGET,
        "model_shape": shape,
        "int8_gemm_gmacs_per_s": round(rate / 1e9, 1),
        "batches": results,
        "median_batch": median,
        "summary": {
            "median_seconds": median["seconds"],
            "batches_under_bar": sum(r["seconds"] < BAR_S for r in results),
            "median_gemm_floor_s": statistics.median(r["gemm_floor_s"] for r in results),
            "median_ratio_to_baseline": statistics.median(r["ratio_to_baseline"] for r in results),
            "median_passages_per_s": round(statistics.median(r["embedded"] / r["seconds"] for r in results), 1),
        },
    }


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="RealTime QA news_corpus.jsonl.gz")
    parser.add_argument("--batches", type=int, default=7, help="batches drawn (default 7)")
    parser.add_argument("--articles", type=int, default=10, help="articles a batch (default 10)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"error: no RealTime QA corpus at {args.data} (--data)")
    write_report(args.out, run(args.data, args.batches, args.articles, args.seed))


if __name__ == "__main__":
    main()
