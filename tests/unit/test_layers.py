"""The package's import graph: no cycles, and layers that import one way only.

server -> models -> workers -> batching types; protocols and runtimes below the server and beside the workers, free
of aiohttp; the server parent's modules free of torch. Read from the source (ast), so a late import inside a function
counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "modelserve"

# a module of the key's package must not import any of these (its own package excepted)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "modelserve.batching": ("modelserve.workers", "modelserve.models", "modelserve.server", "modelserve.protocols"),
    "modelserve.protocols": ("modelserve.workers", "modelserve.models", "modelserve.server", "aiohttp"),
    "modelserve.runtimes": ("modelserve.workers", "modelserve.models", "modelserve.server", "aiohttp"),
    "modelserve.workers": ("modelserve.models", "modelserve.server", "aiohttp"),
    "modelserve.models": ("modelserve.server", "aiohttp.web"),  # its HTTP client fetches archives by URL
    "modelserve.archive": ("modelserve.workers", "modelserve.models", "modelserve.server"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, with ``from x import y`` counted as both x and x.y."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {
        module_name(path): path for path in PACKAGE.rglob("*.py") if "_compat" not in path.parts
    }  # the ts compatibility package is data for workers, not part of the server's graph
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = imports_of(path)
        edges[name] = {m for m in imported if m in modules and m != name} | {
            m for m in imported if not m.startswith("modelserve")
        }
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in edges:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_one_way(layer: str) -> None:
    wrong = []
    for name, targets in graph().items():
        if name != layer and not name.startswith(layer + "."):
            continue
        for target in targets:
            for banned in FORBIDDEN[layer]:
                if (target == banned or target.startswith(banned + ".")) and not target.startswith(layer):
                    wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_the_server_parent_never_imports_torch_or_onnxruntime_at_module_level() -> None:
    heavy = ("torch", "onnxruntime")
    wrong = []
    for path in (PACKAGE / "server").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only: workers import these lazily
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            wrong += [f"{module_name(path)} imports {n}" for n in names if n.split(".")[0] in heavy]
    assert wrong == []


def test_the_server_parent_loads_no_numpy_torch_onnxruntime_or_multipart_parser() -> None:
    """The whole server, imported in a fresh interpreter: what only workers need stays out of the parent."""
    import subprocess
    import sys

    probe = (
        "import sys, modelserve.server.lifecycle, modelserve.cli\n"
        "print(sorted(m for m in ('numpy', 'torch', 'onnxruntime', 'python_multipart', 'modelserve.handler')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


GRPC_FRONT = {"modelserve.server.grpc_common", "modelserve.server.grpc_server", "modelserve.server.grpc_oip",
              "modelserve.server.grpc_torchserve"}  # fmt: skip


def test_only_the_grpc_front_imports_grpc_and_its_protos() -> None:
    """grpc and protobuf load only with the gRPC front, which lifecycle imports inside a function (when gRPC is on)."""
    wrong = []
    for name, targets in graph().items():
        if name in GRPC_FRONT or name.startswith("modelserve.server.protos"):
            continue
        for target in targets:
            grpc_itself = target.split(".")[0] in ("grpc", "google") or target.startswith("modelserve.server.protos")
            front = target in GRPC_FRONT and name != "modelserve.server.lifecycle"
            if grpc_itself or front:
                wrong.append(f"{name} imports {target}")
    assert wrong == []
    lifecycle = ast.parse((PACKAGE / "server" / "lifecycle.py").read_text())
    top_level = {alias.module for alias in lifecycle.body if isinstance(alias, ast.ImportFrom)}
    assert not top_level & GRPC_FRONT, "lifecycle imports the gRPC front at module level"
