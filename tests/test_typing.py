"""``typing.Any`` only where the issue allows it (issue 16, acceptance 3).

mypy strict checks what is typed; ``Any`` switches it off. In the product's packages ``Any`` may appear only in the
alias for decoded JSON documents (``search/jsontypes.py``) and in the glue around the untyped Milvus client
(``search/vectors/milvus/client.py``). Everything else is typed for real: TypedDicts and dataclasses for records,
Protocols of the methods called on untyped third-party objects, ``object`` where anything goes. A scan of the
syntax tree, not a grep: a docstring that says "Any server" is no use of the name, and ``typing.Any``, an alias of
the ``typing`` module or a quoted annotation is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("search", "indexer", "api")
ALLOWED = frozenset({"search/jsontypes.py", "search/vectors/milvus/client.py"})
TYPING_MODULES = frozenset({"typing", "typing_extensions"})


def any_lines(source: str) -> list[int]:
    """Lines of ``source`` that use ``Any``: imported from ``typing``, named (also inside a quoted annotation or
    ``cast``'s quoted type), or read as an attribute of the ``typing`` module under any alias."""
    tree = ast.parse(source)
    modules = set(TYPING_MODULES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name in TYPING_MODULES)
    lines: set[int] = set()

    def names_any(node: ast.AST) -> bool:
        if isinstance(node, ast.ImportFrom):
            return node.module in TYPING_MODULES and any(a.name == "Any" for a in node.names)
        if isinstance(node, ast.Name):
            return node.id == "Any"
        if isinstance(node, ast.Attribute):
            return node.attr == "Any" and isinstance(node.value, ast.Name) and node.value.id in modules
        return False

    def scan(root: ast.AST, line: int | None = None) -> None:
        """Record the lines of ``root``'s uses (``line``: where a quoted annotation sits in the file)."""
        for node in ast.walk(root):
            if names_any(node):
                lines.add(line if line is not None else getattr(node, "lineno", 0))

    def quoted(node: ast.AST | None, line: int) -> None:
        """String annotations (and types given to ``cast`` as strings) are code too."""
        if node is None:
            return
        for part in ast.walk(node):
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                try:
                    inner = ast.parse(part.value.strip(), mode="eval")
                except SyntaxError:
                    continue
                scan(inner, line)
                quoted(inner, line)  # a quote inside a quote

    scan(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            quoted(node.annotation, node.lineno)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            quoted(node.returns, node.lineno)
        elif isinstance(node, ast.AnnAssign):
            quoted(node.annotation, node.lineno)
        elif isinstance(node, ast.Call) and node.args:
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", "")  # cast(...) or typing.cast(...)
            if name == "cast":
                quoted(node.args[0], node.lineno)
            elif name == "TypeVar":  # constraints, and the bound
                types = [*node.args[1:], *(k.value for k in node.keywords if k.arg == "bound")]
                quoted(ast.Tuple(elts=types), node.lineno)
    return sorted(lines)


def product_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from typing import Any\n", [1]),
        ("from typing import Any as Anything\n", [1]),
        ("import typing\nx: typing.Any = 1\n", [2]),
        ("import typing as t\ndef f(x: t.Any) -> None: ...\n", [2]),
        ("from typing_extensions import Any\n", [1]),
        ("def f(x: 'dict[str, Any]') -> None: ...\n", [1]),
        ("def f() -> 'list[Any]': ...\n", [1]),
        ("from typing import cast\ny = cast('Any', 1)\n", [2]),
        ("x: 'Mapping[str, \"Any\"]'\n", [1]),
        ("from typing import TypeVar\nT = TypeVar('T', bound='Any')\n", [2]),
        ("from typing import TypeVar\nT = TypeVar('T', 'int', 'Any')\n", [2]),
        ('"""Any server of the same index."""\n', []),
        ("# Any comment\nx = 1\n", []),
        ("from typing import Protocol\nclass P(Protocol): ...\n", []),
        ("import other\nx: other.Any = 1\n", []),
    ],
)
def test_the_scan_finds_any_in_every_spelling(source: str, expected: list[int]) -> None:
    """The scan itself: each way of writing ``Any`` is found, and prose or another module's ``Any`` is not."""
    assert any_lines(source) == expected


def test_any_appears_only_in_json_types_and_the_milvus_client_glue() -> None:
    """Every module of ``search/``, ``indexer/`` and ``api/`` but the two allowed is free of ``Any``."""
    modules = product_modules()
    assert len(modules) > 40, "the scan must see the product's modules"
    found = {}
    for path in modules:
        name = path.relative_to(ROOT).as_posix()
        if name in ALLOWED:
            continue
        lines = any_lines(path.read_text(encoding="utf-8"))
        if lines:
            found[name] = lines
    assert not found, (
        "typing.Any used outside "
        + ", ".join(sorted(ALLOWED))
        + ":\n"
        + "\n".join(f"  {name}: lines {', '.join(map(str, lines))}" for name, lines in sorted(found.items()))
    )
