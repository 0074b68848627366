"""The documents say what the code does: the architecture's state diagrams match the enforced transition
tables, and the two READMEs agree with the scripts and with each other."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.domain.policy import Policy
from bot.domain.status import GRANT_TRANSITIONS, REQUEST_TRANSITIONS, GrantStatus, RequestStatus
from tests.world import POLICY

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
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


def _script_default(name: str) -> str:
    match = re.search(rf'export {name}="\$\{{[A-Z_]+:-([^}}]*)\}}"', (ROOT / "scripts" / "devidp").read_text())
    assert match, f"scripts/devidp no longer sets {name}"
    return match.group(1)


def test_the_dev_idp_readme_the_main_readme_and_scripts_devidp_agree() -> None:
    devidp_readme = (ROOT / "devidp" / "README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    engines = json.loads((ROOT / "devidp" / "package.json").read_text())["engines"]["node"]
    node = engines.removeprefix(">=")

    port, secret = _script_default("DEVIDP_PORT"), _script_default("DEVIDP_CLIENT_SECRET")
    bot = _script_default("DEVIDP_TRUSTED_ISSUER")
    for text in (devidp_readme, readme):
        assert f"Node.js ≥ {node}" in text, "both say the Node.js version package.json asks for"
        assert f"http://127.0.0.1:{port}" in text
    assert f"DEVIDP_CLIENT_SECRET={secret}" in devidp_readme and f"OIDC_CLIENT_SECRET={secret}" in readme
    assert f"DEVIDP_TRUSTED_ISSUER={bot}" in devidp_readme and f"JIT_PUBLIC_URL={bot}" in devidp_readme
    assert "trusts a bot at :" + bot.rsplit(":", 1)[1] in readme


BENCHMARKS = sorted(path for path in (ROOT / "benchmarks").glob("*.py") if path.name != "common.py")


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_each_benchmark_runs_after_the_test_install_as_the_readme_says(script: Path, tmp_path: Path) -> None:
    """The README says `.venv/bin/python benchmarks/<script>.py` after `scripts/test`: each one's imports
    resolve with the test install alone, from any folder, and the README names it."""
    result = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    readme = (ROOT / "README.md").read_text()
    assert "`.venv/bin/python benchmarks/<script>.py`" in readme
    assert f"`{script.name}`" in readme


def test_the_readme_rules_example_is_a_valid_policy() -> None:
    """The Rules example in the README loads beside the test world's resources, with the rules it shows."""
    section = (ROOT / "README.md").read_text().split("### Rules", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block, "the Rules section has a yaml example"
    example = yaml.safe_load(block.group(1))
    policy = Policy.model_validate({**POLICY, **example})
    assert [rule.name for rule in policy.rules] == ["oncall-read", "write-needs-two-dbas", "no-write-at-weekends"]
    reason = policy.rules[0].when.reason_matches
    assert reason is not None and reason.search("checking INC-1234")
