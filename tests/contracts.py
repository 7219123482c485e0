"""An import-linter contract type the built-in ones lack: no import cycle among the modules of a package.

``acyclic_siblings`` (built in) forbids cycles between *sibling packages*, counting every descendant's imports; it
would reject a storage layer whose index module reads vectors while the vector backends read the SQLite store, which
is a dependency between packages and not a cycle between modules. What issue 16 asks is stricter at module level and
looser at package level: no chain of imports leads from a module back to itself, counting imports inside functions
(the usual way a cycle hides) and under ``TYPE_CHECKING``. ``make lint`` runs it through ``lint-imports``
(configured in pyproject.toml), which puts the repository root on ``sys.path`` so this module is importable.
"""

from __future__ import annotations

from typing import cast

import grimp
from importlinter import Contract, ContractCheck, fields, output


def module_cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself) under ``package``,
    each sorted, found with Tarjan's algorithm (iterative: no recursion limit on a deep chain)."""
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    inside = set(modules)
    edges = {m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i in inside) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            descended = False
            for i in range(child, len(edges[node])):
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((node, i + 1))
                    work.append((nxt, 0))
                    descended = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if descended:
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(found)


class AcyclicModulesContract(Contract):
    """``type = acyclic_modules``, ``packages = [...]``: kept when no package listed has an import cycle."""

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        packages = cast(list[str], self.packages)  # a field until the contract is built, then its parsed value
        cycles = [cycle for package in packages for cycle in module_cycles(graph, package)]
        links = {
            tuple(cycle): [(a, b) for a in cycle for b in cycle if b in graph.find_modules_directly_imported_by(a)]
            for cycle in cycles
        }
        return ContractCheck(kept=not cycles, metadata={"cycles": cycles, "links": links})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for cycle in check.metadata["cycles"]:
            output.print_error(f"import cycle among {', '.join(cycle)}:")
            for importer, imported in check.metadata["links"][tuple(cycle)]:
                output.indent_cursor()
                output.print_error(f"{importer} imports {imported}")
            output.new_line()
