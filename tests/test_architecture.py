"""The package layout holds: lower floors never import higher ones, and no module-level import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "audiofind"
GROUND = {"audio", "assets", "download", "paths", "__init__"}
# what each room may import besides itself and the ground floor
ALLOWED = {
    "facade": {"models", "library"},
    "ground": set(),
    "models": set(),
    "library": {"models"},
    "research": {"models"},
    "server": {"models", "library"},
    "cli": {"models", "library", "research", "server"},
}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"  # `from audiofind import Library, load_model`, imported lazily
    if (len(parts) == 2 and parts[1] in GROUND):
        return "ground"
    return parts[1]


def imports(path: Path, top_level_only: bool) -> set[str]:
    """The audiofind modules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # `if TYPE_CHECKING:` blocks are not run
        nodes = [n for n in nodes if not isinstance(n, ast.If)]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("audiofind")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("audiofind"):
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in known}


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_lower_floors_never_import_higher_ones(path: Path) -> None:
    here = room(module_name(path))
    for target in imports(path, top_level_only=False) - {"audiofind"}:  # the package itself: __version__
        there = room(target)
        allowed = {here, "ground"} | ALLOWED[here]
        assert there in allowed, f"{module_name(path)} ({here}) imports {target} ({there})"


def test_no_import_circle() -> None:
    graph = {module_name(p): imports(p, top_level_only=True) for p in SOURCES}
    for name in graph:  # a package's __init__ importing its own submodules is not a circle
        graph[name] = {t for t in graph[name] if not (name and t.startswith(name + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_long_modules_say_why(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if text.count("\n") > MAX_LINES:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "longer than" in doc, f"{path.name}: over {MAX_LINES} lines without a reason in its docstring"


def test_every_subpackage_says_what_it_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "import" in doc, f"{init.parent.name}/__init__.py: say what the package may import"
