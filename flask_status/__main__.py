"""Command line: ``python -m flask_status probe URL [--timeout S]``.

Each command is a subparser whose ``run`` returns the exit status, so more commands can sit
beside ``probe``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from .fields import MAX_SECONDS, check_seconds
from .probe import DEFAULT_TIMEOUT, probe

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


class _Parser(argparse.ArgumentParser):
    """Exits 1 on a bad command line: Docker reserves exit status 2 of a HEALTHCHECK.

    The error is one line, as everything the probe prints: a health log keeps it whole.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_UNHEALTHY, f"{self.prog}: error: {message} (see --help)\n")


def _seconds(text: str) -> float:
    """A ``--timeout`` value: finite, above 0 and at most one day."""
    try:
        return check_seconds("--timeout", float(text))
    except ValueError:  # not a number, or out of range: one message for both
        raise argparse.ArgumentTypeError(
            f"expected seconds above 0 and at most {MAX_SECONDS} (one day), got {text!r}"
        ) from None


def _run_probe(args: argparse.Namespace) -> int:
    result = probe(args.url, timeout=args.timeout)
    print(result.message, file=sys.stdout if result.healthy else sys.stderr)
    return EXIT_HEALTHY if result.healthy else EXIT_UNHEALTHY


def _add_probe(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "probe",
        help="exit 0 if URL answers 2xx, else 1 (for Docker HEALTHCHECK)",
        description="GET URL; exit 0 on a 2xx answer, 1 on anything else, printing why.",
    )
    parser.add_argument(
        "url", metavar="URL", help="the status URL, e.g. http://127.0.0.1:8000/api/status"
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds the whole probe may take, at most one day (default {DEFAULT_TIMEOUT:g})",
    )
    parser.set_defaults(run=_run_probe)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m flask_status", description="flask-status tools.")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    _add_probe(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
