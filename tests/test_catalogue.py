"""The catalogue is the one list of codes: what the rules emit is in it, what is in it is
emitted and asserted by a test, and the docs show it.

Why static (ast) rather than a run-time registry of emitted codes: a registry filled by
the sink during the run can only be judged when the whole suite ran — under `-m "not
slow"`, `-k`, a single file or pytest-xdist workers (each with its own registry, merged
only through worker output) it would see a part of the run and fail, or need a switch
that turns it off, which is the same as not having it. The sound static question is
whether some test asserts the code: a code that appears, as `Code.X` or as its string,
inside an `assert` statement of a test (or in the parameters a test is parametrized with,
which its asserts then compare) is checked against real output by a test that passes — so
the code was triggered. A code mentioned only elsewhere (a comment, a helper, a message)
does not count. What the rules emit is structural: codes are `Code` members, so every
emit call must name one (no string literals), and only the sink builds violations.
"""

import ast
from pathlib import Path

import pytest

from conformance.rules import decode_errors
from conformance.rules.catalogue import CATALOGUE, Code, Severity, catalogue_markdown
from conformance.rules.profile import PROFILES
from wireformat import errors as wire_errors

ROOT = Path(__file__).resolve().parents[1]
EMITTERS = {"_v", "emit", "fail", "Finding"}  # the calls whose first argument is a violation code
CODE_VALUES = {str(c) for c in Code}


def trees(*folders: str):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def call_name(node: ast.Call) -> str | None:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def code_refs(node: ast.AST) -> set[str]:
    """Codes a subtree names: Code.X attributes and string constants equal to a code."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "Code" and n.attr in Code.__members__:
            out.add(str(Code[n.attr]))
        elif isinstance(n, ast.Constant) and n.value in CODE_VALUES:
            out.add(n.value)
    return out


def test_rules_emit_only_catalogued_code_members():
    emits, problems = 0, []
    for path, tree in trees("conformance"):
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Code":
                if node.attr not in Code.__members__:
                    problems.append(f"{where}:{node.lineno}: Code.{node.attr} is not in the catalogue")
            emitting = path.parent.name in ("rules", "check")  # where violations are made
            if emitting and isinstance(node, ast.Call) and call_name(node) in EMITTERS and node.args:
                emits += 1
                first = node.args[0]
                if isinstance(first, ast.Constant) or isinstance(first, ast.JoinedStr):
                    problems.append(f"{where}:{node.lineno}: {call_name(node)}() with a string code {ast.unparse(first)}")
            if isinstance(node, ast.Call) and call_name(node) == "Violation" and path.name not in ("catalogue.py", "sink.py"):
                problems.append(f"{where}:{node.lineno}: a Violation built outside the sink (its severity picked inline)")
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Attribute, ast.Tuple)):
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                if values and all(ast.unparse(v).startswith("Severity.") for v in values):
                    problems.append(f"{where}:{node.lineno}: a severity alias {ast.unparse(node)}")
    assert emits > 100, "found almost no emit calls: EMITTERS no longer names how the rules emit"
    assert problems == []


def test_wireformat_names_no_conformance_codes():
    problems = []
    for path, tree in trees("wireformat"):
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "code":
                problems.append(f"{path.name}:{node.value.lineno}: code={ast.unparse(node.value)}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.startswith("conformance") for n in names):
                    problems.append(f"{path.name}:{node.lineno}: imports conformance")
    assert problems == []


def test_every_decode_error_has_a_code():
    classes = [c for c in vars(wire_errors).values() if isinstance(c, type) and issubclass(c, wire_errors.DecodeError)]
    assert len(classes) > 5
    for cls in classes:
        assert cls in decode_errors.DECODE_ERROR_CODES, cls.__name__
        assert decode_errors.code_of(cls("x")) is decode_errors.DECODE_ERROR_CODES[cls]
    assert decode_errors.code_of(wire_errors.BadPacketMagic("x")) is Code.MULTIFD_PACKET


def asserted_codes() -> dict[str, set[str]]:
    """code -> test files that assert it (in an assert, or in the parameters of a test)."""
    found: dict[str, set[str]] = {}
    for path, tree in trees("tests"):
        if path.name == Path(__file__).name:
            continue
        top = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            refs = set()
            if isinstance(node, ast.Assert):
                refs = code_refs(node)
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("mark.parametrize"):
                for arg in node.args[1:]:
                    refs |= code_refs(arg)
                    refs |= {c for n in ast.walk(arg) if isinstance(n, ast.Name) and n.id in top for c in code_refs(top[n.id])}
            for c in refs:
                found.setdefault(c, set()).add(path.name)
    return found


def test_every_catalogued_code_is_asserted_by_a_test():
    found = asserted_codes()
    assert sorted(CODE_VALUES - set(found)) == []


def test_severity_overrides_name_facts_of_the_version_registry():
    import dataclasses

    from conformance.versions import Modelled

    facts = {f.name for f in dataclasses.fields(Modelled)}
    for e in CATALOGUE.values():
        assert isinstance(e.severity, Severity)
        assert all(fact in facts for fact, _, _ in e.where), e.code
        assert all(s is not e.severity for _, _, s in e.where), f"{e.code}: an override equal to the default"
    assert CATALOGUE[Code.RAM_ZERO_FILL].severity_on("7.2") is Severity.SILENT_LOSS
    assert CATALOGUE[Code.RAM_ZERO_FILL].severity_on("10.0") is Severity.REJECT


@pytest.mark.parametrize("code", list(Code))
def test_catalogue_entry_is_complete(code):
    e = CATALOGUE[code]
    assert e.code is code and e.meaning and e.qemu


def test_docs_table_is_the_catalogue():
    assert (ROOT / "docs" / "violations.md").read_text() == catalogue_markdown()
