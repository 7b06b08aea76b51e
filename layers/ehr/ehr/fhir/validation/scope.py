"""What the walk remembers about one resource while it goes through it.

A *scope* is a resource that is not contained in another: the top-level resource, each
``Bundle.entry.resource``, each ``Parameters.parameter.resource``. Local references (``#id``) and
contained resources are judged within their scope (ref-1, dom-3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from ehr.fhir.validation.issues import Issues


@dataclass
class Contained:
    id: str | None
    loc: str
    refers_to_container: bool = False


@dataclass
class Scope:
    resource_type: str
    loc: str
    contained: list[Contained] = field(default_factory=list)
    local_references: list[tuple[str, str]] = field(default_factory=list)  # (id after '#', where)
    uri_targets: set[str] = field(default_factory=set)  # ids named by canonical/uri values '#id'
    current: Contained | None = None  # the contained resource being walked, if any


# An invariant check: the object, where it is, the scope it is in; it adds what it finds to Issues.
Check: TypeAlias = Callable[[Issues, dict[str, Any], str, Scope], None]
