"""The real ``jit-bot`` console script as a subprocess with a clean environment: what the CLI tests, the
process tests and the benchmarks that run `jit-bot serve` share."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

import bot
from tests.world import POLICY, eventually

JIT_BOT = Path(sys.executable).parent / "jit-bot"


def base_env(home: Path) -> dict[str, str]:
    """Only what a process needs to run: nothing SLACK_* or JIT_* leaks in from the test runner.

    The process imports the ``bot`` package these tests were imported with (a worktree, or the copy
    scripts/mutants breaks), not whichever checkout the virtualenv's editable install points at."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(Path(bot.__file__).resolve().parent.parent),
    }


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JIT_BOT), *args],
        cwd=tmp_path,
        env={**base_env(tmp_path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_policy(directory: Path, data: dict[str, Any] = POLICY, name: str = "policy.yml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_no_traceback(output: str) -> None:
    assert "Traceback" not in output, output
    assert "Error:" not in output, output


def free_port() -> int:
    """A loopback port free right now, for a process that binds it itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServeProcess:
    """One ``jit-bot serve`` listening on the port its env says; its stdout and stderr go to files in
    ``workdir`` (named after it), so a full pipe can never stall it."""

    def __init__(self, workdir: Path, env: dict[str, str], *, name: str = "serve") -> None:
        self.name = name
        self.base_url = f"http://127.0.0.1:{env['JIT_HTTP_PORT']}"
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self._stdout = self.stdout_path.open("w")
        self._stderr = self.stderr_path.open("w")
        self.process = subprocess.Popen(
            [str(JIT_BOT), "serve"],
            cwd=workdir,
            env={**base_env(workdir), **env},
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
        )

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def log_lines(self, level: str) -> list[str]:
        return [line for line in self.output().splitlines() if f" {level} " in line]

    def wait_healthy(self, timeout: float = 30) -> httpx.Response:
        """Wait for /healthz to answer 200 (and return that answer); fails at once if the process exits."""

        def healthy() -> httpx.Response | None:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(f"{self.base_url}/healthz", timeout=2)
                if response.status_code == 200:
                    return response
            return None

        try:
            return eventually(healthy, timeout=timeout, what=f"{self.name} to become healthy")
        except AssertionError as exc:
            if self.process.poll() is not None:
                raise  # it exited: the error says so, with its output
            raise AssertionError(f"{exc}:\n{self.output()}") from None

    def memory_mb(self) -> dict[str, float]:
        """VmHWM (peak) and VmRSS (now) of the process, in MB."""
        values: dict[str, float] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) / 1024  # kB
        return values

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no finishing of work in flight, like a crash or an OOM kill."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 20) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL if it has not ended within ``timeout``; closes it and returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.close()
        return self.process.returncode

    def close(self) -> None:
        """Kill it if it still runs, and close its output files (idempotent)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._stdout.close()
        self._stderr.close()
