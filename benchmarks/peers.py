"""What the benchmark needs beyond this project's venv: the peers' virtualenvs, wrk and
redis-server.

Everything is created on first use, so ``make bench`` needs no other setup step. The peers run
the same Flask and Werkzeug versions as this project's venv, so that only the extension differs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from importlib.metadata import version
from pathlib import Path

from report import Row, not_run

VENVS = Path(__file__).resolve().parent / ".venvs"


class Unavailable(Exception):
    """A contender or tool that cannot be had on this machine; the message says why."""


@dataclass(frozen=True)
class Peer:
    """A contender installed in a virtualenv of its own."""

    name: str
    requirements: tuple[str, ...]
    oldest: tuple[int, int]  # Python versions it runs on, inclusive
    newest: tuple[int, int]

    def python(self) -> Path:
        """The venv's interpreter, creating the venv (or updating its packages) when needed."""
        venv = VENVS / self.name
        stamp = venv / "requirements.txt"
        wanted = "\n".join(
            (*self.requirements, f"flask=={version('flask')}", f"werkzeug=={version('werkzeug')}")
        )
        python = venv / "bin" / "python"
        if stamp.exists() and stamp.read_text() == wanted and python.exists():
            return python
        base = _find_python(self.oldest, self.newest)
        print(f"  creating {venv} with {base} ...", file=sys.stderr, flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        for command in (
            [base, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", *wanted.splitlines()],
        ):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise Unavailable(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
        stamp.write_text(wanted)
        return python


PEERS = {
    # It imports the ``imp`` module, removed in Python 3.12, and ``six``.
    "py-healthcheck": Peer("py-healthcheck", ("healthcheck==1.3.3", "six"), (3, 6), (3, 11)),
    # It shares our import name ``flask_status``, and its annotations need Python 3.10.
    "flask-status-1.0.1": Peer("flask-status-1.0.1", ("Flask-Status==1.0.1",), (3, 10), (3, 99)),
}


def _find_python(oldest: tuple[int, int], newest: tuple[int, int]) -> str:
    """An interpreter on this machine whose version is within ``oldest..newest``."""
    candidates = [sys.executable] + [
        path
        for name in ("python3", "python3.11", "python3.10", "python3.12", "python3.13")
        if (path := shutil.which(name))
    ]
    for candidate in candidates:
        found = subprocess.run(
            [candidate, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if found.returncode == 0:
            major, minor = map(int, found.stdout.split())
            if oldest <= (major, minor) <= newest:
                return candidate
    raise Unavailable(f"no Python {oldest[0]}.{oldest[1]} to {newest[0]}.{newest[1]} found")


def wrk() -> str:
    """The wrk load generator, installed from Debian's packages when missing."""
    return debian_tool("wrk", "wrk")


def redis_server() -> str:
    """redis-server, installed from Debian's packages when missing."""
    return debian_tool("redis-server", "redis-server")


#: A scenario measured with a tool, given the tool's path.
Measure = Callable[[str], list[Row]]


def needs(tool: Callable[[], str], scenario: str) -> Callable[[Measure], Callable[[], list[Row]]]:
    """Makes a scenario that needs ``tool()`` (``wrk``, ``redis_server``) measure with its
    path, or answer a row saying why it could not be had."""

    def decorate(measure: Measure) -> Callable[[], list[Row]]:
        @wraps(measure)
        def measured() -> list[Row]:
            try:
                path = tool()
            except Unavailable as exc:
                return [not_run(scenario, "every contender", str(exc))]
            return measure(path)

        return measured

    return decorate


def debian_tool(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` first when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise Unavailable(f"{command} is not installed (apt-get install {package})")
    print(f"  installing {package} with apt-get ...", file=sys.stderr, flush=True)
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        subprocess.run(step, env=quiet, check=False, stdout=subprocess.DEVNULL)
    found = shutil.which(command)
    if not found:
        raise Unavailable(f"{package} could not be installed with apt-get")
    return found
