"""The packages' layering, read from the imports of every module.

``mesh`` (the library clients use) is the bottom and imports nothing from
``nodes`` or ``discovery``; ``discovery`` imports nothing from ``nodes``. A
client installs and runs without the node's code. Inside ``nodes`` the layers
are, from the bottom: the node's core (control, tap, relay, events...), the
features (history, queues, hooks), the edge, the node that wires them
(node.py), and the CLI; no module imports from a layer above its own. No
group of modules imports itself round a circle, function-level imports
included. No function in product code is longer than a screen (80 lines)."""

import ast
import os

from meshtest.nodeproc import ROOT

BELOW = {"mesh": {"nodes", "discovery", "bench"}, "discovery": {"nodes", "bench"}}
NODE_LAYERS = [  # bottom first
    {"nodes.control", "nodes.tap", "nodes.jsontext", "nodes.relay", "nodes.events", "nodes.metrics",
     "nodes.revocations", "nodes.closedmarks", "nodes.dataplane", "nodes.gateway", "nodes.zap", "nodes.disk",
     "nodes.placement"},
    {"nodes.history", "nodes.queues", "nodes.hooks"},
    {"nodes.edge"},
    {"nodes.node"},
    {"nodes.cli"},
]


def _modules():
    """{module name: path} of every product module (mesh, discovery, nodes, bench, meshtest)."""
    found = {}
    for package in ("mesh", "discovery", "nodes", "bench", "meshtest"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                    found[module] = path
    return found


def _imports(module, path, known):
    """The known modules ``module`` imports (relative imports resolved), anywhere in the file; a
    package's own ``__init__`` (what re-exports its modules) does not count for its modules."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):  # not its own package's __init__
                yield name


def _graph():
    known = _modules()
    return {module: set(_imports(module, path, known)) for module, path in known.items()}


def _layer(module):
    for rank, layer in enumerate(NODE_LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return rank
    return None


def test_no_package_imports_from_a_package_above_it():
    graph = _graph()
    wrong = [f"{module} imports {target}" for module, targets in graph.items() for target in targets
             if module.split(".")[0] in BELOW and target.split(".")[0] in BELOW[module.split(".")[0]]]
    assert len(graph) > 60 and wrong == []


def test_no_node_module_imports_from_a_layer_above_its_own():
    graph = _graph()
    unplaced = sorted(m for m in graph if m.startswith("nodes.") and m != "nodes" and _layer(m) is None)
    assert unplaced == [], "place these modules in NODE_LAYERS"
    wrong = [f"{module} imports {target}" for module, targets in graph.items() if module.startswith("nodes.")
             for target in targets if target.startswith("nodes.") and _layer(target) is not None
             and _layer(module) is not None and _layer(target) > _layer(module)]
    assert wrong == []


def test_no_import_circle():
    graph = _graph()
    circles = []
    state = {}  # module -> "open" while on the path, "done" after

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


LONGEST = 80  # lines, decorators excluded, docstring included


def test_no_function_is_over_80_lines():
    long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > LONGEST:
                long.append(f"{module}.{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines")
    assert long == []
