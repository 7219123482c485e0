"""An int8 copy of an exact base's vectors that a range search scans first, with a proven bound on its error.

A search counts the articles whose best passage reaches ``match_floor`` (0.22), so an exact index scores every
passage vector of the query: 168 MB of float32 at 110k passages, 6-8 ms of one core, more than embedding the query
(bench/README.md "Search CPU near its floor"). This sketch holds each vector as int8 codes with its own scale (a
quarter of the bytes) and, for each, a bound on how far a score from the codes can be from the exact one. A range
search scans the codes (onnxruntime's ``MatMulInteger``: MLAS picks its int8 kernel for the CPU at hand, VNNI where
there is one, AVX2 else) and keeps the rows whose score plus bound reaches the floor; the caller scores those
exactly, as FAISS would, and keeps those at the floor. No vector at the floor can be left out, so the hits, and
every ranking built on them, are those of the exact scan (tests/test_sketch.py against FAISS and a numpy oracle).

The bound, for query ``q`` and vector ``x`` with quantised ``q'`` and ``x'``:
``|q.x - q'.x'| = |q.(x - x') + (q - q').x'| <= |q| |x - x'| + |q - q'| |x'|``, plus a slack for float32 rounding
in the exact scores (at most ``(d + 8) eps |q| |x|``). On MiniLM vectors ``|x - x'|`` averages 0.007.

The query takes 7 bits (-63..63, stored 1..127 around a zero point of 64) and the codes 8: a pair of products then
stays within int16, which AVX2's ``vpmaddubsw`` (u8 x s8, pairs summed with saturation) needs to be exact.

A rebuildable cache: built in memory from the mapped base when it is opened (search/vectors/faiss.py), never written.
"""

from __future__ import annotations

import numpy as np

# Below this many vectors the float32 scan costs about what the sketch's fixed costs do (an onnxruntime call, the
# numpy passes over the rows). bench/sketch_scan.py measures both sides at several sizes.
SKETCH_FROM = 20_000
# Vectors per onnxruntime session (its model is one protobuf, which may not pass 2 GB).
CHUNK_ROWS = 1 << 18
QUANTISE_ROWS = 2048  # rows quantised at a time (in float64: 6 MB at 384 dimensions, a few such arrays at once)
CODE_LEVELS = 127
QUERY_LEVELS = 63
QUERY_ZERO = 64


def _session(codes_t: np.ndarray) -> tuple[object, object]:
    """An onnxruntime session computing ``(a - 64) @ codes_t`` for one uint8 query row ``a``, and the ``OrtValue``
    it reads the codes from, which must live as long as it does. The codes are handed over as an initializer
    (``SessionOptions.add_initializer``), not written into the model: a model holding them was copied three times
    on its way into onnxruntime (334 MB more at the peak at 110k passages, against none)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    d = codes_t.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["q", "codes", "zero"], ["y"])],
        "newsdesk_sketch",
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [1, d])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, None])],
        # a stand-in, replaced by the codes below (onnxruntime then infers the output's shape from it and warns
        # at every call that the real one differs: its log is kept to errors)
        [
            numpy_helper.from_array(np.array(QUERY_ZERO, np.uint8), "zero"),
            numpy_helper.from_array(np.zeros((d, 1), np.int8), "codes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one search, one core: the server runs searches side by side
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    codes = ort.OrtValue.ortvalue_from_numpy(codes_t)
    options.add_initializer("codes", codes)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, codes


class Int8Sketch:
    """Int8 codes of ``n`` vectors, per row: ``scale`` (code to value), ``spread`` (the bound's share that grows
    with the query's norm: quantisation error plus rounding slack) and ``norm`` (of the quantised row, which the
    query's own quantisation error multiplies). Immutable once built; safe to search from many threads."""

    def __init__(
        self,
        sessions: list[tuple[object, object]],
        scale: np.ndarray,
        spread: np.ndarray,
        norm: np.ndarray,
        dimension: int,
    ) -> None:
        self._sessions = sessions
        self.scale, self.spread, self.norm = scale, spread, norm
        self.rows, self.dimension = len(scale), dimension
        # the float32 arithmetic of ``candidates`` errs by a few ulps of the largest score it can hold
        self._tolerance = np.float32(1e-5 * (float(norm.max()) + float(spread.max()) if len(norm) else 0.0))

    @classmethod
    def of(cls, vectors: np.ndarray) -> Int8Sketch:
        """The sketch of ``vectors`` (n x d float32, e.g. a view of a mapped FAISS base: read once, in chunks)."""
        n, d = vectors.shape
        slack = (d + 8) * float(np.finfo(np.float32).eps)
        sessions: list[tuple[object, object]] = []
        scale = np.empty(n, np.float32)
        spread = np.empty(n, np.float32)
        norm = np.empty(n, np.float32)
        for start in range(0, n, CHUNK_ROWS):
            end = min(n, start + CHUNK_ROWS)
            codes_t = np.empty((d, end - start), dtype=np.int8)
            for at in range(start, end, QUANTISE_ROWS):  # float64 in small steps: no copy of the chunk at 8 bytes
                upto = min(end, at + QUANTISE_ROWS)
                x = np.asarray(vectors[at:upto], dtype=np.float64)
                # the scale as stored (float32), so that the codes and their error are those a search will use
                top = (np.abs(x).max(axis=1) / CODE_LEVELS).astype(np.float32).astype(np.float64)
                top[top == 0] = 1.0  # a zero vector: codes 0, no error
                codes = np.clip(np.rint(x / top[:, None]), -CODE_LEVELS, CODE_LEVELS)
                approx = codes * top[:, None]
                error = np.linalg.norm(x - approx, axis=1)
                scale[at:upto] = top
                # rounded up to float32, so that the bound computed from them is never below the exact one
                spread[at:upto] = _up(error + slack * np.linalg.norm(x, axis=1))
                norm[at:upto] = _up(np.linalg.norm(approx, axis=1))
                codes_t[:, at - start : upto - start] = codes.T
            sessions.append(_session(codes_t))  # (session, the codes it reads)
        return cls(sessions, scale, spread, norm, d)

    @property
    def nbytes(self) -> int:
        """The codes (MLAS packs them once: about a byte a value) and the three float32 values of each row."""
        return self.rows * (self.dimension + 12)

    def candidates(self, query: np.ndarray, floor: float) -> np.ndarray:
        """Rows (ascending) whose exact score may reach ``floor``: every row whose does, and a few that do not."""
        return self.bounds(query, floor)[0]

    def bounds(self, query: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``candidates`` with, for each, the sketch's score and its margin: the exact score (as FAISS computes
        it in float32) lies within the score plus or minus the margin."""
        q = np.asarray(query, dtype=np.float64).reshape(-1)
        top = float(np.abs(q).max()) / QUERY_LEVELS
        if top == 0.0:
            top = 1.0
        steps = np.clip(np.rint(q / top), -QUERY_LEVELS, QUERY_LEVELS)
        q_norm = np.float32(_up(float(np.linalg.norm(q))))
        q_error = np.float32(_up(float(np.linalg.norm(q - steps * top))))
        q_scale = np.float32(top)
        tolerance = self._tolerance * q_norm
        feed = {"q": (steps + QUERY_ZERO).astype(np.uint8)[None, :]}
        rows, scores, margins = [], [], []
        start = 0
        for session in self._sessions:
            y = session[0].run(None, feed)[0][0]  # type: ignore[attr-defined]
            end = start + len(y)
            # q'.x' + |q| spread + |q - q'| norm, in float32: the int32 dot products are exact (below 2**24), the
            # float32 steps after them err by ulps, which the tolerance covers
            upper = y.astype(np.float32)
            upper *= self.scale[start:end]
            upper *= q_scale
            upper += q_norm * self.spread[start:end]
            upper += q_error * self.norm[start:end]
            found = np.flatnonzero(upper >= np.float32(floor) - tolerance)
            at = found + start
            rows.append(at)
            scores.append(y[found].astype(np.float32) * self.scale[at] * q_scale)
            margins.append(q_norm * self.spread[at] + q_error * self.norm[at] + 2 * tolerance)
            start = end
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32)
        return np.concatenate(rows).astype(np.int64, copy=False), np.concatenate(scores), np.concatenate(margins)


def _up(values: np.ndarray | float) -> np.ndarray:
    """float64 values as float32, rounded up (a bound must not shrink when it is stored)."""
    as32 = np.asarray(values, dtype=np.float32)
    low = as32.astype(np.float64) < np.asarray(values, dtype=np.float64)
    return np.where(low, np.nextafter(as32, np.float32(np.inf)), as32).astype(np.float32)
