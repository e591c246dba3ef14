"""The documentation works as written: README.md and docs/*.md.

- Every ``python`` block runs (``doc_runner.py``): a page's blocks in order, in one namespace,
  in a fresh interpreter in a temporary directory, with sockets to 127.0.0.1 only, and each
  ``print(...)  # shown`` must print what it shows. A block that cannot run here is preceded by
  ``<!-- not run: <the reason> -->``.
- Every console block (``console``, ``bash``, ``sh``, ``shell``, ``text``, or none named) is
  produced or checked by a test of this module, listed in ``CONSOLE_CHECKS``, or preceded by
  ``<!-- illustrative: <why> -->``.
- Every server command of the README and of docs/deployment.md starts for real, serving the
  page's ``myapp.py``, and logs no warning; so does docs/sharing.md's, against a real Redis.
- What the pages say ``flask status``, ``make run``, the probe command, ``/metrics`` and a
  status route with Redis down print is what they print; the install commands name extras that
  exist and install what they say.
- Links between pages reach a file and a heading, and the module map lists every module.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import RedisServer
from flask import Flask
from helpers import TESTS_DIR, ServerProcess, serving_in_thread
from packaging.requirements import Requirement
from werkzeug.serving import make_server

from flask_status import FlaskStatus

ROOT = TESTS_DIR.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
BIN = Path(sys.executable).parent

FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: (\S.*\S) -->$")
ILLUSTRATIVE = re.compile(r"^<!-- illustrative: (\S.*\S) -->$")
#: Languages of the blocks that show commands or what they print ("": a block without one).
CONSOLE = frozenset({"console", "bash", "sh", "shell", "text", ""})
#: Seconds a page's examples may take together.
PAGE_SECONDS = 120


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # the page's line number of the block's first line of code
    lang: str
    code: str
    not_run: str | None  # the reason given in ``<!-- not run: ... -->``
    illustrative: str | None = None  # the reason given in ``<!-- illustrative: ... -->``


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page`` (top level, not indented)."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        ticks, lang = fence.groups()
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == ticks), None)
        assert end is not None, f"{shown(page)}:{index + 1}: a code block is never closed"
        before = lines[index - 1] if index else ""
        not_run, illustrative = NOT_RUN.match(before), ILLUSTRATIVE.match(before)
        code = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(
            Block(
                page,
                index + 2,
                lang,
                code,
                not_run.group(1) if not_run else None,
                illustrative.group(1) if illustrative else None,
            )
        )
        index = end + 1
    return found


def python_blocks(page: Path) -> list[Block]:
    return [block for block in blocks(page) if block.lang == "python"]


# -- Python examples -----------------------------------------------------------------------


def test_pages_are_found() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "deployment.md", "asgi.md", "usage.md"} <= names


@pytest.mark.parametrize(
    ("words", "marker", "languages"),
    [("not run", NOT_RUN, {"python"}), ("illustrative", ILLUSTRATIVE, CONSOLE)],
    ids=["not run", "illustrative"],
)
def test_markers_give_a_reason_and_precede_their_block(
    words: str, marker: re.Pattern[str], languages: set[str]
) -> None:
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if words not in line or not line.startswith("<!--"):
                continue
            assert marker.match(line), f"{shown(page)}:{number}: write <!-- {words}: <reason> -->"
            following = FENCE.match(lines[number] if number < len(lines) else "")
            assert following and following.group(2) in languages, (
                f"{shown(page)}:{number}: a {words} marker must be right above a block of "
                f"{', '.join(sorted(languages))}"
            )


@pytest.mark.parametrize(
    "page", [page for page in PAGES if python_blocks(page)], ids=lambda page: page.name
)
def test_python_examples_run_as_written(page: Path, tmp_path: Path) -> None:
    run_examples(page, tmp_path)


def run_examples(
    page: Path, directory: Path, then: str = "", replace: tuple[str, str] = ("", "")
) -> str:
    """Run the page's runnable python blocks, then ``then``, in ``directory``: their output.

    ``replace`` is ``(old, new)`` for the blocks' code: an address of the page for one here.
    """
    runnable = [block for block in python_blocks(page) if block.not_run is None]
    old, new = replace
    codes = [
        {"line": block.line, "code": block.code.replace(old, new) if old else block.code}
        for block in runnable
    ]
    spec = {"page": shown(page), "blocks": [*codes, {"line": 1, "code": then}]}
    (directory / "blocks.json").write_text(json.dumps(spec))
    result = subprocess.run(
        [sys.executable, str(TESTS_DIR / "doc_runner.py"), str(directory / "blocks.json")],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=PAGE_SECONDS,
    )
    assert result.returncode == 0, f"{shown(page)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize(
    "page", [page for page in PAGES if python_blocks(page)], ids=lambda page: page.name
)
def test_python_examples_use_only_names_they_define(page: Path) -> None:
    """Names used in function bodies that no example calls must be defined too."""
    ruff = BIN / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed (the dev extra)")
    # The page's runnable code at its own line numbers, so ruff's messages point into the page.
    lines = [""] * len(page.read_text().splitlines())
    for block in python_blocks(page):
        if block.not_run is None:
            for offset, line in enumerate(block.code.splitlines()):
                lines[block.line - 1 + offset] = line
    result = subprocess.run(
        [str(ruff), "check", "--isolated", "--no-cache", "--select", "F821,F811,F823",
         "--output-format", "concise", "--stdin-filename", f"{shown(page)}.py", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "page", [page for page in PAGES if python_blocks(page)], ids=lambda page: page.name
)
def test_python_examples_hold_no_placeholder(page: Path) -> None:
    """``...`` is valid Python: as a placeholder it would run, and show nothing that works."""
    for block in python_blocks(page):
        for node in ast.walk(ast.parse(block.code)):
            if isinstance(node, ast.Constant) and node.value is Ellipsis:
                raise AssertionError(f"{shown(page)}:{block.line + node.lineno - 1}: `...`")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_json_examples_are_json(page: Path) -> None:
    for block in blocks(page):
        if block.lang == "json":
            try:
                json.loads(block.code)
            except ValueError as exc:
                raise AssertionError(f"{shown(page)}:{block.line}: {exc}") from None


# -- server commands -----------------------------------------------------------------------

SERVERS = ("gunicorn", "uvicorn", "hypercorn", "waitress-serve")
DOCUMENTED_PORT = "8000"
#: What a server must not log while it starts and serves the status route.
TROUBLE = re.compile(r"warn|error|critical|traceback|exception|lifespan|deprecat", re.IGNORECASE)
#: Seconds to let a server go on after its first answer, so its other workers boot too.
SETTLE_SECONDS = 1.0


def app_module(page: Path) -> str:
    """The page's ``myapp.py``: its python block that starts with ``# myapp.py``."""
    (module,) = [b.code for b in python_blocks(page) if b.code.startswith("# myapp.py\n")]
    return module


def server_commands(page: Path) -> list[tuple[str, str]]:
    """``(server, command)`` for each table row of ``page`` whose command starts a server."""
    commands = []
    for line in page.read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) < 4 or not line.startswith("|"):
            continue
        command = re.fullmatch(r"`([^`]+)`", cells[2])
        if command and command.group(1).split()[0] in SERVERS:
            commands.append((cells[1], command.group(1)))
    return commands


SERVED = [
    pytest.param(page, command, id=f"{page.name}: {server}")
    for page in (README, DOCS / "deployment.md")
    for server, command in server_commands(page)
]


def test_every_server_form_is_documented() -> None:
    for page in (README, DOCS / "deployment.md"):
        commands = [command for _, command in server_commands(page)]
        assert len(commands) == 7, commands
        assert any("-k gevent" in command for command in commands)
        assert any("waitress-serve" in command for command in commands)
        assert any("UvicornWorker" in command for command in commands)
    assert server_commands(README) == server_commands(DOCS / "deployment.md")


def trouble_in(log: str) -> list[str]:
    """Lines of the last start's log (the one that got the port) that sound like trouble."""
    last_start = log[log.rindex("\n$ ") + 1 :] if "\n$ " in log else log
    return [line for line in last_start.splitlines()[1:] if TROUBLE.search(line)]


@pytest.mark.parametrize(("page", "command"), SERVED)
def test_server_command_serves_the_status_route_without_a_warning(
    page: Path, command: str, tmp_path: Path
) -> None:
    (tmp_path / "myapp.py").write_text(app_module(page))
    assert DOCUMENTED_PORT in command
    argv = shlex.split(command.replace(DOCUMENTED_PORT, "{port}"))
    argv[0] = str(BIN / argv[0])  # the server installed with the dev extra
    server = ServerProcess(
        argv,
        tmp_path,
        tmp_path / "server.log",
        # gunicorn's control socket lives under $HOME: one of its own, apart from other servers.
        env={"HOME": str(tmp_path)},
        ready_path="/api/status",
    )
    with server:
        reply = server.fetch("/api/status")
        time.sleep(SETTLE_SECONDS)
        log = server.log()
    assert reply.status == 200, (reply, log)
    assert reply.json()["status"] == "OK", (reply, log)
    assert trouble_in(log) == [], log


# -- what the README says commands print ---------------------------------------------------


def console_output(page: Path, command: str) -> str:
    """The line a ``console`` block of ``page`` shows right after ``$ <command>``."""
    for block in blocks(page):
        lines = block.code.splitlines()
        if block.lang == "console" and f"$ {command}" in lines:
            return lines[lines.index(f"$ {command}") + 1]
    raise AssertionError(f"{shown(page)} shows no `$ {command}`")


def test_readme_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(app_module(README))
    result = subprocess.run(
        [str(BIN / "flask"), "--app", "myapp", "status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == console_output(README, ".venv/bin/flask --app myapp status")


def same_shape(shown_value: Any, actual: Any) -> bool:
    """Equal, except that numbers (latencies, counts) only need to be numbers."""
    if isinstance(shown_value, dict):
        return (
            isinstance(actual, dict)
            and shown_value.keys() == actual.keys()
            and all(same_shape(shown_value[key], actual[key]) for key in shown_value)
        )
    if isinstance(shown_value, (int, float)) and not isinstance(shown_value, bool):
        return isinstance(actual, (int, float)) and not isinstance(actual, bool)
    return bool(shown_value == actual)


def make_run_command() -> str:
    """The command of the Makefile's ``run`` target."""
    recipe = re.search(r"^run:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "the Makefile has no run target"
    return recipe.group(1)


@pytest.fixture
def make_run_server(tmp_path: Path) -> Iterator[ServerProcess]:
    command = make_run_command()
    assert "5000" in command
    argv = shlex.split(command.replace("$(BIN)/", f"{BIN}/").replace("5000", "{port}"))
    with ServerProcess(argv, ROOT, tmp_path / "server.log", ready_path="/api/status") as server:
        yield server


def test_make_run_answers_what_the_readme_shows(make_run_server: ServerProcess) -> None:
    assert "http://127.0.0.1:5000/api/status" in README.read_text()
    reply = make_run_server.fetch("/api/status")
    shown_body = json.loads(console_output(README, "curl http://127.0.0.1:5000/api/status"))
    assert reply.status == 200
    assert same_shape(shown_body, reply.json()), (shown_body, reply.json())


# -- console blocks ------------------------------------------------------------------------

#: The console blocks that a test of this module produces or checks: (page, how a line of the
#: block starts) -> the test. Every other console block is marked ``<!-- illustrative: ... -->``.
CONSOLE_CHECKS = {
    ("README.md", "python3 -m venv .venv"): "test_install_commands_install_this_project",
    ("README.md", ".venv/bin/pip install -e '.[redis]'"): (
        "test_install_commands_install_this_project"
    ),
    ("README.md", "$ .venv/bin/flask --app myapp status"): (
        "test_readme_example_prints_what_the_readme_shows"
    ),
    ("README.md", "$ curl http://127.0.0.1:5000/api/status"): (
        "test_make_run_answers_what_the_readme_shows"
    ),
    ("asgi.md", "uvicorn myapp:asgi_app"): "test_server_command_lines_are_the_started_ones",
    ("asgi.md", "gunicorn -k flask_status.uvicorn_worker.UvicornWorker"): (
        "test_server_command_lines_are_the_started_ones"
    ),
    ("cli.md", "$ flask --app myapp status"): "test_flask_status_prints_what_cli_md_shows",
    ("cli.md", "$ python -m flask_status probe"): "test_the_probe_prints_what_the_pages_show",
    ("development.md", "flask_status/"): "test_module_map_lists_every_module",
    ("probe.md", "no answer from"): "test_the_probe_prints_what_the_pages_show",
    ("probe.md", "python -m flask_status probe: error:"): (
        "test_the_probe_prints_what_the_pages_show"
    ),
    ("opentelemetry.md", ".venv/bin/pip install -e"): "test_install_commands_install_this_project",
    ("prometheus.md", "# HELP flask_status_check_up"): "test_metrics_are_what_prometheus_md_shows",
    ("ready-made-checks.md", ".venv/bin/pip install -e"): (
        "test_install_commands_install_this_project"
    ),
    ("sharing.md", "STATUS_STORE="): "test_sharing_command_serves_with_a_real_redis",
}


def console_block(name: str, start: str) -> Block:
    """The one console block of page ``name`` with a line that starts with ``start``."""
    page = README if name == README.name else DOCS / name
    found = [
        block
        for block in blocks(page)
        if block.lang in CONSOLE and any(line.startswith(start) for line in block.code.splitlines())
    ]
    assert len(found) == 1, f"{name}: {len(found)} console blocks with a line `{start}...`"
    return found[0]


def test_every_console_block_is_checked_or_illustrative() -> None:
    checked: dict[tuple[Path, int], str] = {}
    for (name, start), test in CONSOLE_CHECKS.items():
        assert callable(globals().get(test)), f"CONSOLE_CHECKS names no test: {test}"
        block = console_block(name, start)
        assert block.illustrative is None, f"{name}:{block.line}: checked, yet marked illustrative"
        checked[(block.page, block.line)] = test
    for page in PAGES:
        for block in blocks(page):
            if block.lang in CONSOLE and block.illustrative is None:
                assert (page, block.line) in checked, (
                    f"{shown(page)}:{block.line}: no test checks this console block: check it "
                    "here (CONSOLE_CHECKS), or mark it <!-- illustrative: <why> -->"
                )


def session(block: Block) -> list[tuple[str, str]]:
    """``(command, what it prints)`` for each ``$ `` line of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"{shown(block.page)}:{block.line}: output before a command"
            steps[-1][1].append(line)
    return [(command, "\n".join(printed)) for command, printed in steps]


NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def without_numbers(text: str) -> str:
    """``text`` with every number as ``N``: latencies, durations and counts change every run."""
    return NUMBER.sub("N", text)


def with_ports(text: str, ports: dict[str, int]) -> str:
    """``text`` with the page's ports of 127.0.0.1 (``{"8000": ...}``) as the test's."""
    for documented, port in ports.items():
        text = text.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{port}")
    return text


def shown_pattern(text: str, ports: dict[str, int]) -> re.Pattern[str]:
    """A line as a page shows it: ``...`` stands for any text, ``<n> ms`` for any time, and the
    page's ports for the ones of this test."""
    pattern = ""
    for part in re.split(r"(\.\.\.|\b\d+ ms\b)", with_ports(text, ports)):
        if part == "...":
            pattern += ".*?"
        elif re.fullmatch(r"\d+ ms", part):
            pattern += r"\d+ ms"
        else:
            pattern += re.escape(part)
    return re.compile(pattern)


# -- install commands and extras -----------------------------------------------------------

#: ``.venv/bin/pip install -e .`` or ``-e '.[a,b]'``, and what a comment says it installs.
PIP_LINE = re.compile(r"\.venv/bin/pip install -e (?:\.|'\.\[([\w,-]+)\]')\s*(?:#\s*(.*))?")
#: "uvicorn 0.45+" in such a comment.
PACKAGE_VERSION = re.compile(r"([\w-]+) (\d[\w.]*)\+")
#: A page telling to install this project from the package index, where the name is another's.
FROM_THE_INDEX = re.compile(r"pip install [^`\n]*flask-status(?!` installs)")
SERVER_PACKAGES = {"gunicorn", "uvicorn", "uvicorn-worker", "waitress", "hypercorn", "gevent"}


def requirements() -> dict[str | None, dict[str, Requirement]]:
    """This project's requirements by extra (``None``: the runtime ones), by package name."""
    found: dict[str | None, dict[str, Requirement]] = {}
    for text in importlib.metadata.requires("flask-status") or []:
        requirement = Requirement(text)
        extra = re.search(r'extra == "([\w-]+)"', str(requirement.marker))
        found.setdefault(extra.group(1) if extra else None, {})[requirement.name] = requirement
    return found


def test_install_commands_install_this_project() -> None:
    """Each install line installs the clone (``-e``), with extras that exist and install the
    versions its comment names."""
    required = requirements()
    for page in PAGES:
        for block in blocks(page):
            if block.lang != "bash" or "pip install" not in block.code:
                continue
            for line in block.code.splitlines():
                if not line or line.startswith("#") or line == "python3 -m venv .venv":
                    continue
                install = PIP_LINE.fullmatch(line)
                assert install, f"{shown(page)}: `{line}`: install the clone, with -e"
                extras = [extra for extra in (install.group(1) or "").split(",") if extra]
                for extra in extras:
                    assert extra in required, f"{shown(page)}: `{line}`: no extra {extra!r}"
                for name, version in PACKAGE_VERSION.findall(install.group(2) or ""):
                    specifiers = {
                        str(required[extra][name].specifier)
                        for extra in extras
                        if name in required[extra]
                    }
                    assert specifiers == {f">={version}"}, (shown(page), line, name, specifiers)


def test_no_page_installs_this_project_from_the_index() -> None:
    """``pip install flask-status`` installs the unrelated Flask-Status 1.0.1: only the
    README's warning may say it."""
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            assert not FROM_THE_INDEX.search(line), f"{shown(page)}:{number}: {line}"


def test_a_server_is_installed_only_by_the_extras_that_say_so() -> None:
    """The README: "A server is not a dependency"; the ``uvicorn`` extra installs uvicorn,
    the ``uvicorn-worker`` extra gunicorn and uvicorn's worker class; ``dev`` everything."""
    required = requirements()
    assert set(required[None]) == {"flask", "asgiref", "anyio"}
    servers = {
        extra: sorted(SERVER_PACKAGES & set(packages))
        for extra, packages in required.items()
        if extra not in (None, "dev")
    }
    assert servers == {
        "sqlalchemy": [],
        "redis": [],
        "http": [],
        "prometheus": [],
        "otel": [],
        "uvicorn": ["uvicorn"],
        "uvicorn-worker": ["gunicorn", "uvicorn", "uvicorn-worker"],
    }
    dev = required["dev"]
    assert dev["flask-status"].extras == set(servers)
    assert SERVER_PACKAGES - {"uvicorn", "uvicorn-worker"} <= set(dev)


# -- commands of the other pages -----------------------------------------------------------


#: ``NAME=value`` before a command: an environment variable for it.
ASSIGNMENT = re.compile(r"[A-Z_]+=\S*")


def sharing_command() -> str:
    """docs/sharing.md's gunicorn command, which runs against Redis."""
    (line,) = [
        line
        for line in console_block("sharing.md", "STATUS_STORE=").code.splitlines()
        if line.startswith("STATUS_STORE=")
    ]
    return line


def test_server_command_lines_are_the_started_ones() -> None:
    """A server command anywhere is one that a test of this module starts."""
    started = {command for _, command in server_commands(README)} | {sharing_command()}
    for page in PAGES:
        for block in blocks(page):
            if block.lang not in CONSOLE or block.illustrative is not None:
                continue
            for line in block.code.splitlines():
                command = line.removeprefix("$ ")
                words = [word for word in command.split() if not ASSIGNMENT.fullmatch(word)]
                if words and words[0] in SERVERS:
                    assert command in started, f"{shown(page)}:{block.line}: `{command}`"


def test_sharing_command_serves_with_a_real_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The page's ``myapp.py`` under its gunicorn command, with a real Redis for the pod's."""
    page = DOCS / "sharing.md"
    (tmp_path / "myapp.py").write_text(app_module(page))
    command = sharing_command()
    assert "--bind 0.0.0.0:8000" in command  # for the kubelet; here the loopback only
    words = shlex.split(command.replace("0.0.0.0:8000", "127.0.0.1:{port}"))
    assignments = [word for word in words if ASSIGNMENT.fullmatch(word)]
    argv = words[len(assignments) :]
    env = dict(word.split("=", 1) for word in assignments)
    assert set(env) == {"STATUS_STORE"}
    env["STATUS_STORE"] = redis_server.url
    argv[0] = str(BIN / argv[0])
    server = ServerProcess(
        argv, tmp_path, tmp_path / "server.log", env={**env, "HOME": str(tmp_path)},
        ready_path="/readyz",
    )  # fmt: skip
    with server:
        reply = server.fetch("/readyz")
        stored = redis.Redis.from_url(redis_server.url).keys("flask-status:myapp:*")
        time.sleep(SETTLE_SECONDS)
        log = server.log()
    assert reply.status == 200, (reply, log)
    body = reply.json()
    assert (body["database"], body["status"]) == ("up", "OK"), (reply, log)
    assert b"flask-status:myapp:/readyz:database" in stored, stored  # shared through Redis
    assert trouble_in(log) == [], log


def test_redis_down_answer_is_what_sharing_md_shows(tmp_path: Path, closed_port: int) -> None:
    """With the page's Redis address refusing connections, a request answers the page's JSON."""
    page = DOCS / "sharing.md"
    (block,) = [block for block in blocks(page) if block.lang == "json" and '"store"' in block.code]
    printed = run_examples(
        page,
        tmp_path,
        then='print(app.test_client().get("/api/status").get_data(as_text=True).strip())',
        replace=("127.0.0.1:6379", f"127.0.0.1:{closed_port}"),
    )
    assert printed.splitlines()[-1] == block.code.strip().replace("6379", str(closed_port))


def test_flask_status_prints_what_cli_md_shows(tmp_path: Path) -> None:
    page = DOCS / "cli.md"
    (tmp_path / "myapp.py").write_text(app_module(page))
    steps = session(console_block("cli.md", "$ flask --app myapp status"))
    assert [command for command, _ in steps] == [
        "flask --app myapp status",
        "flask --app myapp status --url /readyz",
    ]
    for command, printed_on_page in steps:
        argv = shlex.split(command)
        result = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        printed = result.stdout.rstrip("\n")
        assert without_numbers(printed) == without_numbers(printed_on_page), printed
        assert same_shape(json.loads(printed_on_page), json.loads(printed)), printed


def probe(url: str, *options: str) -> tuple[int, str]:
    """``python -m flask_status probe``: its exit status and the line it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "flask_status", "probe", url, *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, (result.stdout + result.stderr).strip()


def test_the_probe_prints_what_the_pages_show(closed_port: int) -> None:
    """cli.md's probes of a healthy app, of the same app with its database gone, and of a
    closed port; probe.md's lines for no answer in time and for a wrong ``--timeout``."""
    database_gone = threading.Event()

    def database() -> str:
        if database_gone.is_set():
            raise sqlite3.OperationalError("unable to open database file")
        return "up"

    app = Flask(__name__)
    FlaskStatus(app).add_field("database", database)
    steps = session(console_block("cli.md", "$ python -m flask_status probe"))
    assert len(steps) == 3 and steps[2][0].endswith("--timeout 2"), steps
    with serving_in_thread(make_server("127.0.0.1", 0, app, threaded=True)) as port:
        ports = {"8000": port, "8001": closed_port}
        for (command, line), gone, expected_status in zip(
            steps, (False, True, False), (0, 1, 1), strict=True
        ):
            if gone:  # the second probe finds the database gone
                database_gone.set()
            argv = shlex.split(with_ports(command, ports))
            assert argv[:4] == ["python", "-m", "flask_status", "probe"], command
            status, printed = probe(*argv[4:])
            assert status == expected_status, printed
            assert shown_pattern(line, ports).fullmatch(printed), (line, printed)

    no_answer = console_block("probe.md", "no answer from").code.strip()
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent_port = silent.getsockname()[1]
        status, printed = probe(f"http://127.0.0.1:{silent_port}/api/status", "--timeout", "3")
    assert status == 1
    assert shown_pattern(no_answer, {"8000": silent_port}).fullmatch(printed), printed

    usage = console_block("probe.md", "python -m flask_status probe: error:").code.strip()
    assert probe("http://127.0.0.1:8000/api/status", "--timeout", "1e10") == (1, usage)


def test_metrics_are_what_prometheus_md_shows(tmp_path: Path) -> None:
    page = DOCS / "prometheus.md"
    printed = run_examples(
        page, tmp_path, then='print(client.get("/metrics").get_data(as_text=True))'
    )
    served = {without_numbers(line) for line in printed.splitlines()}
    block = console_block("prometheus.md", "# HELP flask_status_check_up")
    for line in block.code.splitlines():
        assert without_numbers(line) in served, line


# -- links and the module map --------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading (MkDocs checks its own when it builds the pages)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    in_code = False
    found = set()
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(github_anchor(line.lstrip("#")))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_reach_a_file_and_a_heading_on_github_too(page: Path) -> None:
    """MkDocs slugs headings its own way: an anchor must be the same in both."""
    text = "\n".join(
        line
        for block_free in re.split(r"^```.*?^```", page.read_text(), flags=re.S | re.M)
        for line in block_free.splitlines()
    )
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http://, https://, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{shown(page)}: {target} does not exist"
        if page.parent == DOCS:
            assert resolved.is_relative_to(DOCS), f"{shown(page)}: {target} is outside docs/"
        if anchor:
            assert anchor in anchors(resolved), f"{shown(page)}: {target}: no such heading"


def test_mkdocs_nav_lists_every_page() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*([\w-]+\.md)\s*$", config, re.MULTILINE))
    assert listed == {page.name for page in DOCS.glob("*.md")}


def test_readme_links_every_page() -> None:
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", README.read_text()))
    assert linked == {page.name for page in DOCS.glob("*.md")}


def test_module_map_lists_every_module() -> None:
    text = (DOCS / "development.md").read_text()
    listed = set(re.findall(r"^  (\w+\.py)\s", text, re.MULTILINE))
    assert listed == {path.name for path in (ROOT / "flask_status").glob("*.py")}


def test_readme_stays_short() -> None:
    assert len(README.read_bytes()) <= 15_000


def test_docs_build_strict(tmp_path: Path) -> None:
    mkdocs = BIN / "mkdocs"
    if not mkdocs.exists() and shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (the dev extra)")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
