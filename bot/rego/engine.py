"""The bot's side of the Rego worker: compile the modules, evaluate with a deadline, restart on failure.

One worker per bot process answers one query at a time (an evaluation is about a millisecond); a
query that does not answer within the timeout is given up on, the worker is killed, and a new one
takes over, so one runaway module costs one request (which fails closed) and not the bot.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from bot.domain.policy import Policy
from bot.domain.rego import DEFAULT_TIMEOUT_SECONDS, AnswerKind, RegoAnswer, RegoModule

log = logging.getLogger(__name__)

# The worker needs to find Python and this package, nothing of the bot's secrets.
_PASSED_ENVIRONMENT = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV")
# Starting a worker (Python and rego-cpp, then compiling) is not an evaluation; it gets its own limit.
START_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class CompileProblem:
    rule: str
    path: str
    line: int
    column: int
    message: str

    def line_text(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class RegoEngineError(Exception):
    """The worker could not be started or stopped answering while starting."""


class RegoEngine:
    """Implements bot.domain.rego.RegoEvaluator. Thread-safe; ``close`` stops the worker."""

    def __init__(
        self,
        modules: Mapping[str, RegoModule],
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        probe: Mapping[str, object] | None = None,
    ) -> None:
        self.modules = dict(modules)
        self.timeout = timeout
        self._probe = dict(probe) if probe is not None else None
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._buffer = bytearray()
        self._errors: IO[bytes] = tempfile.TemporaryFile()
        self.restarts = 0

    def compile(self) -> list[CompileProblem]:
        """Start the worker and compile every module: the problems, each with its file and line."""
        with self._lock:
            return self._start()

    def check(self, module: RegoModule) -> list[CompileProblem]:
        """Compile one module on its own (for reading a policy file, before any rule is evaluated)."""
        with self._lock:
            self.modules = {"module": module}
            return self._start() if self._process is None else self._load()

    def evaluate(self, rule: str, document: Mapping[str, object]) -> RegoAnswer:
        deadline = time.monotonic() + self.timeout
        if not self._lock.acquire(timeout=self.timeout):
            return RegoAnswer(AnswerKind.TIMEOUT, detail=f"the Rego engine was busy for more than {self.timeout:g} s")
        try:
            if self._process is None or self._process.poll() is not None:
                try:
                    problems = self._start()
                except RegoEngineError as exc:  # never raise for what the worker does: the rule fails closed
                    return RegoAnswer(AnswerKind.ERROR, detail=str(exc)[:300])
                if problems:  # the files did not change under us; this would be a bug
                    return RegoAnswer(AnswerKind.ERROR, detail=problems[0].line_text())
                deadline = time.monotonic() + self.timeout
            assert self._process is not None
            try:
                self._send({"eval": rule, "input": document})
                reply = self._receive(deadline)
            except TimeoutError:
                self._kill()
                return RegoAnswer(AnswerKind.TIMEOUT, detail=f"the module did not answer within {self.timeout:g} s")
            except (OSError, EOFError, ValueError) as exc:
                code = self._kill()
                log.warning("the Rego worker stopped while evaluating rule %s (exit code %s): %s", rule, code, exc)
                return RegoAnswer(
                    AnswerKind.ERROR, detail=f"the Rego engine stopped while evaluating (exit code {code})"
                )
            return RegoAnswer(AnswerKind(reply["kind"]), reply.get("value"), str(reply.get("detail", ""))[:300])
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._kill()
            self._errors.close()

    def _start(self) -> list[CompileProblem]:
        self._kill()
        environment = {key: os.environ[key] for key in _PASSED_ENVIRONMENT if key in os.environ}
        # What the worker says on stderr (a missing regopy, a traceback) explains a worker that did
        # not start; a file, because a pipe nobody reads could fill and stall it.
        self._errors.close()
        self._errors = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bot.rego.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            env=environment,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )
        self._buffer.clear()
        self.restarts += 1
        return self._load()

    def _load(self) -> list[CompileProblem]:
        load = {name: {"path": m.path, "source": m.source} for name, m in self.modules.items()}
        try:
            self._send({"load": load, "probe": self._probe})
            reply = self._receive(time.monotonic() + START_TIMEOUT_SECONDS)
        except TimeoutError:
            self._kill()
            raise RegoEngineError(
                f"compiling the modules (and a first evaluation with a sample input) took more than "
                f"{START_TIMEOUT_SECONDS:g} s: is a module's evaluation unbounded?"
            ) from None
        except (OSError, EOFError, ValueError):
            code = self._kill()
            said = self._last_error_line()
            why = f": {said}" if said else ""
            raise RegoEngineError(f"the Rego worker did not start (exit code {code}){why}") from None
        return [
            CompileProblem(name, self.modules[name].path, int(p["line"]), int(p["column"]), str(p["message"]))
            for name, found in reply["problems"].items()
            for p in found
        ]

    def _send(self, message: object) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(message).encode("utf-8") + b"\n")
        self._process.stdin.flush()

    def _receive(self, deadline: float) -> dict[str, Any]:
        # Raw reads with select: a buffered reader could hold the answer where select cannot see it.
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError("the worker closed its output")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ValueError("the worker's answer is not an object")
        return reply

    def _last_error_line(self) -> str:
        self._errors.seek(0)
        lines = [line.strip() for line in self._errors.read()[-4096:].decode("utf-8", "replace").splitlines()]
        return next((line for line in reversed(lines) if line), "")[:300]

    def _kill(self) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        code = process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        return code


def engine_for(policy: Policy, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> RegoEngine | None:
    """A started engine for the policy's Rego rules, or None when it has none.

    The modules compiled when the policy was read; a problem now means the worker itself cannot run.
    """
    modules = {rule.name: rule.rego for rule in policy.rules if rule.rego is not None}
    if not modules:
        return None
    engine = RegoEngine(modules, timeout=timeout)
    problems = engine.compile()
    if problems:
        engine.close()
        raise RegoEngineError(f"a Rego module no longer compiles: {problems[0].line_text()}")
    return engine
