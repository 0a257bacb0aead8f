"""The house's import rules, read from the source (lazy imports inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "pipecat_vibevoice"

#: Lower number = lower floor; a module may import only its own floor or lower ones.
FLOORS = {
    "settings_base": 0,
    "web_access": 0,
    "server_load": 0,
    "wav": 0,
    "models": 1,
    "engine": 2,
    "services": 3,
    "serving": 3,
    "cli": 3,
    "clients": 3,
    "pipeline": 4,
    "bot": 5,
    "deploy": 6,
}
#: Third-party packages a layer must not import.
FORBIDDEN = {
    "models": ("pipecat",),
    "engine": ("pipecat",),
    "serving": ("pipecat",),
    "services": (),
}
#: Layers of our own a layer must not import, beyond the floor rule.
FORBIDDEN_OWN = {
    "services": ("bot", "serving", "pipeline", "clients"),
    "serving": ("services", "pipeline", "bot"),
    "models": ("engine",),
}


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute module names imported by a module (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            # ``from . import x`` may import submodule x
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def own_imports() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        graph[name] = {m for m in imports_of(name, path) if m in known and m != name}
    return graph


def test_no_import_runs_upward_or_sideways_into_a_forbidden_layer() -> None:
    problems = []
    for name, targets in own_imports().items():
        here = layer(name)
        if here not in FLOORS:
            continue
        for target in targets:
            there = layer(target)
            if there not in FLOORS or there == here:
                continue
            if FLOORS[there] > FLOORS[here]:
                problems.append(f"{name} imports {target} (floor {FLOORS[there]} > {FLOORS[here]})")
            if there in FORBIDDEN_OWN.get(here, ()):
                problems.append(f"{name} imports {target} ({here} must not use {there})")
    assert not problems, "\n".join(sorted(problems))


def test_layers_that_must_not_know_pipecat_do_not_import_it() -> None:
    problems = []
    for name, path in modules().items():
        for target in imports_of(name, path):
            for banned in FORBIDDEN.get(layer(name), ()):
                if target == banned or target.startswith(banned + "."):
                    problems.append(f"{name} imports {target}")
    assert not problems, "\n".join(sorted(problems))


def test_no_two_modules_import_each_other_in_a_circle() -> None:
    graph = own_imports()
    # Package faces (__init__) re-export their children; a child importing its package's
    # face is the usual Python idiom, so faces are left out of the cycle search.
    faces = {name for name, path in modules().items() if path.name == "__init__.py"}
    edges = {n: {t for t in ts if t not in faces} for n, ts in graph.items() if n not in faces}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import circle: " + " -> ".join(cycle))
