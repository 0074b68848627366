"""The architecture document's state diagrams say exactly what the enforced transition tables allow."""

from __future__ import annotations

import re
from pathlib import Path

from bot.domain.status import GRANT_TRANSITIONS, REQUEST_TRANSITIONS, GrantStatus, RequestStatus

ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
EDGE = re.compile(r"^\s*(\w+)\s*-->\s*(\w+)", re.MULTILINE)


def _diagrams() -> list[set[tuple[str, str]]]:
    blocks = re.findall(r"```mermaid\n(.*?)```", ARCHITECTURE.read_text(), re.DOTALL)
    return [set(EDGE.findall(block)) for block in blocks if "stateDiagram" in block]


def _table_edges(
    table: dict[RequestStatus, frozenset[RequestStatus]] | dict[GrantStatus, frozenset[GrantStatus]],
) -> set[tuple[str, str]]:
    return {(source.value, target.value) for source, targets in table.items() for target in targets}


def test_the_request_and_grant_diagrams_match_the_transition_tables() -> None:
    diagrams = _diagrams()
    assert len(diagrams) == 2, "one request diagram and one grant diagram"
    request_diagram, grant_diagram = diagrams
    assert request_diagram == _table_edges(REQUEST_TRANSITIONS)
    assert grant_diagram == _table_edges(GRANT_TRANSITIONS)
