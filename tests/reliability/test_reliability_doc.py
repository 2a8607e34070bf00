"""docs/reliability.md lists every reliability test, odd-image case and labels-file case."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parents[1] / "docs" / "reliability.md"


def collect_ids():
    ids = set()
    for path in sorted(HERE.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        ids |= {f"{path.name}::{node.name}" for node in tree.body
                if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    return ids


def test_every_reliability_test_is_in_the_doc_and_every_doc_id_exists():
    text = DOC.read_text(encoding="utf-8")
    ids = collect_ids() - {"test_reliability_doc.py::" + name for name in (
        "test_every_reliability_test_is_in_the_doc_and_every_doc_id_exists",
        "test_every_odd_input_case_is_in_the_doc")}
    missing = sorted(i for i in ids if f"`{i}`" not in text)
    assert missing == [], f"add to docs/reliability.md: {missing}"
    named = set(re.findall(r"`(test_\w+\.py::test_\w+)`", text))
    assert sorted(named - collect_ids()) == [], "docs/reliability.md names tests that do not exist"


def test_every_odd_input_case_is_in_the_doc():
    from test_hostile_images import CASES
    from test_labels_inputs import REFUSED

    text = DOC.read_text(encoding="utf-8")
    missing = sorted(name for name in [*CASES, *REFUSED] if f"`{name}`" not in text)
    assert missing == [], f"add to docs/reliability.md: {missing}"
