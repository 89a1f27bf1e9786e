"""The error catalog (twofa/errors.py) is the only place an error is made."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from twofa import errors

PACKAGE = Path(errors.__file__).parent


def test_no_error_is_made_outside_the_catalog() -> None:
    """A ``ServiceError(...)`` written anywhere else would be a code or message of its own."""
    makers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(errors.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else None
                name = node.func.id if isinstance(node.func, ast.Name) else name
                if name == "ServiceError":
                    makers.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert makers == []


def test_each_code_has_one_status() -> None:
    statuses: dict[str, set[int]] = {}
    for refusal in vars(errors).values():
        if isinstance(refusal, errors.Refusal):
            statuses.setdefault(refusal.code, set()).add(refusal.status)
    assert {code: s for code, s in statuses.items() if len(s) > 1} == {}


def test_every_workflow_refusal_is_in_the_catalog() -> None:
    """Each reason the workflow refuses an update with answers its catalog error, not a 503."""
    source = (PACKAGE / "workflows" / "two_factor.py").read_text()
    reasons = set(re.findall(r'reason="([a-z_]+)"', source))
    assert reasons, "the workflow's refusals moved: follow them here"
    assert reasons - errors.WORKFLOW_REFUSALS.keys() == set()


def test_messages_with_words_are_filled() -> None:
    assert errors.wrong_step("enroll_code").body() == {
        "error": "wrong_step",
        "message": "This login is waiting for another step first: enroll code.",
        "expected": "enroll_code",
    }
    assert errors.PAYLOAD_TOO_LARGE(65536).message == "The request body is larger than 65536 bytes."


def test_docs_list_every_code() -> None:
    """docs/api.md's table of codes holds each code the catalog and the rules make (a caller
    codes against it), each with its status, and no code that neither makes."""
    docs = (PACKAGE.parent / "docs" / "api.md").read_text()
    section = docs.split("### Every error code", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| (\d{3}) \| ([^|]+) \|", section, re.MULTILINE)
    listed = {(int(status), code) for status, cell in rows for code in re.findall(r"`(\w+)`", cell)}
    made = {(r.status, r.code) for r in vars(errors).values() if isinstance(r, errors.Refusal)}
    made |= set(errors.HTTP_CODES.items())
    rules = (PACKAGE / "policy.py").read_text()
    made |= {(422, c) for c in re.findall(r'RuleViolation\(\s*(?:"\w+"|field),\s*"(\w+)"', rules)}
    operators = re.findall(r"`(\w+)` \((\d{3})", section.split("have their own:", 1)[1])
    listed |= {(int(status), code) for code, status in operators}
    assert made - listed == set()
    assert listed - made == set()
