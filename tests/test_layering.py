"""The rooms of the project and which way they point, read from the source (AST), so that a
wrong import or a stray process fails here rather than in review.

* wireformat/ (codecs and readers) imports neither conformance nor strategies.
* conformance/rules/ (sans-IO models) imports nothing of conformance outside rules/ but the
  registry of modelled versions (conformance/versions.py, pure data) — so neither check/,
  tools/, qemu/ nor cli/ — and does no I/O: no open()/print()/input(), no os,
  sys, pathlib, io-bound or process modules, no argparse, and no file method (read_text,
  read_bytes, write_text, write_bytes, open) except reads of package data through
  importlib.resources (the receiver of the call must come from `resources`, followed through
  local assignments, `/` joins and module-level helper functions) and the module's own
  classes' methods of those names (a model's `open()` of a return path is no file).
* Only conformance/qemu/ starts processes or opens sockets: everywhere else in wireformat/,
  conformance/ and strategies/, no subprocess, socket, multiprocessing, asyncio, qemu.qmp or
  network-client module is imported and no os.fork/spawn*/exec*/system/popen is called.
  tests/, scripts/ and benchmarks/ are not scanned: they drive QEMU and sockets on purpose.
* conformance/check/ imports neither tools/ nor cli/, and of qemu/ only the TCP listener
  (conformance.qemu.listener), which `check tcp:HOST:PORT` needs to receive a live migration
  as a destination would. The socket stays in the qemu room, the only one allowed to open
  one; check/ merely asks for the accepted connection as a file.
* conformance/cli/ may import anything (it wires the rooms together).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("wireformat", "conformance", "strategies")

RULES_IO_MODULES = ("os", "sys", "pathlib", "shutil", "tempfile", "glob", "fcntl", "mmap", "select",
                    "signal", "argparse", "subprocess", "socket", "asyncio", "multiprocessing", "threading",
                    "urllib", "http", "qemu")
RULES_IO_BUILTINS = ("open", "print", "input")
FILE_METHODS = ("read_text", "read_bytes", "write_text", "write_bytes", "open")
PROCESS_MODULES = ("subprocess", "socket", "socketserver", "multiprocessing", "pty", "asyncio", "qemu", "ssl",
                   "http.client", "http.server", "urllib.request", "ftplib", "smtplib", "telnetlib", "xmlrpc")
PROCESS_OS_CALLS = ("fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "startfile")
PROCESS_OS_PREFIXES = ("spawn", "exec")
CHECK_MAY_IMPORT_FROM_QEMU = ("conformance.qemu.listener",)


@dataclass
class Module:
    name: str  # dotted
    path: str  # relative to the repository, for messages
    tree: ast.Module

    @property
    def package(self) -> str:
        return self.name if self.path.endswith("__init__.py") else self.name.rpartition(".")[0]


def parse(name: str, source: str, path: str | None = None) -> Module:
    return Module(name, path or name.replace(".", "/") + ".py", ast.parse(source))


def project_modules() -> list[Module]:
    out = []
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            rel = p.relative_to(ROOT)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.append(Module(".".join(parts), str(rel), ast.parse(p.read_text(), str(rel))))
    return out


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imports(mod: Module) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import, wherever it is (lazy ones too); for
    `from M import a` both M and M.a (a may be a submodule)."""
    out = []
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.package.split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            out.append((base, node.lineno))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return out


def _from_imports(mod: Module, module: str) -> dict[str, str]:
    """local name -> imported name, for `from module import name [as local]`."""
    return {a.asname or a.name: a.name for node in ast.walk(mod.tree)
            if isinstance(node, ast.ImportFrom) and node.module == module and not node.level for a in node.names}


def _module_aliases(mod: Module, module: str) -> set[str]:
    """Local names bound to `module` itself (import module [as x], from parent import last)."""
    names = set()
    parent, _, last = module.rpartition(".")
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name for a in node.names if a.name == module and (a.asname or "." not in module)}
        elif isinstance(node, ast.ImportFrom) and parent and node.module == parent and not node.level:
            names |= {a.asname or a.name for a in node.names if a.name == last}
    return names


# ---------------------------------------------------------------- the rules, as functions of a module

def wireformat_violations(mod: Module) -> list[str]:
    if not _within(mod.name, ("wireformat",)):
        return []
    return [f"{mod.path}:{line}: wireformat imports {name}" for name, line in imports(mod)
            if _within(name, ("conformance", "strategies"))]


def _root(node: ast.AST, scope: dict[str, ast.AST], funcs: dict[str, ast.FunctionDef], depth: int = 0) -> set[str]:
    """The names a call chain starts from: through attributes, calls, subscripts and `/`,
    local assignments and the return values of module-level functions."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        elif isinstance(node, ast.BinOp):
            node = node.left
        else:
            break
    if not isinstance(node, ast.Name):
        return {"<expression>"}
    if depth < 8 and node.id in scope:
        return _root(scope[node.id], scope, funcs, depth + 1)
    if depth < 8 and node.id in funcs:
        returns = [n.value for n in ast.walk(funcs[node.id]) if isinstance(n, ast.Return) and n.value is not None]
        local = _assignments(funcs[node.id])
        return set().union(*(_root(r, local, funcs, depth + 1) for r in returns)) if returns else {node.id}
    return {node.id}


def _assignments(fn: ast.AST) -> dict[str, ast.AST]:
    """name -> value of `name = value`, `name: T = value` and `a, b = x, y` under `fn`."""
    out: dict[str, ast.AST] = {}
    for n in ast.walk(fn):
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.value is not None:
            out[n.target.id] = n.value
        elif isinstance(n, ast.Assign) and len(n.targets) == 1:
            t = n.targets[0]
            if isinstance(t, ast.Name):
                out[t.id] = n.value
            elif isinstance(t, ast.Tuple) and isinstance(n.value, ast.Tuple) and len(t.elts) == len(n.value.elts):
                out.update({e.id: v for e, v in zip(t.elts, n.value.elts) if isinstance(e, ast.Name)})
    return out


def rules_violations(mod: Module) -> list[str]:
    if not _within(mod.name, ("conformance.rules",)):
        return []
    out = []
    for name, line in imports(mod):
        if _within(name, ("conformance",)) and not _within(name, ("conformance.rules", "conformance.versions")):
            out.append(f"{mod.path}:{line}: rules import {name}")
        elif _within(name, RULES_IO_MODULES):
            out.append(f"{mod.path}:{line}: rules import {name} (I/O)")
    resources = _module_aliases(mod, "importlib.resources") | set(_from_imports(mod, "importlib.resources"))
    funcs = {n.name: n for n in mod.tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name for n in mod.tree.body if isinstance(n, ast.ClassDef)}  # a model's own methods are no I/O
    scopes: list[ast.AST] = [mod.tree] + [n for n in ast.walk(mod.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    seen: set[int] = set()
    for scope_node in reversed(scopes):  # innermost first: a call is judged with its own function's names
        scope = _assignments(scope_node)
        for node in ast.walk(scope_node):
            if not isinstance(node, ast.Call) or id(node) in seen:
                continue
            seen.add(id(node))
            f = node.func
            if isinstance(f, ast.Name) and f.id in RULES_IO_BUILTINS:
                out.append(f"{mod.path}:{node.lineno}: rules call {f.id}()")
            elif isinstance(f, ast.Attribute) and f.attr in FILE_METHODS:
                roots = _root(f.value, scope, funcs)
                if roots <= classes:
                    continue
                if f.attr.startswith("write") or not roots <= resources:
                    out.append(f"{mod.path}:{node.lineno}: rules call .{f.attr}() on {', '.join(sorted(roots))} "
                               "(only importlib.resources data may be read)")
    return out


def process_violations(mod: Module) -> list[str]:
    if _within(mod.name, ("conformance.qemu",)):
        return []
    out = [f"{mod.path}:{line}: imports {name}: only conformance.qemu starts processes or opens sockets"
           for name, line in imports(mod) if _within(name, PROCESS_MODULES)]
    os_names = _module_aliases(mod, "os")
    from_os = _from_imports(mod, "os")
    for node in ast.walk(mod.tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        called = None
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in os_names:
            called = f.attr
        elif isinstance(f, ast.Name) and f.id in from_os:
            called = from_os[f.id]
        if called and (called in PROCESS_OS_CALLS or called.startswith(PROCESS_OS_PREFIXES)):
            out.append(f"{mod.path}:{node.lineno}: calls os.{called}: only conformance.qemu starts processes")
    return out


def check_violations(mod: Module) -> list[str]:
    if not _within(mod.name, ("conformance.check",)):
        return []
    out = []
    for name, line in imports(mod):
        if _within(name, ("conformance.tools", "conformance.cli")):
            out.append(f"{mod.path}:{line}: check imports {name}")
        elif _within(name, ("conformance.qemu",)) and not _within(name, CHECK_MAY_IMPORT_FROM_QEMU):
            if not any(_within(other, CHECK_MAY_IMPORT_FROM_QEMU) and other.startswith(name + ".")
                       for other, ln in imports(mod) if ln == line):
                out.append(f"{mod.path}:{line}: check imports {name} (of qemu only the listener)")
    return out


# ---------------------------------------------------------------- the project

MODULES = project_modules()


@pytest.mark.parametrize("rule", [wireformat_violations, rules_violations, process_violations, check_violations],
                         ids=["wireformat", "rules-sans-io", "processes-only-in-qemu", "check"])
def test_project_keeps_its_layers(rule):
    found = [v for m in MODULES for v in rule(m)]
    assert not found, "\n".join(found)


def test_every_room_is_scanned():
    names = {m.name for m in MODULES}
    for room in ("wireformat.reader", "conformance.rules.loader", "conformance.check.inputs", "conformance.qemu.process",
                 "conformance.tools.matrix.store", "conformance.cli", "strategies.streams"):
        assert room in names


# ---------------------------------------------------------------- the checks themselves

@pytest.mark.parametrize("name, source, rule, expected", [
    ("wireformat.x", "from conformance.rules import loader", wireformat_violations, "wireformat imports conformance"),
    ("wireformat.x", "def f():\n    import strategies.streams", wireformat_violations, "imports strategies"),
    ("conformance.rules.x", "from ..check import pipeline", rules_violations, "rules import conformance.check"),
    ("conformance.rules.x", "from conformance.qemu import discover", rules_violations, "rules import conformance.qemu"),
    ("conformance.rules.x", "import argparse", rules_violations, "rules import argparse (I/O)"),
    ("conformance.rules.x", "def f(p):\n    return open(p).read()", rules_violations, "rules call open()"),
    ("conformance.rules.x", "def f(p):\n    return p.read_text()", rules_violations, "rules call .read_text() on p"),
    ("conformance.rules.x", "from importlib import resources\ndef f(p):\n    (resources.files('x') / p).write_text('')",
     rules_violations, "rules call .write_text()"),
    ("conformance.tools.x", "import subprocess", process_violations, "imports subprocess"),
    ("conformance.tools.x", "from qemu.qmp import QMPClient", process_violations, "imports qemu.qmp"),
    ("conformance.check.x", "import os\nos.execvp('qemu', [])", process_violations, "calls os.execvp"),
    ("strategies.x", "from os import fork as f\nf()", process_violations, "calls os.fork"),
    ("conformance.check.x", "from conformance.tools.matrix import run_cell", check_violations,
     "check imports conformance.tools.matrix"),
    ("conformance.check.x", "from conformance.qemu import discover", check_violations,
     "check imports conformance.qemu (of qemu only the listener)"),
])
def test_a_violation_is_found(name, source, rule, expected):
    found = rule(parse(name, source))
    assert any(expected in v for v in found), found


@pytest.mark.parametrize("name, source, rule", [
    ("conformance.rules.x", "from importlib import resources\n"
                            "def _data():\n    return resources.files('conformance.rules').joinpath('data')\n"
                            "def f(v):\n    return _data().joinpath(v).read_text()", rules_violations),
    ("conformance.rules.x", "def f(v):\n    from importlib import resources\n"
                            "    res = resources.files('conformance.rules') / 'data' / v\n    return res.read_text()",
     rules_violations),
    ("conformance.rules.x", "from .catalogue import Violation\nimport json", rules_violations),
    ("conformance.rules.x", "class Source:\n    def open(self):\n        return []\n"
                            "def run():\n    src, n = Source(), 0\n    return src.open()", rules_violations),
    ("conformance.check.x", "def f(uri):\n    from conformance.qemu.listener import accept_stream", check_violations),
    ("conformance.qemu.x", "import subprocess\nimport socket", process_violations),
    ("conformance.cli", "from conformance.tools.matrix import add_matrix_parser", check_violations),
])
def test_what_is_allowed_passes(name, source, rule):
    assert rule(parse(name, source)) == []
