"""The more-like-this scale benchmark's parts on a small corpus (``bench/mlt_scale.py``; no model, no index):
``.venv/bin/pytest tests/test_bench_mlt_scale.py``."""

from __future__ import annotations

import numpy as np
import pytest

import bench.mlt_scale as scale
from search.news.neighbours import DEFAULT_NEIGHBOURS, NeighbourGraph, PoolConfig


def test_the_synthetic_corpus_is_one_consistent_zipfian_index() -> None:
    keys, vectors, postings = scale.synthetic(300, seed=1)
    postings.validate()
    assert np.array_equal(keys, postings.rowids) and vectors.shape == (300, scale.DIMENSION)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    df = np.diff(postings.indptr)
    assert df[0] > 0.3 * 300 and df[0] > df[10] > df[10_000]  # the commonest terms are dropped by max_df, as news's
    # each posting is one term of one article: no article lists a term twice
    pairs = np.repeat(np.arange(len(df)), df) * 300 + postings.docs
    assert len(np.unique(pairs)) == len(pairs)


def test_the_cost_report_measures_a_pooled_build_a_write_and_a_delete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "DEFAULT_POOL", PoolConfig(cluster_size=100, probe=4, widest=6))
    got = scale.cost(1200, sample=64, seed=3)
    assert got["articles"] == 1200 and got["clusters"] == 12 and got["deleted_graph_articles"] == 1200
    assert 0 < got["mean_pool_articles"] <= 6 * 1200 / 12 * 2  # at most 6 clusters, k-means sizes vary
    assert got["pooled_build_seconds"] > 0 and got["exact_build_seconds_estimated"] > 0
    assert got["write_10_articles_seconds"] > 0 and got["delete_10_articles_seconds"] > 0
    assert 0 <= got["neighbour_recall_vs_exact_on_sampled_rows"] <= 1
    assert got["bytes_per_article"] == pytest.approx(sum(got["bytes"].values()) / 1200, abs=0.1)


def test_recall_and_pool_sizes_are_counted_against_the_exact_profiles() -> None:
    keys, vectors, postings = scale.synthetic(400, seed=2)
    exact = NeighbourGraph.build(keys, vectors, postings, 1, DEFAULT_NEIGHBOURS)
    everyone = np.arange(400)
    assert scale.neighbour_recall(exact.profiles, exact.profiles, everyone) == 1.0
    whole = NeighbourGraph.build(keys, vectors, postings, 1, DEFAULT_NEIGHBOURS, PoolConfig(100, 4, 4))
    assert scale.mean_pool(whole, vectors) == 400.0  # every cluster probed: the pool is the corpus
    assert scale.neighbour_recall(whole.profiles, exact.profiles, everyone) == pytest.approx(1.0)
