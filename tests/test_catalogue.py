"""Every violation code the checker can report is in the catalogue, and the docs match it."""

import re
from pathlib import Path

from conformance.rules.catalogue import CATALOGUE, catalogue_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_every_reported_code_is_catalogued():
    used = set()
    for path in (ROOT / "conformance").rglob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r'_v\(\s*"([a-z0-9-]+)"', text))
        used |= set(re.findall(r'Finding\(\s*"([a-z0-9-]+)"', text))
    for path in (ROOT / "wireformat").rglob("*.py"):
        used |= set(re.findall(r'code="([a-z0-9-]+)"', path.read_text()))
    assert used, "found no codes: the pattern no longer matches the code"
    assert used - set(CATALOGUE) == set()


def test_docs_table_is_the_catalogue():
    assert (ROOT / "docs" / "violations.md").read_text() == catalogue_markdown()
