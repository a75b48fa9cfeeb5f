"""The package picture of docs/architecture.md, enforced.

``sediment.core`` imports neither ``reporting`` nor ``archive`` (nor Flask); ``archive``
never imports Flask or ``reporting``; ``reporting`` never imports ``archive``; only the
composition root (``sediment.cli``, ``sediment.service``, ``sediment.exposure``) imports
both. Imports are read with ``ast`` (function-level ones included) and followed through
first-party modules, so a forbidden import two modules away is caught too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.support import REPO

FIRST_PARTY = ("sediment", "reporting", "archive")
COMPOSITION_ROOT = ("sediment.cli", "sediment.exposure", "sediment.service")
FLASK = ("flask", "flask_sqlalchemy", "werkzeug")

#: Package -> module prefixes it must never reach, directly or through other modules.
FORBIDDEN = {
    "sediment.core": ("reporting", "archive", *COMPOSITION_ROOT, *FLASK),
    "archive": ("reporting", *COMPOSITION_ROOT, *FLASK),
    "reporting": ("archive", *COMPOSITION_ROOT),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in FIRST_PARTY
            for path in sorted((REPO / package).rglob("*.py"))}


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Every module ``module`` names in an import statement, anywhere in its body."""
    path = modules()[module]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # ``from package import module`` imports a module too.
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in modules())
    return frozenset(names)


def reachable(module: str) -> dict[str, list[str]]:
    """Every import reachable from ``module``, each with the chain that reaches it."""
    known = modules()
    chains: dict[str, list[str]] = {}
    pending = [(module, [module])]
    seen = {module}
    while pending:
        current, chain = pending.pop()
        for name in direct_imports(current):
            chains.setdefault(name, [*chain, name])
            # Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first.
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                if prefix in known and prefix not in seen:
                    seen.add(prefix)
                    pending.append((prefix, [*chain, prefix]))
    return chains


def inside(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in prefixes)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_reaches_what_it_must_not(package: str) -> None:
    violations = [
        " -> ".join(chain)
        for module in modules() if inside(module, (package,))
        for name, chain in reachable(module).items() if inside(name, FORBIDDEN[package])
    ]
    assert not violations, "forbidden imports:\n" + "\n".join(sorted(set(violations)))


def test_only_the_composition_root_imports_both_halves() -> None:
    both = sorted(module for module in modules()
                  if {"reporting", "archive"} <= {name.split(".")[0]
                                                  for name in direct_imports(module)})
    assert both == sorted(COMPOSITION_ROOT)


def test_the_walker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check above can fail: an import inside a function is found."""
    tree = ast.parse("def f():\n    from reporting.app import create_app\n")
    found = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert inside(next(iter(found)), FORBIDDEN["archive"])


def test_importing_the_archiver_loads_no_flask() -> None:
    """What ``ast`` cannot see (a third-party module importing Flask), the interpreter can."""
    archive_modules = sorted(m for m in modules() if inside(m, ("archive", "sediment.core")))
    program = ("import importlib, sys\n"
               f"for name in {archive_modules!r}:\n"
               "    importlib.import_module(name)\n"
               "print(sorted(m for m in sys.modules if m.split('.')[0] in "
               "('flask', 'flask_sqlalchemy', 'werkzeug', 'reporting')))\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
