"""Checks of search arguments that need nothing but the settings: the service runs them on every request, and the
CLI runs them before it loads a model or opens an index, so a mistake is reported in well under a second.

No numpy, FAISS or model import here: that is the point of the module (``newsdesk search "" `` must not wait for
onnxruntime to start before saying the query is empty).
"""

from __future__ import annotations

from search.errors import InvalidInput
from search.models import Mode, is_mode
from search.settings import MODES, Settings

MAX_OFFSET = 10_000


def check_query(settings: Settings, query: str) -> str:
    """The query, stripped; InvalidInput when empty, too long or holding NUL."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidInput("query must not be empty")
    if len(query) > settings.max_query_chars:
        raise InvalidInput(f"query is {len(query)} characters; the limit is {settings.max_query_chars}")
    if "\x00" in query:
        raise InvalidInput("query must not contain NUL characters")
    return query.strip()


def check_k(settings: Settings, k: int, name: str = "k") -> int:
    if not 1 <= k <= settings.max_k:
        raise InvalidInput(f"{name} must be between 1 and {settings.max_k}, got {k}")
    return k


def check_mode(settings: Settings, mode: str | None) -> Mode:
    """The mode asked for, or the settings' default."""
    mode = settings.mode if mode is None else mode
    if not is_mode(mode):
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def check_offset(offset: int) -> int:
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")
    return offset
