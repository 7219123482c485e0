"""Running the WSGI app: waitress threads in one process, or gunicorn worker processes each with their own threads.

One process is enough for I/O-bound traffic, but a search is mostly Python holding the GIL (fusion, BM25 scoring,
serialisation) around an ONNX call that releases it, so one process uses little more than one core however many
threads it has. ``processes > 1`` runs gunicorn's ``gthread`` workers: each worker is forked *before* it builds the
app, so every process loads its own model and index after the fork, and no process forks after torch, onnxruntime
or FAISS started threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask


def serve(
    make_app: Callable[[], Flask], host: str, port: int, *, threads: int, processes: int = 1, timeout: int = 300
) -> None:
    """Serve ``make_app()`` on ``host:port`` until interrupted; ``make_app`` runs once per serving process."""
    if processes <= 1:
        import waitress

        waitress.serve(make_app(), host=host, port=port, threads=threads, ident="newsdesk")
        return
    _GunicornApp(
        make_app,
        {
            "bind": f"{host}:{port}",
            "workers": processes,
            "worker_class": "gthread",
            "threads": threads,
            "preload_app": False,  # build the app in each worker, after its fork
            "timeout": timeout,  # a worker loading a large index must not be killed as hung
            "graceful_timeout": 10,
            "accesslog": None,  # the app writes its own structured request log
            "proc_name": "newsdesk",
        },
    ).run()


def _gunicorn_base() -> type:
    from gunicorn.app.base import BaseApplication

    return BaseApplication  # type: ignore[no-any-return]


class _GunicornApp(_gunicorn_base()):  # type: ignore[misc]
    """gunicorn's documented custom-application hook: options from a dict, the app from a factory."""

    def __init__(self, make_app: Callable[[], Flask], options: dict[str, Any]) -> None:
        self._make_app = make_app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._make_app()
