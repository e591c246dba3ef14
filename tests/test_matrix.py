"""The combination matrix: features that hold together as an operator runs them.

One app (``matrix_fields.py``), served by every server form of the README (its commands, with
one worker process), with and without a real redis-server store, for each field set; each
combination is a cell. A TLS server of the test's own, on 127.0.0.1, serves every cell's
``tls`` field. A cell starts its server, waits for the background fields' first
results, then probes every kind of answer (details, anonymous, per field, ``?verbose``,
health+json, the page, a failing route, the app's own routes) from a few clients for each
phase, and then stops the server with SIGTERM. It holds when:

- a healthy field never reads failing or stale, a failing one always reads its error, a
  degraded one its value and reason; every answer has its route's status code and ``status``,
  and ``?verbose``, health+json and the page give each field its state;
- nothing answers 500, app routes included, and every request gets an answer;
- each field that is not a constant has one change event, its first state (``old`` None; its
  check's threshold holds the flaky field's failures back), and each route one, its
  ``status``: in a store cell as well, where the store announces them once for the fleet;
- after each phase no pooled connection is left checked out and no scoped session is left;
- after each phase the worker runs at most ``max_workers`` + hung fields + async fields + 10
  threads (threads are bounded by fields, never by probes), and its memory grew by at most
  20 MB during the phase;
- every check run's OpenTelemetry span (the app configures the SDK and traces its requests)
  names its field, route and criticality, and has the result the field must have; a
  background run's span is a root, a run a request started is that request's child (in each
  phase, some are), and a field shared through the cache or the store (``cache_ttl``,
  ``interval``) opens a span per run, not per request;
- the server exits within 5 s of SIGTERM, with status 0 or SIGTERM's, and its log holds no
  traceback (but the failing checks' own, which flask_status logs), before SIGTERM or after;
- a live status stream (``?watch``), opened after the warm-up and kept through the phases,
  first shows the route's document, and ends once the server is told to stop; where the
  server serves one request at a time per worker it is refused with 406 instead.

Cells run a few at a time, each on its own port, database and store prefix. A later feature
adds rows to :data:`STORES`, fields to ``matrix_fields.FIELD_SETS``, or a :data:`PHASES` entry.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import shlex
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import matrix_fields
import pytest
import trustme
from helpers import TESTS_DIR, Reply, ServerProcess, TlsServer, serving_in_thread
from matrix_fields import FIELD_SETS, MatrixField, MatrixRoute
from test_docs import BIN, DOCUMENTED_PORT, README, server_commands
from test_watch import Watcher

#: Cells served at once: the machine has 2 cores, and the phases must not starve each other.
PARALLEL_CELLS = 4
#: Clients probing each server during a phase, and the pause each makes between requests.
CLIENTS = 3
PAUSE_SECONDS = 0.02
#: How long a cell may wait for its background fields' first results.
WARM_UP_SECONDS = 10.0
#: How long after a phase its leftovers (checked-out connections, sessions) may take to go.
SETTLE_SECONDS = 3.0
#: Threads a worker may run beyond ``max_workers``, the hung fields and the async fields (whose
#: app contexts are pushed and popped in threads): the server's own.
SPARE_THREADS = 10
RSS_GROWTH_LIMIT_KIB = 20 * 1024
EXIT_LIMIT_SECONDS = 5.0
CLEAN_EXIT_CODES = {0, -signal.SIGTERM, 128 + signal.SIGTERM}
#: How much of an example answer a failure shows.
EXAMPLE_CHARS = 240

# -- the table: server forms x stores x field sets ------------------------------------------


@dataclass(frozen=True)
class ServerForm:
    """A server command of the README, serving ``matrix_app`` with one worker process."""

    name: str
    argv: tuple[str, ...]  # ``{port}`` where the port goes


def readme_server_forms() -> list[ServerForm]:
    """Each command of the README's deploy table, serving ``matrix_app`` instead of ``myapp``,
    with one worker: the worker's threads and memory are read through ``/matrix/stats``."""
    forms = []
    for name, command in server_commands(README):
        argv = shlex.split(
            command.replace(DOCUMENTED_PORT, "{port}").replace("myapp:", "matrix_app:")
        )
        argv[0] = str(BIN / argv[0])  # the server installed with the dev extra
        if "-w" in argv:
            argv[argv.index("-w") + 1] = "1"
        forms.append(ServerForm(name, tuple(argv)))
    return forms


SERVER_FORMS = readme_server_forms()
#: Whether a cell shares results through a real redis-server.
STORES = {"no store": False, "redis store": True}


@dataclass(frozen=True, repr=False)
class Cell:
    form: ServerForm
    store: str
    field_set: str

    @property
    def routes(self) -> tuple[MatrixRoute, ...]:
        return FIELD_SETS[self.field_set]

    @property
    def id(self) -> str:
        return "/".join(re.sub(r"\W+", "-", part).strip("-") for part in self.parts)

    @property
    def parts(self) -> tuple[str, str, str]:
        return self.form.name, self.store, self.field_set

    def __str__(self) -> str:
        return " | ".join(self.parts)

    __repr__ = __str__


class Problems(dict[Cell, list[str]]):
    """Each cell's problems, as lines (a short repr for pytest's report)."""

    def __repr__(self) -> str:
        return f"<the problems of {len(self)} cells>"


CELLS = [
    Cell(form, store, field_set)
    for form in SERVER_FORMS
    for store in STORES
    for field_set in FIELD_SETS
]


# -- probes: what each answer must show ----------------------------------------------------

#: A problem seen in an answer: what it is (counted across answers) and an example of it.
Seen = tuple[str, str]


@dataclass(frozen=True)
class Probe:
    """A request of a phase and what its answer must show."""

    label: str
    path: str
    verify: Callable[[Reply], list[Seen]]
    headers: Mapping[str, str] = field(default_factory=dict)


def error_problems(item: MatrixField, error: Any, entry: Any) -> list[Seen]:
    """Whether a field reads an error (``error``, from ``entry``) exactly when it is failing."""
    if item.healthy and error is not None:
        kind = str(error).split(":", 1)[0]  # "stale", "starting", an exception's name
        return [(f"field {item.key!r} (healthy) reads an error ({kind})", repr(entry))]
    if not item.healthy and not (isinstance(error, str) and error.startswith(str(item.error))):
        return [(f"field {item.key!r} (failing) does not read {item.error!r}", repr(entry))]
    return []


def entry_problems(item: MatrixField, entry: Any) -> list[Seen]:
    """What is wrong with a field's entry in a JSON body."""
    if entry is None:
        return [(f"field {item.key!r} is missing", "")]
    problems = error_problems(item, entry.get("error") if isinstance(entry, dict) else None, entry)
    if problems or not item.healthy:
        return problems
    # Thresholds may hold a failed run back: the last good value then comes with "failing";
    # a degraded value comes with its reason.
    wrapped = isinstance(entry, dict) and ("failing" in entry or "degraded" in entry)
    value = entry["value"] if wrapped else entry
    if not item.reads_value(value):
        return [(f"field {item.key!r} (healthy) reads a wrong value", repr(entry))]
    reason = entry.get("degraded") if wrapped else None
    if reason != item.degraded:
        return [(f"field {item.key!r} reads degraded {reason!r}, not {item.degraded!r}", "")]
    return []


def json_body(reply: Reply) -> dict[str, Any]:
    """The answer's JSON object; ``{}`` when it is none."""
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def status_problems(reply: Reply, code: int, status: str) -> list[Seen]:
    """Whether an answer has the status code and top-level ``status`` it must have."""
    body = json_body(reply)
    shown = body.get("status")
    if (reply.status, shown) != (code, status):
        errors = sorted(
            key for key, entry in body.items() if isinstance(entry, dict) and "error" in entry
        )
        example = f"fields with an error: {errors}" if body else repr(reply.body[:200])
        return [(f"answered {reply.status} {shown} (not {code} {status})", example)]
    return []


def details_probe(route: MatrixRoute) -> Probe:
    def verify(reply: Reply) -> list[Seen]:
        problems = status_problems(reply, route.code, route.status)
        body = json_body(reply)
        for item in route.fields:
            problems += entry_problems(item, body.get(item.key))
        unexpected = set(body) - {item.key for item in route.fields} - {"status", "cached"}
        for key in sorted(unexpected):
            problems.append((f"unexpected field {key!r}", repr(body[key])))
        return problems

    return Probe(f"{route.url} (details)", route.url, verify, matrix_fields.TOKEN)


def anonymous_probe(route: MatrixRoute) -> Probe:
    def verify(reply: Reply) -> list[Seen]:
        problems = status_problems(reply, route.code, route.status)
        if not problems and json_body(reply) != {"status": route.status}:
            problems.append(("shows details to an anonymous caller", repr(json_body(reply))))
        return problems

    return Probe(f"{route.url} (anonymous)", route.url, verify)


def field_probe(route: MatrixRoute, item: MatrixField) -> Probe:
    if item.state == "failing":
        code, status = (503, "DOWN") if item.critical else (200, "DEGRADED")
    else:
        code, status = 200, "OK" if item.state == "ok" else "DEGRADED"

    def verify(reply: Reply) -> list[Seen]:
        problems = status_problems(reply, code, status)
        if not problems:
            problems += entry_problems(item, json_body(reply).get(item.key))
        return problems

    path = f"{route.url}/{item.key}"
    return Probe(path, path, verify, matrix_fields.TOKEN)


def verbose_probe(route: MatrixRoute) -> Probe:
    def verify(reply: Reply) -> list[Seen]:
        problems = status_problems(reply, route.code, route.status)
        checks = json_body(reply).get("checks", {})
        for item in route.fields:
            entry = checks.get(item.key)
            if not isinstance(entry, dict) or not isinstance(entry.get("history"), list):
                problems.append((f"field {item.key!r} has no history", repr(entry)))
            else:
                problems += error_problems(item, entry.get("error"), entry)
                if entry.get("status") != item.state:
                    problems.append((f"field {item.key!r} reads {entry.get('status')}", ""))
        return problems

    path = f"{route.url}?verbose"
    return Probe(path, path, verify, matrix_fields.TOKEN)


HEALTH_JSON = {"pass": "OK", "warn": "DEGRADED", "fail": "DOWN"}


def health_json_probe(route: MatrixRoute) -> Probe:
    def verify(reply: Reply) -> list[Seen]:
        document = json_body(reply)
        shown = HEALTH_JSON.get(document.get("status"))
        if (reply.status, shown) != (route.code, route.status):
            return [(f"answered {reply.status} {document.get('status')}", repr(document))]
        problems: list[Seen] = []
        for item in route.fields:
            (check, *_) = document.get("checks", {}).get(item.key) or [{}]
            if check.get("status") != health_json_status(item):
                problems.append((f"field {item.key!r} reads {check.get('status')}", repr(check)))
        return problems

    headers = {**matrix_fields.TOKEN, "Accept": "application/health+json"}
    return Probe(f"{route.url} (health+json)", route.url, verify, headers)


def health_json_status(item: MatrixField) -> str:
    """A field's check status in health+json: ``warn`` when degraded or failing but not
    critical."""
    if item.state == "ok":
        return "pass"
    return "fail" if item.state == "failing" and item.critical else "warn"


#: A row of the status page: its state (class) and field.
PAGE_ROW = re.compile(r'<tr class="check (\w+)" data-check="(\w+)"')


def page_probe(route: MatrixRoute) -> Probe:
    def verify(reply: Reply) -> list[Seen]:
        content_type = reply.headers.get("content-type", "")
        if reply.status != route.code or not content_type.startswith("text/html"):
            return [(f"page answered {reply.status}", content_type)]
        rows = {key: state for state, key in PAGE_ROW.findall(reply.body.decode(errors="replace"))}
        return [
            (f"page row of {item.key!r} is {rows.get(item.key)}", "")
            for item in route.fields
            if rows.get(item.key) != item.state
        ]

    path = f"{route.url}?format=html"
    return Probe(path, path, verify, matrix_fields.TOKEN)


def app_probe(path: str, body: str, headers: Mapping[str, str] | None = None) -> Probe:
    def verify(reply: Reply) -> list[Seen]:
        if (reply.status, reply.body.decode(errors="replace")) != (200, body):
            return [(f"answered {reply.status}", reply.body[:300].decode(errors="replace"))]
        return []

    return Probe(path, path, verify, headers or {})


def status_probes(routes: Sequence[MatrixRoute]) -> list[Probe]:
    """Every kind of status answer, the answer with details most often."""
    probes: list[Probe] = []
    for route in routes:
        probes += [details_probe(route), details_probe(route), anonymous_probe(route)]
        probes += [verbose_probe(route), health_json_probe(route), page_probe(route)]
        probes += [field_probe(route, item) for item in route.fields]
    return probes


def app_probes(routes: Sequence[MatrixRoute]) -> list[Probe]:
    """The app's own routes: the request hook, the database through ``db.session``."""
    return [
        app_probe("/hello", "hello"),
        app_probe("/whoami", "operator", {"X-User": "operator"}),
        app_probe("/items", matrix_fields.SERVICE),
    ]


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    probes: Callable[[Sequence[MatrixRoute]], list[Probe]]


def every_route(routes: Sequence[MatrixRoute]) -> list[Probe]:
    return status_probes(routes) + app_probes(routes) * 3


PHASES = (
    Phase("status routes", 3.0, status_probes),
    Phase("status and app routes", 3.0, every_route),
)


# -- one cell -------------------------------------------------------------------------------


@dataclass
class Findings:
    """What a cell saw: problems in answers (counted per probe), and the others."""

    answers: Counter[str] = field(default_factory=Counter)
    problems: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    #: The check runs' spans read from ``/matrix/stats`` and not yet checked.
    spans: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, probe: Probe, seen: list[Seen]) -> None:
        with self._lock:
            self.answers[probe.label] += 1
            for what, example in seen:
                self.problems[probe.label, what] += 1
                self.examples.setdefault((probe.label, what), " ".join(example.split()))

    def note(self, problem: str) -> None:
        with self._lock:
            self.notes.append(problem)

    def report(self) -> list[str]:
        """The problems, one a line, and then the figures measured; nothing if all is well."""
        lines = [
            f"{label}: {what} in {count} of {self.answers[label]} answers, "
            f"e.g. {self.examples[label, what][:EXAMPLE_CHARS]}"
            for (label, what), count in sorted(self.problems.items())
        ] + self.notes
        if not lines:
            return []
        return [
            *lines,
            f"measured: {sum(self.answers.values())} answers; {'; '.join(self.figures)}",
        ]


def ask(server: ServerProcess, probe: Probe) -> list[Seen]:
    try:
        reply = server.fetch(probe.path, headers=probe.headers)
    except (OSError, http.client.HTTPException) as exc:
        return [("got no answer", repr(exc))]
    if reply.status == 500:
        return [("answered 500", reply.body[:300].decode(errors="replace"))]
    return probe.verify(reply)


def probe_during(
    server: ServerProcess, probes: list[Probe], seconds: float, findings: Findings
) -> None:
    """:data:`CLIENTS` clients send ``probes`` in turn for ``seconds``."""
    turn = itertools.cycle(probes)
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                probe = next(turn)
            findings.answer(probe, ask(server, probe))
            time.sleep(PAUSE_SECONDS)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def stats(server: ServerProcess, findings: Findings) -> dict[str, Any]:
    """The worker's figures; the spans finished since the last read go to ``findings``."""
    reply = server.fetch("/matrix/stats")
    assert reply.status == 200, reply
    now = dict(reply.json())
    findings.spans += now.pop("spans")
    return now


def warm_up(server: ServerProcess, cell: Cell, findings: Findings) -> None:
    """Wait for the first result of every field, then send every probe once (unchecked), so
    that what a phase measures does not include first imports and caches."""
    deadline = time.monotonic() + WARM_UP_SECONDS
    for route in cell.routes:
        while True:
            body = json_body(server.fetch(route.url, headers=matrix_fields.TOKEN))
            starting = [key for key, entry in body.items() if "starting:" in json.dumps(entry)]
            if not starting:
                break
            if time.monotonic() > deadline:
                findings.note(f"warm-up: {starting} still starting after {WARM_UP_SECONDS:g}s")
                break
            time.sleep(0.1)
    for phase in PHASES:
        for probe in phase.probes(cell.routes):
            server.fetch(probe.path, headers=probe.headers)


def check_after_phase(
    server: ServerProcess, cell: Cell, phase: Phase, before: dict[str, int], findings: Findings
) -> dict[str, int]:
    """Leftovers, threads and memory once the phase's probes are done: the stats read then."""
    deadline = time.monotonic() + SETTLE_SECONDS
    now = stats(server, findings)
    while (now["checked_out"] or now["sessions"]) and time.monotonic() < deadline:
        time.sleep(0.1)
        now = stats(server, findings)
    after = f"after phase {phase.name!r}"
    if now["checked_out"] or now["sessions"]:
        findings.note(
            f"{after}: {now['checked_out']} pooled connections checked out and "
            f"{now['sessions']} scoped sessions left, {SETTLE_SECONDS:g}s after the last probe"
        )
    hung = sum(item.hangs for route in cell.routes for item in route.fields)
    limit = matrix_fields.MAX_WORKERS + hung + now["async_fields"] + SPARE_THREADS
    if now["threads"] > limit:
        findings.note(
            f"{after}: {now['threads']} threads, more than max_workers "
            f"{matrix_fields.MAX_WORKERS} + {hung} hung + {now['async_fields']} async fields + "
            f"{SPARE_THREADS}"
        )
    growth = now["rss_kib"] - before["rss_kib"]
    findings.figures.append(
        f"{after}: {now['threads']} threads, RSS {growth / 1024:+.1f} MB, "
        f"{now['checked_out']} checked out, {now['sessions']} sessions"
    )
    if growth > RSS_GROWTH_LIMIT_KIB:
        findings.note(
            f"{after}: RSS grew by {growth / 1024:.1f} MB "
            f"({before['rss_kib']} -> {now['rss_kib']} KiB)"
        )
    return now


def event_problems(cell: Cell, events: list[list[str | None]]) -> list[str]:
    """What is wrong with the change events the worker announced, after every phase."""
    problems = []
    for route in cell.routes:
        expected: dict[str | None, list[list[str | None]]] = {
            item.key: [[None, item.state]] for item in route.fields if not item.constant
        }
        expected[None] = [[None, route.status]]
        for key, changes in expected.items():
            seen = [[old, new] for url, k, old, new in events if (url, k) == (route.url, key)]
            if seen != changes:
                what = "the route" if key is None else f"field {key!r}"
                problems.append(f"events: {route.url} {what} announced {seen}, not {changes}")
    return problems


CHECK_SPAN = "status check "
#: ``health_check.result`` of a run that failed (the span's status is then ERROR).
FAILED_RESULTS = {"failing", "timed_out"}


def expected_results(item: MatrixField) -> set[str]:
    """The results a run of ``item`` may have: a field whose thresholds hold back failed runs
    (the flaky one) may fail some while it reads healthy."""
    if item.hangs:
        return {"timed_out"}
    if item.state in ("degraded", "skipped"):
        return {item.state}
    if not item.healthy:
        return {"failing"}
    if item.options.get("failure_threshold", 1) > 1:
        return {"ok", "failing"}
    return {"ok"}


def run_span_problems(item: MatrixField, span: dict[str, Any]) -> list[str]:
    attributes = span["attributes"]
    result = attributes.get("health_check.result")
    problems = []
    if span["name"] != CHECK_SPAN + item.key:
        problems.append(f"named {span['name']!r}")
    if attributes.get("health_check.critical") != item.options.get("critical", True):
        problems.append(f"health_check.critical {attributes.get('health_check.critical')}")
    if result not in expected_results(item):
        problems.append(f"health_check.result {result!r}")
    if (span["status"] == "ERROR") != (result in FAILED_RESULTS) or (
        ("error.type" in attributes) != (result in FAILED_RESULTS)
    ):
        problems.append(f"status {span['status']} and error.type with result {result!r}")
    background = "interval" in item.options
    if span["parent"] not in ({"none"} if background else {"none", "request"}):
        problems.append(f"parent: {span['parent']} (background: {background})")
    return problems


def check_spans(cell: Cell, findings: Findings, when: str, seconds: float | None) -> None:
    """The spans of the runs since the last check: each as its field's (above); and, over
    ``seconds`` (None: not timed), a field shared through the cache or the store opens at most
    one span per period, however many requests read it."""
    fields = {(route.url, item.key): item for route in cell.routes for item in route.fields}
    runs: Counter[tuple[str, str]] = Counter()
    children = 0
    for span in findings.spans:
        attributes = span["attributes"]
        where = (attributes.get("health_check.route"), attributes.get("health_check.name"))
        item = fields.get(where)  # type: ignore[arg-type]
        if item is None:
            findings.note(f"{when}: a span of no field: {span}")
            continue
        runs[where] += 1  # type: ignore[index]
        children += span["parent"] == "request"
        for problem in run_span_problems(item, span):
            findings.note(f"{when}: span of {where}: {problem}: {span}")
    findings.figures.append(f"{when}: {sum(runs.values())} run spans, {children} of requests")
    findings.spans.clear()
    if seconds is None:
        return
    if not children:
        findings.note(f"{when}: no run span is the child of a request's span")
    for (url, key), count in runs.items():
        item = fields[url, key]
        period = item.options.get("interval") or item.options.get("cache_ttl")
        if period and count > seconds / period + 2:
            findings.note(
                f"{when}: {count} run spans of {url} {key} in {seconds:.1f}s (period {period}s)"
            )


#: The server forms whose workers serve one request at a time: they refuse live streams.
SYNC_WORKERS = {"gunicorn, sync workers"}


class CellWatcher:
    """A live status stream of the cell's first route, read in a thread from the warm-up to
    the server's stop."""

    def __init__(self, server: ServerProcess, cell: Cell, findings: Findings) -> None:
        self.route = cell.routes[0]
        self.refused = cell.form.name in SYNC_WORKERS
        self.findings = findings
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.ending = "not ended"
        self.watcher = Watcher(server.port, f"{self.route.url}?watch", **matrix_fields.TOKEN)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        if not self.opened.wait(WARM_UP_SECONDS):
            findings.note("watch: no first document")

    def _read(self) -> None:
        try:
            self._check_first()
            if self.watcher.status == 200:
                events = self.watcher.rest()
                ended = bool(events) and events[-1].name == "end"
                self.ending = events[-1].data if ended else "cut"  # (waitress dies at once)
        except Exception as exc:  # reported with the cell
            self.findings.note(f"watch: {exc!r}")
        finally:
            self.opened.set()
            self.ended.set()
            self.watcher.close()

    def _check_first(self) -> None:
        status = self.watcher.status
        if self.refused:
            self.watcher.response.read()
            error = json_body(Reply(status, {}, self.watcher.response.content)).get("error", "")
            if status != 406 or "watch_sync_workers" not in error:
                self.findings.note(f"watch: answered {status} {error!r}, not 406")
            return
        if status != 200:
            self.findings.note(f"watch: answered {status}, not 200")
            return
        document = self.watcher.document()
        self.opened.set()
        problems = [] if document.get("status") == self.route.status else [("status", "")]
        for item in self.route.fields:
            problems += entry_problems(item, document.get(item.key))
        for what, example in problems:
            self.findings.note(f"watch: the first document: {what} {example}")

    def check_end(self, seconds: float) -> None:
        """After the server's stop: the stream must have ended (within ``seconds``)."""
        if not self.ended.wait(seconds):
            self.findings.note(f"watch: the stream did not end within {seconds:g}s of SIGTERM")
        elif not self.refused and self.ending not in ('{"reason": "stopping"}', "cut"):
            self.findings.note(f"watch: the stream ended with {self.ending}")


def stop(server: ServerProcess, findings: Findings) -> None:
    """SIGTERM; the exit must be quick, with a clean status, and the log show no traceback."""
    logged_before = len(server.log())
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    code = server.wait()  # kills the server's process group after 10 s
    seconds = time.monotonic() - started
    if seconds > EXIT_LIMIT_SECONDS:
        findings.note(
            f"exit: {seconds:.1f}s after SIGTERM (limit {EXIT_LIMIT_SECONDS:g}s), status {code}"
        )
    elif code not in CLEAN_EXIT_CODES:
        findings.note(f"exit: status {code} after SIGTERM")
    log = server.log()
    for when, part in (
        ("while serving", log[:logged_before]),
        ("once told to stop", log[logged_before:]),
    ):
        errors = Counter(tracebacks(part))
        if errors:
            findings.note(f"log: {errors.total()} tracebacks {when}: {errors.most_common(3)}")


#: The record flask_status logs, with its traceback, when a check fails: expected here.
CHECK_FAILED = re.compile(r"ERROR.*\bstatus field '\w+' failed: ")
#: The line between two tracebacks of one chain of exceptions.
CHAINED = re.compile(r"^(During handling of the above exception|The above exception was)")


def tracebacks(log: str) -> list[str]:
    """The exception (the last line) of each traceback in ``log`` and each unraisable
    exception, except the tracebacks that flask_status logs for checks that failed."""
    lines = log.splitlines()
    found: list[str] = []
    expected = False
    for number, line in enumerate(lines):
        if line.startswith("Exception ignored"):
            found.append(line)
        if not line.startswith("Traceback"):
            continue
        before = [text for text in lines[max(0, number - 2) : number] if text.strip()]
        chained = bool(before) and bool(CHAINED.match(before[-1]))
        if not chained:
            expected = bool(before) and bool(CHECK_FAILED.search(before[-1]))
        if not expected:
            rest = lines[number + 1 :]
            found.append(next((end for end in rest if end and not end[0].isspace()), line))
    return found


def run_cell(
    cell: Cell, directory: Path, redis_url: str | None, tls_env: Mapping[str, str]
) -> list[str]:
    """Serve the cell, probe it phase by phase, stop it: the problems seen, as lines."""
    env = {
        **tls_env,
        matrix_fields.FIELD_SET_ENV: cell.field_set,
        matrix_fields.DATABASE_ENV: str(directory / "matrix.db"),
        matrix_fields.STORE_ENV: redis_url or "",
        matrix_fields.PREFIX_ENV: f"matrix:{cell.id}",
        # gunicorn's control socket lives under $HOME: one of its own, apart from other cells.
        "HOME": str(directory),
    }
    server = ServerProcess(list(cell.form.argv), TESTS_DIR, directory / "server.log", env)
    findings = Findings()
    try:
        server.start()
    except RuntimeError as exc:
        return [f"did not start: {exc}"]
    watcher: CellWatcher | None = None
    try:
        warm_up(server, cell, findings)
        watcher = CellWatcher(server, cell, findings)
        before = stats(server, findings)
        check_spans(cell, findings, "warm-up", None)
        for phase in PHASES:
            started = time.monotonic()
            probe_during(server, phase.probes(cell.routes), phase.seconds, findings)
            before = check_after_phase(server, cell, phase, before, findings)
            check_spans(cell, findings, phase.name, time.monotonic() - started)
        findings.notes += event_problems(cell, stats(server, findings)["events"])
    except Exception as exc:  # this cell's failure, reported with it, not the other cells'
        findings.note(f"the cell stopped early: {exc!r}")
    finally:
        stop(server, findings)
        if watcher is not None:
            watcher.check_end(EXIT_LIMIT_SECONDS)
    problems = findings.report()
    return [*problems, f"server log: {server.log_path}"] if problems else []


# -- the matrix -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Problems:
    """Runs every cell this session selected, :data:`PARALLEL_CELLS` at a time: each cell's
    problems."""
    selected = [
        item.callspec.params["cell"]
        for item in request.session.items
        if getattr(item, "function", None) is test_cell and hasattr(item, "callspec")
    ]
    if not has_redis_server():  # those cells skip
        selected = [cell for cell in selected if not STORES[cell.store]]
    redis_url = None
    if any(STORES[cell.store] for cell in selected):
        redis_url = f"redis://127.0.0.1:{request.getfixturevalue('redis_port')}/0"

    tls_ca = trustme.CA()
    tls_ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(tls_ca_file))
    expires = datetime.now(timezone.utc) + timedelta(days=matrix_fields.TLS_DAYS_LEFT, hours=12)
    certificate = tls_ca.issue_cert("127.0.0.1", not_after=expires)

    with serving_in_thread(TlsServer(certificate)) as tls_port:
        tls_env = {
            matrix_fields.TLS_PORT_ENV: str(tls_port),
            matrix_fields.TLS_CA_ENV: str(tls_ca_file),
        }

        def run(cell: Cell) -> list[str]:
            directory = tmp_path_factory.mktemp(cell.id.replace("/", "_"))
            return run_cell(cell, directory, redis_url if STORES[cell.store] else None, tls_env)

        with ThreadPoolExecutor(PARALLEL_CELLS) as pool:
            return Problems(zip(selected, pool.map(run, selected), strict=True))


def has_redis_server() -> bool:
    return shutil.which("redis-server") is not None


@pytest.mark.parametrize("cell", CELLS, ids=[cell.id for cell in CELLS])
def test_cell(cell: Cell, request: pytest.FixtureRequest) -> None:
    if STORES[cell.store] and not has_redis_server():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    matrix: Problems = request.getfixturevalue("matrix")
    problems = matrix[cell]
    assert not problems, f"{cell}:\n  " + "\n  ".join(problems)


def test_the_matrix_covers_every_server_form_of_the_readme() -> None:
    assert len(SERVER_FORMS) == 7
    for form in SERVER_FORMS:
        assert any("matrix_app:" in arg for arg in form.argv), form
    assert len(CELLS) == len(SERVER_FORMS) * len(STORES) * len(FIELD_SETS)
