"""FHIR JSON in and out without losing decimal precision.

FHIR decimals keep their precision (``1.50`` is not ``1.5``), so numbers with a fraction or
exponent are parsed as ``Decimal`` and written back exactly as they came.
"""

from __future__ import annotations

from typing import Any

import simplejson


def loads(data: bytes | str) -> Any:
    """Parse JSON with decimals as ``Decimal``; raises ``ValueError`` on anything invalid."""
    return simplejson.loads(data, use_decimal=True)


def dumps(document: Any) -> str:
    """Compact JSON; ``Decimal`` values are written as JSON numbers with their own digits."""
    return str(simplejson.dumps(document, use_decimal=True, separators=(",", ":"), ensure_ascii=False))
