"""The acyclic_modules import contract (tests/contracts.py) on small graphs, and the repository's contracts as
``make lint`` runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

from tests.contracts import module_cycles

ROOT = Path(__file__).resolve().parent.parent


def graph(*imports: tuple[str, str]) -> grimp.ImportGraph:
    g = grimp.ImportGraph()
    for importer, imported in imports:
        for module in (importer, imported):
            if module not in g.modules:
                g.add_module(module)
        g.add_import(importer=importer, imported=imported)
    return g


def test_a_chain_has_no_cycle() -> None:
    assert module_cycles(graph(("p.a", "p.b"), ("p.b", "p.c"), ("p.a", "p.c")), "p") == []


def test_cycles_are_found_whole_and_apart() -> None:
    g = graph(("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.e"), ("p.e", "p.d"), ("p.c", "p.d"))
    assert module_cycles(g, "p") == [["p.a", "p.b", "p.c"], ["p.d", "p.e"]]


def test_a_module_importing_itself_is_a_cycle() -> None:
    assert module_cycles(graph(("p.a", "p.a")), "p") == [["p.a"]]


def test_only_the_named_package_counts() -> None:
    g = graph(("p.a", "q.b"), ("q.b", "p.a"), ("q.b", "q.c"), ("q.c", "q.b"))
    assert module_cycles(g, "p") == []
    assert module_cycles(g, "q") == [["q.b", "q.c"]]


def test_a_long_chain_needs_no_recursion() -> None:
    n = 5000
    g = graph(*[(f"p.m{i}", f"p.m{i + 1}") for i in range(n)], (f"p.m{n}", "p.m0"))
    assert [len(c) for c in module_cycles(g, "p")] == [n + 1]


def test_the_repository_keeps_its_contracts() -> None:
    """What `make lint` runs: the layers, no module cycle, vector backends reached through their factory."""
    tool = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(tool), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
