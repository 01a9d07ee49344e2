"""The core's shape: no import circle among its modules (imports for type checking aside)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "tm_server" / "core"


def _runtime_imports(path: Path) -> set[str]:
    """The core modules a module imports when it runs (not under ``if TYPE_CHECKING``)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # module level only: no lazy imports
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return names


def test_core_modules_import_each_other_without_a_circle() -> None:
    graph = {p.stem: _runtime_imports(p) for p in CORE.glob("*.py") if p.stem != "__init__"}
    assert {"port", "shard", "store", "record", "manager"} <= set(graph)
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, "import circle: " + " -> ".join((*path, name))
        if name in done:
            return
        for dep in graph.get(name, ()):
            visit(dep, (*path, name))
        done.add(name)

    for module in graph:
        visit(module, ())


def test_nothing_reaches_a_shard_but_through_its_port() -> None:
    # Outside the shard's own modules, no code names the Shard class or its records.
    # Recovery is one of them: it rebuilds records from the journal before the
    # node serves, in the process that holds the shards.
    private = {
        "shard",
        "shard_reads",
        "shard_tree",
        "store",
        "record",
        "watch",
        "status",
        "progress",
        "expiry",
        "recovery",
    }
    for path in CORE.glob("*.py"):
        if path.stem in private or path.stem in ("manager", "task", "__init__"):
            continue
        imports = _runtime_imports(path)
        assert not imports & {"shard", "store", "record"}, (path.name, imports)
