"""No import cycles in the package: its parts form layers, and imports only run downwards.

Read from the source with ``ast`` (nothing is imported, so this costs well under a
second): every ``import`` of a ``mosbench`` module, at the top of a module or inside
a function, is an edge. Two graphs must have no cycle:

* the packages: each subpackage (``engines``, ``training``, ...) and each top-level
  module (``workload``, ``paths``, ...) is one node; an import from one into
  another is an edge (a cycle here is a lower layer importing a higher one, as
  ``engines`` importing ``training`` for a helper while ``training`` loads engines);
* the modules: a cycle between two modules of one package (a function-level import
  that works around it is still a cycle).
"""

import ast
from pathlib import Path

import mosbench

PACKAGE = Path(mosbench.__file__).parent


def _modules():
    """Dotted module name -> source file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path, name, modules):
    """The package's modules that ``path`` (module ``name``) imports, with their lines."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package upwards
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name in a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, node.lineno


def _graphs():
    """``(module edges, package edges)``: node -> {node: {why, ...}}."""
    modules = _modules()
    by_module, by_package = {m: {} for m in modules}, {}
    for name, path in modules.items():
        for target, line in _imports(path, name, modules):
            why = f"{name} (line {line}) imports {target}"
            by_module[name].setdefault(target, set()).add(why)
            source, dest = _package(name), _package(target)
            if source and dest and source != dest:
                by_package.setdefault(source, {}).setdefault(dest, set()).add(why)
    return by_module, by_package


def _package(name):
    """The node of ``name`` in the package graph (None: the package's ``__init__``)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def _cycles(edges):
    """The graph's strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in edges.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _explain(cycles, edges):
    """Each cycle's nodes and the imports that join them."""
    lines = []
    for component in cycles:
        lines.append(" <-> ".join(component))
        members = set(component)
        for source in component:
            for dest, why in sorted(edges.get(source, {}).items()):
                if dest in members:
                    lines += [f"    {w}" for w in sorted(why)]
    return "\n".join(lines)


def test_the_graphs_are_read():
    """The reader sees the imports it should (a guard against a test that finds nothing)."""
    by_module, by_package = _graphs()
    assert "mosbench.engines" in by_module["mosbench.training.train"]
    assert "engines" in by_package["training"]
    assert "workload" in by_package["engines"]


def test_no_package_imports_back_up_a_layer():
    _, by_package = _graphs()
    cycles = _cycles(by_package)
    assert not cycles, "package import cycles:\n" + _explain(cycles, by_package)


def test_no_module_cycle():
    by_module, _ = _graphs()
    cycles = _cycles(by_module)
    assert not cycles, "module import cycles:\n" + _explain(cycles, by_module)


def test_the_check_finds_a_cycle():
    edges = {"a": {"b": ["a imports b"]}, "b": {"c": ["b imports c"]},
             "c": {"a": ["c imports a"]}, "d": {"a": ["d imports a"]}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert "c imports a" in _explain(_cycles(edges), edges)
