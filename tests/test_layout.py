"""The rooms of src/msgprof/ and the imports between them that must never exist.

Data flows one way (config → point → Parquet → analysis → report; client → server → store → log
→ segment). The checks read every module's imports (top-level and inside functions) with `ast`,
so an arrow that appears anywhere in the package fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "msgprof"
ROOMS = ("wire", "server", "store", "load", "experiment", "report")
#: Modules at the top of the package that any room may use: settings, summary statistics,
#: atomic file writes, process limits, rate-limited warnings. They import no room except the
#: wire's constants.
SHARED = ("config", "commands", "setting", "stats", "atomic", "limits", "ratelog", "histlog", "client_ids", "templates", "__init__")

#: (room, what it must never import, why)
FORBIDDEN = [
    ("wire", {"server", "store", "load", "experiment", "report", "cli"}, "the wire format knows no disk and no server"),
    ("store", {"wire", "server", "load", "experiment", "report", "cli"}, "the store knows no sockets and no wire statuses"),
    ("load", {"server", "store", "experiment", "report", "cli"}, "the load generator knows only the wire"),
    ("report", {"server", "store", "load", "experiment", "wire", "cli"}, "the report reads files and never runs the system"),
    ("server", {"load", "experiment", "report", "cli"}, "the server knows nothing of the runs that measure it"),
]
EXTERNAL_FORBIDDEN = {"store": {"zmq"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, as dotted names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _room_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != "msgprof" or len(parts) < 2:
        return None
    return parts[1]


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_room_or_is_shared() -> None:
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            assert rel.stem in SHARED + ("cli", "__main__"), f"{rel}: a new top-level module; put it in a room"
        else:
            assert rel.parts[0] in ROOMS, f"{rel}: unknown room {rel.parts[0]!r}"


@pytest.mark.parametrize(("room", "forbidden", "why"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_forbidden_imports(room: str, forbidden: set[str], why: str) -> None:
    bad = []
    for path in sorted((PACKAGE / room).rglob("*.py")):
        for name in _imports(path):
            target = _room_of(name)
            if target in forbidden or name.split(".")[0] in EXTERNAL_FORBIDDEN.get(room, set()):
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not bad, f"{why}:\n" + "\n".join(bad)


def test_shared_modules_import_no_room_but_the_wire_constants() -> None:
    bad = []
    for stem in SHARED:
        path = PACKAGE / f"{stem}.py"
        if not path.exists():
            continue
        for name in _imports(path):
            target = _room_of(name)
            if target in ROOMS and not name.startswith("msgprof.wire.protocol"):
                bad.append(f"{stem}.py imports {name}")
    assert not bad, "shared modules sit below every room:\n" + "\n".join(bad)


def test_nothing_imports_the_cli() -> None:
    bad = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in _modules()
        if path.name not in ("cli.py", "__main__.py")
        for name in _imports(path)
        if name == "msgprof.cli" or name.startswith("msgprof.cli.")
    ]
    assert not bad, "\n".join(bad)


def test_modules_stay_small() -> None:
    """One concern per module: none grows past ~500 lines."""
    big = [f"{p.relative_to(PACKAGE)}: {n}" for p in _modules() if (n := len(p.read_text().splitlines())) > 520]
    assert not big, "split these by concern:\n" + "\n".join(big)
