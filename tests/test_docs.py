"""The documentation works as written: README.md and docs/*.md.

- Every ``python`` block runs (``doc_runner.py``): a page's blocks in order, in one namespace,
  in a fresh interpreter in a temporary directory, with sockets to 127.0.0.1 only, and each
  ``print(...)  # shown`` must print what it shows. A block that cannot run here is preceded by
  ``<!-- not run: <the reason> -->``.
- Every server command of the README and of docs/deployment.md starts for real, serving the
  page's ``myapp.py``, and logs no warning.
- What the README says ``flask status`` and ``make run`` print is what they print.
- Links between pages reach a file and a heading, and the module map lists every module.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import TESTS_DIR, ServerProcess

ROOT = TESTS_DIR.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
BIN = Path(sys.executable).parent

FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: (\S.*\S) -->$")
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
        marker = NOT_RUN.match(before)
        code = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(Block(page, index + 2, lang, code, marker.group(1) if marker else None))
        index = end + 1
    return found


def python_blocks(page: Path) -> list[Block]:
    return [block for block in blocks(page) if block.lang == "python"]


# -- Python examples -----------------------------------------------------------------------


def test_pages_are_found() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "deployment.md", "asgi.md", "usage.md"} <= names


def test_not_run_markers_give_a_reason_and_precede_a_python_block() -> None:
    for page in PAGES:
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if "not run" not in line or not line.startswith("<!--"):
                continue
            assert NOT_RUN.match(line), f"{shown(page)}:{number}: write <!-- not run: <reason> -->"
            following = lines[number] if number < len(lines) else ""
            assert following.startswith("```python"), (
                f"{shown(page)}:{number}: a not-run marker must be right above a python block"
            )


@pytest.mark.parametrize(
    "page", [page for page in PAGES if python_blocks(page)], ids=lambda page: page.name
)
def test_python_examples_run_as_written(page: Path, tmp_path: Path) -> None:
    runnable = [block for block in python_blocks(page) if block.not_run is None]
    spec = {
        "page": shown(page),
        "blocks": [{"line": block.line, "code": block.code} for block in runnable],
    }
    (tmp_path / "blocks.json").write_text(json.dumps(spec))
    result = subprocess.run(
        [sys.executable, str(TESTS_DIR / "doc_runner.py"), str(tmp_path / "blocks.json")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=PAGE_SECONDS,
    )
    assert result.returncode == 0, f"{shown(page)}:\n{result.stdout}\n{result.stderr}"


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
