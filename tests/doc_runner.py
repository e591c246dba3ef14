"""Run the Python examples of one documentation page: ``python doc_runner.py blocks.json``.

``blocks.json`` holds the page's path and its ``python`` blocks (each with the line of the page
it starts on), which run in order, in one namespace, as ``__main__``, so that a block may use
what an earlier one defined. Tracebacks name the page and its line numbers.

Two rules hold while they run:

- Sockets may connect to the loopback interface only: an example must not reach another host.
- A ``print(...)`` statement followed by a comment, on its own line or on the comment lines
  right below it, must print that comment: ``print(x)  # 42``. ``...`` in the comment stands
  for any text.
"""

from __future__ import annotations

import ast
import io
import json
import re
import socket
import sys
import tokenize
import types
from pathlib import Path
from typing import Any

EXPECT = "__doc_expect__"


def _loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    text = str(host)
    return text == "localhost" or text.startswith(("127.", "::ffff:127.")) or text == "::1"


def guard_network() -> None:
    """Refuse connections and name lookups for anything but the loopback interface."""
    connect, connect_ex, getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def refuse(address: Any) -> None:
        raise PermissionError(f"documentation examples may only connect to 127.0.0.1: {address!r}")

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            refuse(address)
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            refuse(address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"not resolved in documentation: {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = guarded_getaddrinfo


def comments(source: str) -> tuple[dict[int, str], set[int]]:
    """Each line's comment (without ``#``), and the lines that hold nothing but a comment."""
    texts: dict[int, str] = {}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            texts[token.start[0]] = token.string[1:].strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    return texts, set(texts) - code_lines


class ExpectPrints(ast.NodeTransformer):
    """``print(a, b)  # shown`` becomes ``__doc_expect__("shown", line, a, b)``."""

    def __init__(self, source: str) -> None:
        self.texts, self.comment_only = comments(source)

    def expected(self, end: int) -> str | None:
        parts = [self.texts[end]] if end in self.texts else []
        line = end + 1
        while line in self.comment_only:
            parts.append(self.texts[line])
            line += 1
        return " ".join(parts) if parts else None

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        call = node.value
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "print"
            and not call.keywords
            and not any(isinstance(arg, ast.Starred) for arg in call.args)
        ):
            return node
        expected = self.expected(node.end_lineno or node.lineno)
        if expected is None:
            return node
        check = ast.Call(
            func=ast.Name(EXPECT, ast.Load()),
            args=[ast.Constant(expected), ast.Constant(node.lineno), *call.args],
            keywords=[],
        )
        return ast.copy_location(ast.Expr(check), node)


def expect_printer(page: str) -> Any:
    def expect(expected: str, line: int, *values: Any) -> None:
        printed = " ".join(str(value) for value in values)
        print(printed, flush=True)
        pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
        if not re.fullmatch(pattern, printed, re.DOTALL):
            raise AssertionError(
                f"{page}:{line} printed\n  {printed}\nwhere the page shows\n  {expected}"
            )

    return expect


def main(blocks_file: str) -> None:
    spec = json.loads(Path(blocks_file).read_text())
    page: str = spec["page"]
    guard_network()
    # A fresh __main__ without __file__: Flask(__name__) then roots the app in the working
    # directory (a temporary one), not in tests/.
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    namespace = module.__dict__
    namespace[EXPECT] = expect_printer(page)
    for block in spec["blocks"]:
        source = "\n" * (block["line"] - 1) + block["code"]
        tree = ExpectPrints(source).visit(ast.parse(source, page))
        ast.fix_missing_locations(tree)
        exec(compile(tree, page, "exec"), namespace)


if __name__ == "__main__":
    main(sys.argv[1])
