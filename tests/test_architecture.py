"""The package's shape (docs/architecture.md): no import loops, the demo apparatus apart, torchrun's
environment read in one place. Read from the source with ``ast``; nothing is imported or run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lamra"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement, at any depth (imports inside functions count), except under
    ``if TYPE_CHECKING:`` (annotations only, never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _import_nodes(ast.Module(body=[child])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _import_nodes(node)


def lamra_imports(module: str) -> set[str]:
    """The lamra modules ``module`` imports: ``from pkg import sub`` counts as importing ``pkg.sub``
    when that is a module, else as importing ``pkg``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "lamra")
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != "lamra":
            continue
        for alias in node.names:
            found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    return {name for name in found if name != module}


GRAPH = {module: lamra_imports(module) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_reader_sees_the_imports_it_should():
    # The check is only as good as its reader: known edges of each import form must be found.
    assert "lamra.qwen2vl.processor" in GRAPH["lamra.qwen2vl.backbone"]          # from .processor import X
    assert "lamra.distributed" in GRAPH["lamra.index.build"]                      # from .. import distributed
    assert "lamra.retriever.model" in GRAPH["lamra.cli.models"]                   # an import inside a function
    assert "lamra.retriever.model" not in GRAPH["lamra"]                          # TYPE_CHECKING only


def test_the_cycle_finder_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_two_modules_import_each_other_directly_or_through_a_loop():
    assert _cycles(GRAPH) == []


def test_only_the_cli_imports_the_demo_apparatus():
    outside = {module: sorted(name for name in imports if name == "lamra.demo" or name.startswith("lamra.demo."))
               for module, imports in GRAPH.items()
               if not module.startswith(("lamra.demo", "lamra.cli"))}
    assert {module: names for module, names in outside.items() if names} == {}


TORCHRUN_VARIABLES = re.compile(r"""["'](RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|MASTER_ADDR|MASTER_PORT)["']""")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "lamra.distributed"))
def test_only_distributed_reads_the_torchrun_environment(module):
    found = TORCHRUN_VARIABLES.search(MODULES[module].read_text())
    assert found is None, f"{module} reads {found.group(1)}: ask lamra.distributed instead"


def test_lamra_help_imports_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys, contextlib, io\n"
            "from lamra.cli import main\n"
            "for argv in (['--help'], ['index', '--help'], ['search', '--help'], ['eval', 'mbeir', '--help'],"
            " ['train', 'retriever', '--help'], ['serve', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        assert main(argv) == 0, argv\n"
            "print(sorted(m for m in ('torch', 'transformers', 'faiss', 'peft') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _room(module: str) -> str:
    """A module's folder under lamra (or the top-level module itself): lamra.reranker.model -> reranker."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lamra"


def test_no_two_folders_import_each_other():
    # The rooms of docs/architecture.md stand on floors: every arrow between two of them points down.
    rooms: dict[str, set[str]] = {}
    for module, imports in GRAPH.items():
        rooms.setdefault(_room(module), set()).update(_room(name) for name in imports if _room(name) != _room(module))
    assert _cycles(rooms) == []
