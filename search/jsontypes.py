"""The one sanctioned ``Any`` outside the Milvus client glue: JSON documents as ``json.loads`` gives them.

tests/test_typing.py fails on ``Any`` in any module of the product but this one and the Milvus client glue,
so a value typed ``Any`` is either a JSON document on its way in or out (a manifest on disk, a request body, a
Milvus record) or a pymilvus object. (mypy's ``disallow_any_explicit`` would also flag every bare ``np.ndarray``,
whose dtype parameters default to ``Any``: the scan is the narrower rule that holds.)
Code that reads a JSON document checks what it reads; a typed structure (a ``TypedDict``, a
dataclass) replaces the alias as soon as the shape is known.
"""

from __future__ import annotations

from typing import Any, TypeAlias

JSONObject: TypeAlias = dict[str, Any]  # a decoded JSON object, checked by whoever reads a key
JSONValue: TypeAlias = Any  # any decoded JSON value: object, array, string, number, true, false or null
