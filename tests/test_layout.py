"""The structure the code promises, checked on its source: where backends may be named (issue 16). The import
contracts (layers, no module cycle, backends behind their factory) are import-linter's: tests/test_contracts.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKEND_PACKAGE = ROOT / "search" / "vectors"  # the backends, their interface and the factory's registry
BACKEND_MODULES = ("search.vectors.faiss", "search.vectors.milvus")
BACKEND_NAMES = ("faiss", "milvus")  # the manifest's ``store`` values


def _backend_classes() -> set[str]:
    """The classes the backend modules define (FaissVectorStore, MilvusVectorStore, MilvusConfig, MilvusConnection,
    the backends themselves...): the interface in base.py and the factory are what the rest may name."""
    modules = [BACKEND_PACKAGE / "faiss.py", *sorted((BACKEND_PACKAGE / "milvus").glob("*.py"))]
    return {
        node.name
        for path in modules
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
    }


BACKEND_CLASSES = _backend_classes()


def _product_files() -> list[Path]:
    files = [p for package in ("search", "indexer", "api") for p in sorted((ROOT / package).rglob("*.py"))]
    return [p for p in files if BACKEND_PACKAGE not in p.parents]


def _backend_mentions(path: Path, root: Path = ROOT) -> list[str]:
    """Where ``path`` imports a backend module, names a class a backend defines, or compares something with a backend's
    name (``manifest.get("store") == "milvus"``, ``backend in ("faiss", ...)``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []
    where = path.relative_to(root)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        modules: list[str] = []
        names: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                items = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
                for item in items:
                    if isinstance(item, ast.Constant) and item.value in BACKEND_NAMES:
                        found.append(f"{where}:{line} compares with {item.value!r}")
        for module in modules:
            if module.startswith(BACKEND_MODULES):
                found.append(f"{where}:{line} imports {module}")
        for name in names:
            if name in BACKEND_CLASSES:
                found.append(f"{where}:{line} names {name}")
    return found


def test_backends_are_named_only_in_their_package() -> None:
    """Outside search/vectors/ (the backends and the factory's registry) nothing in search/, indexer/ or api/ imports
    a backend, names its classes or asks whether an index's store is one of them: a third backend is one module and
    one registry entry (search/vectors/factory.py), not an edit of every caller."""
    files = _product_files()
    assert len(files) > 30 and ROOT / "search" / "storage" / "index.py" in files
    assert {"FaissVectorStore", "MilvusVectorStore", "MilvusConfig", "MilvusConnection"} <= BACKEND_CLASSES
    mentions = [m for path in files for m in _backend_mentions(path)]
    assert mentions == [], "\n".join(mentions)


def test_the_scan_sees_what_it_forbids(tmp_path: Path) -> None:
    """Each kind of mention is found, so the empty answer above means none is there."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from search.vectors.milvus.vectors import is_lite\n"
        "import search.vectors.faiss\n"
        "x = FaissVectorStore\n"
        "y = m.MilvusConfig\n"
        "if manifest.get('store') == 'milvus' or b in ('faiss', 'other'):\n"
        "    pass\n",
        encoding="utf-8",
    )
    kinds = sorted(m.split(" ", 1)[1] for m in _backend_mentions(sample, tmp_path))
    assert kinds == [
        "compares with 'faiss'",
        "compares with 'milvus'",
        "imports search.vectors.faiss",
        "imports search.vectors.milvus.vectors",
        "names FaissVectorStore",
        "names MilvusConfig",
    ]
