"""The packages are layers: each module imports only its own layer and those below it.

The order is the README's ("Concepts, and where each lives"). An import that runs back up
a layer (the library importing the bus, the bus importing a service) fails here, with the
line that does it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from services.bus.declaration import Declaration

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "services"
LAYERS = (
    {"core"},
    {"fits"},
    {"datastore"},
    {"registry"},
    {"instruments"},
    {"messages"},
    {"butler", "writes"},
    {"ingest", "calib"},
    {"bus"},
    {"handlers", "clients"},
    {"ops"},
    {"web"},
    {"cli"},
)
RANK = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package under services/) of every import in a module."""
    here = list(path.relative_to(SERVICES).parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)]
            target = [*base, *(node.module or "").split(".")]
            target = [t for t in target if t]
            tops = target[:1] or [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("services."):
            tops = [str(node.module).split(".")[1]]
        elif isinstance(node, ast.Import):
            tops = [a.name.split(".")[1] for a in node.names if a.name.startswith("services.")]
        else:
            continue
        out.extend((node.lineno, t) for t in tops)
    return out


def test_no_import_runs_back_up_a_layer() -> None:
    modules = [p for p in SERVICES.rglob("*.py") if "migrations" not in p.parts]
    packages = {p.relative_to(SERVICES).parts[0].removesuffix(".py") for p in modules}
    assert packages - {"__init__"} <= set(RANK), "a new package needs its place in LAYERS"
    upward = []
    for path in modules:
        me = path.relative_to(SERVICES).parts[0].removesuffix(".py")
        if me == "__init__":
            continue
        for line, target in _imported(path):
            if RANK.get(target, -1) > RANK[me]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {me} imports {target}")
    assert upward == []


def test_the_readme_names_the_layers_in_order() -> None:
    readme = (ROOT / "README.md").read_text()
    (line,) = re.findall(r"`core` → .*?`cli`", readme, re.S)
    named = [set(re.findall(r"`(\w+)`", step)) for step in line.split("→")]
    assert named == [set(layer) for layer in LAYERS]


def test_the_readme_services_table_is_the_declarations() -> None:
    from services.handlers import calib, ingest, registry, watcher
    from services.web import dashboard

    readme = (ROOT / "README.md").read_text()
    declarations = (watcher, ingest, registry, calib, dashboard)
    for declared in (m.SERVICE for m in declarations):
        assert _row(declared) in readme, _row(declared)


def _row(d: Declaration) -> str:
    reads = ", ".join(f"`{t.name}`" for t in d.reads) or "the landing folders"
    writes = ", ".join(f"`{t.name}`" for t in d.writes) or "—"
    group = f"`{d.group}`" if d.group else "—"
    batch = str(d.max_records) if d.group else "—"
    return f"| `{d.name}` | {reads} | {writes} | {group} | {batch} |"
