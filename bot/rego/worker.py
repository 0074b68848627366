"""The Rego worker: a child process that compiles the policy's modules and answers queries.

It speaks JSON lines on stdin and on a private copy of stdout. rego-cpp writes its diagnostics to
file descriptor 1 and can abort the whole process on some inputs, which is why it runs here and not
in the bot: a module that loops, explodes or crashes costs this process, never an approval.

Requests: ``{"load": {name: {"path", "source"}}, "probe": input}`` answers ``{"problems": {name:
[{line, column, message}]}}``; ``{"eval": name, "input": {...}}`` answers ``{"kind", "value"?,
"detail"?}`` (a RegoAnswer).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

from bot.domain.rego import QUERY

_ERROR = re.compile(
    r"\(error \d+:(?P<file>[^|\n]*)\|(?P<offset>\d+)\|(?P<length>\d+)\s*\(errormsg \d+:(?P<msg>[^)\n]*)"
)
_ERRORMSG = re.compile(r"\(errormsg \d+:(?P<msg>[^)\n]*)")
_MISSING_FUNCTION = re.compile(r"Function not found: (?P<name>[\w.]+)")


def main() -> int:
    replies = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # rego-cpp's own printing goes nowhere
    # No memory limit: rego-cpp's allocator (snmalloc) reserves address space up front and aborts
    # under RLIMIT_AS or RLIMIT_DATA. A module that builds enormous sets is stopped by the timeout.
    from regopy import Interpreter

    interpreters: dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        if "load" in request:
            interpreters.clear()
            problems: dict[str, list[dict[str, object]]] = {}
            for name, module in request["load"].items():
                interpreter = Interpreter()
                # Without it a built-in that fails (to_number("x"), 1/0) makes its body undefined, which
                # would quietly skip a deny; with it the evaluation fails, and the rule fails closed.
                interpreter.strict_built_in_errors = True
                found, bundle = _compile(interpreter, module["path"], module["source"], request.get("probe"))
                if found:
                    problems[name] = found
                else:
                    interpreters[name] = (interpreter, bundle)
            replies.write(json.dumps({"problems": problems}) + "\n")
        else:
            interpreter, bundle = interpreters[request["eval"]]
            replies.write(json.dumps(_evaluate(interpreter, bundle, request["input"])) + "\n")
    return 0


def _compile(interpreter: Any, path: str, source: str, probe: object) -> tuple[list[dict[str, object]], Any]:
    """Problems with the module, and the compiled query (a bundle: about six times faster per
    evaluation than a query compiled each time)."""
    try:
        interpreter.add_module(path, source)
        bundle = interpreter.build(QUERY, [])
    except Exception as exc:  # regopy raises RegoError carrying the parser's error sequence
        parsed = [_located(source, m) for m in _ERROR.finditer(str(exc))]
        return parsed[:1] or [{"line": 1, "column": 1, "message": _first_message(str(exc))}], None
    code = _code_only(source)
    found = _shape_problems(code) + _unknown_calls(interpreter, code)
    if found:
        return [_at(source, offset, message) for offset, message in found[:1]], None
    if probe is None:
        return [], bundle
    # rego-cpp resolves names at the first query: a sample input finds what the scan above cannot.
    answer = _evaluate(interpreter, bundle, probe)
    missing = _MISSING_FUNCTION.search(str(answer.get("detail", "")))
    if missing is None:
        return [], bundle
    name = missing.group("name")
    call = re.search(rf"(?<![\w.]){re.escape(name)}\s*\(", code)
    message = f"calls {name}, which is not a Rego built-in this engine knows"
    return [_at(source, call.start() if call else 0, message)], None


# Rego words that a parenthesis may follow without being a call.
_KEYWORDS = frozenset({"if", "else", "not", "some", "every", "with", "as", "in", "contains", "default", "import"})
_CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\(")
# A function the module defines: its head starts a line, `is_weekend(ns) if {` or `f(x) := …`.
_DEFINED = re.compile(r"(?m)^\s*([A-Za-z_]\w*)\s*\([^()\n]*\)\s*(?::=|=|if\b|\{)")
_PACKAGE = re.compile(r"\bpackage\s+([\w.]+)")
_DECISION = re.compile(r"(?m)^\s*(?:default\s+)?decision\b")


def _code_only(source: str) -> str:
    """The source with comments and the insides of strings blanked (same length, same lines), so
    that what is scanned for is code, and offsets still point into the source."""
    out = list(source)
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "#":
            while i < n and source[i] != "\n":
                out[i] = " "
                i += 1
        elif c in '"`':
            end = c
            i += 1
            while i < n and source[i] != end:
                if end == '"' and source[i] == "\\" and i + 1 < n:
                    out[i] = " "
                    i += 1
                if source[i] != "\n":
                    out[i] = " "
                i += 1
            i += 1
        else:
            i += 1
    return "".join(out)


def _shape_problems(code: str) -> list[tuple[int, str]]:
    """A module whose data.jit.decision can never be defined would pass every request quietly."""
    package = _PACKAGE.search(code)
    if package is not None and package.group(1) != "jit":
        said = f"the package is '{package.group(1)}', so data.jit.decision is never defined: write `package jit`"
        return [(package.start(1), said)]
    if _DECISION.search(code) is None:
        return [(0, "defines no `decision`, so data.jit.decision is never defined")]
    return []


def _unknown_calls(interpreter: Any, code: str) -> list[tuple[int, str]]:
    """Calls of functions that are neither built-ins of this engine nor defined in the module: the
    probe only reaches the calls its sample input gets to, and a typo behind a condition would deny
    every request that reaches it."""
    defined = {match.group(1) for match in _DEFINED.finditer(code)}
    found = []
    for match in _CALL.finditer(code):
        name = match.group(1)
        if name in _KEYWORDS or name in defined or name.startswith(("input.", "data.")):
            continue
        if not interpreter.is_builtin(name):
            found.append((match.start(1), f"calls {name}, which is not a Rego built-in this engine knows"))
    return found


def _at(source: str, offset: int, message: str) -> dict[str, object]:
    # Offsets here count characters; _position takes bytes, as rego-cpp reports them.
    line, column = _position(source, len(source[:offset].encode("utf-8")))
    return {"line": line, "column": column, "message": message}


def _located(source: str, match: re.Match[str]) -> dict[str, object]:
    line, column = _position(source, int(match.group("offset")))
    return {"line": line, "column": column, "message": match.group("msg").strip()}


def _position(source: str, offset: int) -> tuple[int, int]:
    # rego-cpp reports byte offsets; a person wants line and column.
    before = source.encode("utf-8")[:offset].decode("utf-8", errors="ignore")
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def _first_message(text: str) -> str:
    found = _ERRORMSG.search(text)
    return found.group("msg").strip() if found else "the module does not compile"


def _evaluate(interpreter: Any, bundle: Any, document: object) -> dict[str, object]:
    # The low-level calls, because regopy's Output parses the result as JSON in its constructor and
    # an error result is not JSON; its text is what says what went wrong.
    from regopy.rego_shared import rego_bundle_query, rego_free_output, rego_output_ok, rego_output_string

    try:
        # ensure_ascii=False: rego-cpp does not unescape \u sequences in input strings, so "café"
        # sent escaped would not equal "café" in the module.
        interpreter.set_input_term(json.dumps(document, ensure_ascii=False))
        output = rego_bundle_query(interpreter._impl, bundle._impl)
    except Exception as exc:
        return {"kind": "error", "detail": _first_message(str(exc))}
    try:
        ok = rego_output_ok(output)
        text = rego_output_string(output)
    finally:
        rego_free_output(output)
    if ok and text == "undefined":
        return {"kind": "undefined"}
    if ok:
        try:
            expressions = json.loads(text)["expressions"]
        except (ValueError, KeyError, TypeError):
            return {"kind": "error", "detail": _first_message(text)}
        if isinstance(expressions, list) and len(expressions) == 1:
            return {"kind": "defined", "value": expressions[0]}
    return {"kind": "error", "detail": _first_message(text) if "errormsg" in text else "the evaluation failed"}


if __name__ == "__main__":
    raise SystemExit(main())
