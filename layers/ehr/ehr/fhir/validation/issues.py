"""Collecting the issues of one validation and turning them into an OperationOutcomeError.

Diagnostics echo a value only when it is a code, an id, a type or a URL the client chose (never a
name, a date or free text, which may be PHI that a log could keep). :func:`show` makes such a value
safe to put in a message: short, printable, valid UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ehr.fhir.outcome import Issue, OperationOutcomeError

# A hostile or badly broken body can produce an issue per element; the answer stays readable.
MAX_ISSUES: Final = 200


def show(value: object, limit: int = 80) -> str:
    """A client-supplied value quoted for a diagnostic."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"'{text}'"


class Issues:
    """The issues found so far, in the order they were found, without duplicates."""

    def __init__(self) -> None:
        self.items: list[Issue] = []
        self._seen: set[tuple[str, str, tuple[str, ...]]] = set()
        self.dropped = 0

    def add(self, code: str, expression: str | None, diagnostics: str) -> None:
        expr = (expression,) if expression else ()
        key = (code, diagnostics, expr)
        if key in self._seen:
            return
        if len(self.items) >= MAX_ISSUES:
            self.dropped += 1
            return
        self._seen.add(key)
        self.items.append(Issue(code=code, diagnostics=diagnostics, expression=expr))

    def extend(self, issues: Iterable[Issue]) -> None:
        for issue in issues:
            self.add(issue.code, issue.expression[0] if issue.expression else None, issue.diagnostics)

    def expressions(self) -> set[str]:
        return {i.expression[0] for i in self.items if i.expression}

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> OperationOutcomeError:
        issues = list(self.items)
        if self.dropped:
            issues.append(
                Issue(
                    code="too-costly",
                    diagnostics=f"{self.dropped} more issue(s) were found and not listed; "
                    "fix the ones above and submit again.",
                )
            )
        return OperationOutcomeError(status=400, issues=tuple(issues))
