"""The packages' layering: ``mesh`` (the library clients use) is the bottom and
imports nothing from ``nodes`` or ``discovery``; ``discovery`` imports nothing
from ``nodes``. A client installs and runs without the node's code."""

import ast
import os

from meshtest.nodeproc import ROOT

BELOW = {"mesh": {"nodes", "discovery", "bench"}, "discovery": {"nodes", "bench"}}


def _imports(path):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_no_package_imports_from_a_package_above_it():
    wrong = []
    checked = 0
    for package, forbidden in BELOW.items():
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py"):
                path = os.path.join(ROOT, package, name)
                checked += 1
                wrong += [f"{package}/{name} imports {module}" for module in _imports(path)
                          if module.split(".")[0] in forbidden]
    assert checked > 20 and wrong == []
