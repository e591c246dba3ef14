"""What one status request costs, stage by stage: the cost table (``run.py costs``).

The 5 sync + 5 async trivial checks (``apps.TRIVIAL_MIXED``), on two paths, each alone (one
request at a time) and under load (32 requests at once):

- WSGI: Flask's WSGI app called directly (the evaluation goes through the process's portal
  loop); under load, from 32 threads.
- middleware: ``StatusMiddleware(WsgiToAsgi(app), app)``, called by a minimal ASGI caller on
  one asyncio loop in the main thread, as uvicorn's; under load, 32 calls at once.

Each case is measured twice. First without a profiler: the CPU time of the process (all its
threads, ``time.process_time``) per request, the median of ``ROUNDS`` rounds. Then under
yappi with its CPU clock: each function's own time (``tsub``), by caller, is put in a stage by
``RULES``. The profiler inflates every call, unevenly; so only each stage's *share* of the
profiled CPU time is kept, and the microseconds shown are those shares of the unprofiled CPU
time per request. Code of flask_status that no rule names lands in its own row, "flask_status,
unattributed", never in another stage: when the engine's functions are renamed, that row grows
and says the rules need a look (``costs.py --functions`` lists each function's stage).

``.venv/bin/python benchmarks/run.py costs`` measures it as scenario 17 of ``make bench``, which
prints the table after its main one; ``.venv/bin/python benchmarks/costs.py`` prints it alone
(``--functions`` also lists each case's costliest functions and their stages).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from apps import STATUS_GET_SCOPE, TRIVIAL_MIXED, URL, build
from report import CONTENDERS, OURS, Row, not_run, seconds

TITLE = (
    "17. What a status request costs: 5 sync + 5 async trivial checks, in process, "
    "stage by stage (yappi, CPU clock)"
)

#: Requests per case timed without the profiler (in ``ROUNDS`` rounds: the median round's CPU
#: time per request is kept), and with it (slower: fewer).
REQUESTS = 640
ROUNDS = 5
PROFILED_REQUESTS = 320
#: Requests at once, under load: wrk's connections in scenario 9.
CONCURRENCY = 32
WARMUP_REQUESTS = 100

# -- stages --------------------------------------------------------------------------------

REQUEST_CONTEXT = "Flask request context (environ, routing, contexts, hooks, finalize)"
ACCESS = "authenticator and access decision"
SETUP = "evaluation setup (fields, runs, joining runs in flight)"
TASKS = "tasks and cancel scopes (anyio task group, scopes, events)"
HOP = "thread hop for sync checks (anyio.to_thread, its worker threads, the limiter)"
PORTAL = "anyio's blocking portal (WSGI: the request to the loop; middleware: the sync hop)"
CHECKS = "the checks themselves, each in its app context"
COLLECT = "collecting outcomes (finishing runs; listeners: history, metrics, events)"
RENDER = "rendering and JSON (document, health, response body)"
SEND = "the ASGI send"
UNATTRIBUTED = "flask_status, unattributed"
LOOP = "other: the event loop (asyncio's own scheduling, select)"
OTHER = "other: the test driver, the interpreter, helpers seen without a caller"

STAGES = [REQUEST_CONTEXT, ACCESS, SETUP, TASKS, HOP, PORTAL, CHECKS, COLLECT, RENDER, SEND]
ROWS = [*STAGES, UNATTRIBUTED, LOOP, OTHER]


@dataclass(frozen=True)
class Rule:
    """Own time of a function whose module path contains ``module`` and whose name matches
    ``name``, called from a function whose ``module:name`` matches ``caller``, belongs to
    ``stage``."""

    stage: str
    module: str
    name: str = ""
    caller: str = ""

    def matches(self, module: str, name: str, caller: str) -> bool:
        return (
            self.module in module
            and re.search(self.name, name) is not None
            and re.search(self.caller, caller) is not None
        )


#: First match wins. Module paths use "/" (``flask_status/engine.py``); names are yappi's
#: (``Class.method`` or ``function``); the caller is the calling function's ``module:name``
#: (empty where the profiler saw no caller: a thread's or a resumed coroutine's first frame).
def named(*names: str) -> str:
    """A pattern matching exactly the function names given."""
    return "^(?:" + "|".join(re.escape(name) for name in names) + ")$"


RULES = [
    # flask_status: a module of one stage by its path; the others function by function, so
    # that a function renamed or added there lands in "flask_status, unattributed".
    Rule(ACCESS, "flask_status/details.py"),
    Rule(RENDER, "flask_status/formats.py"),
    Rule(RENDER, "flask_status/render.py"),
    Rule(RENDER, "flask_status/aggregate.py"),
    Rule(CHECKS, "flask_status/appcontext.py"),
    Rule(HOP, "flask_status/threads.py"),
    Rule(COLLECT, "flask_status/outcome.py"),
    Rule(COLLECT, "flask_status/history.py"),
    Rule(COLLECT, "flask_status/events.py"),
    Rule(COLLECT, "flask_status/telemetry.py"),
    Rule(COLLECT, "flask_status/watch.py"),
    Rule(COLLECT, "flask_status/thresholds.py"),
    Rule(COLLECT, "flask_status/store.py", named("Freshness.of", "Freshness.longest")),
    Rule(SETUP, "flask_status/background.py", named("BackgroundRuns.ensure")),
    Rule(ACCESS, "flask_status/route.py", named("_guarded", "_dispatched_as_sync")),
    Rule(
        SETUP,
        "flask_status/route.py",
        named(
            "status_ping",
            "StatusRoute.views",
            "StatusRoute.pending",
            "StatusRoute.readiness_state",
            "StatusRoute._gate_error",
            "StatusRoute._gated",
            "StatusRoute.respond_blocking",
            "StatusRoute.respond",
            "Pending.evaluated",
            "_wants_stream",
            "_callables",
        ),
    ),
    Rule(
        RENDER,
        "flask_status/route.py",
        named("StatusRoute.fill", "StatusRoute._shown", "StatusRoute._health_of", "_health"),
    ),
    Rule(RENDER, "flask_status/route.py", named("no_store")),
    Rule(
        REQUEST_CONTEXT,
        "flask_status/asgi.py",
        named(
            "StatusMiddleware.__call__",
            "StatusMiddleware._is_status_request",
            "StatusMiddleware._serve",
            "StatusRoutes.serves",
            "AppCode.placement",
            "Placement.run",
            "Placement.wait",
            "Exchange.__init__",
            "Exchange.begin",
            "Exchange.waits",
            "Exchange.wait",
            "Exchange.finish",
            "Exchange._handled",
            "Exchange.tear_down",
            "_own_wsgi_app",
            "_path_info",
            "_read_body",
            "_environ",
        ),
    ),
    Rule(SEND, "flask_status/asgi.py", named("_respond")),
    Rule(HOP, "flask_status/loop.py", named("run_sync", "PortalLoop.run_in_thread")),
    Rule(PORTAL, "flask_status/loop.py", named("PortalLoop.call", "PortalLoop._running_host")),
    Rule(
        SETUP,
        "flask_status/engine.py",
        named(
            "Evaluator.evaluate",
            "Evaluator.latest_background",
            "Evaluator._run_on_request",
            "Evaluator._reusable",
            "Evaluator._start",
            "Evaluator._state",
            "Evaluator._timeout",
            "Evaluator.current",
            "_was_quick",
        ),
    ),
    Rule(
        TASKS,
        "flask_status/engine.py",
        named(
            "Evaluator._host",
            "Evaluator._host_together",
            "Evaluator._run_batch",
            "_wait",
            "Evaluator._wait",
        ),
    ),
    Rule(
        CHECKS,
        "flask_status/engine.py",
        named(
            "Evaluator._execute",
            "Evaluator._open_span",
            "Evaluator._await",
            "Evaluator._awaited",
            "Evaluator._call_all",
            "Evaluator._running",
            "Evaluator._sharing_of",
            "_awaitable",
        ),
    ),
    Rule(
        COLLECT,
        "flask_status/engine.py",
        named(
            "Evaluator._checked",
            "Evaluator._failed",
            "Evaluator._finish",
            "Evaluator._run_ahead",
            "Evaluator._tell",
            "Evaluator._damped",
            "Evaluator._log",
            "Evaluator._freshness",
            "Evaluator._shared",
            "Run.result",
        ),
    ),
    # The checks of this benchmark's app.
    Rule(CHECKS, "benchmarks/apps.py", r"Checks\.(sync|async_)"),
    # Flask's app context of a check (entered by flask_status with ``with``; a request
    # context pushes its own directly), and what its push and pop call: signals, which one
    # request's app context sends too (1 of 11 per request is the request's).
    Rule(CHECKS, "flask/ctx.py", r"AppContext\.", r"flask_status/|AppContext\.__(enter|exit)__"),
    Rule(CHECKS, "flask/", "", r"own_app_context"),
    Rule(CHECKS, "blinker/", "", r"AppContext\.(push|pop)$"),
    # The libraries under flask_status.
    Rule(RENDER, "flask/json"),
    Rule(RENDER, "/json/"),
    Rule(RENDER, "werkzeug/", r"Response\.|Headers\.", r"fill|render|json"),
    Rule(REQUEST_CONTEXT, "flask/"),
    Rule(REQUEST_CONTEXT, "werkzeug/"),
    Rule(REQUEST_CONTEXT, "asgiref/"),
    Rule(REQUEST_CONTEXT, "blinker/"),
    Rule(HOP, "anyio/to_thread.py"),
    Rule(HOP, "anyio/_backends/_asyncio.py", r"WorkerThread|run_sync_in_worker_thread"),
    Rule(HOP, "anyio/_backends/_asyncio.py", r"run_sync_from_thread|check_cancelled"),
    Rule(HOP, "anyio/_core/_synchronization.py", r"CapacityLimiter"),
    Rule(HOP, "anyio/_backends/_asyncio.py", r"CapacityLimiter"),
    Rule(PORTAL, "anyio/from_thread.py"),
    Rule(PORTAL, "concurrent/futures/"),
    Rule(HOP, "/threading.py"),
    Rule(HOP, "/queue.py"),
    Rule(TASKS, "anyio/"),
    Rule(TASKS, "sniffio/"),
    Rule(COLLECT, "opentelemetry/"),
    # asyncio: what anyio asks of it (current task, new tasks, events) is anyio's; the rest is
    # the loop running callbacks and waiting.
    Rule(HOP, "asyncio/", "", r"anyio/to_thread|WorkerThread|run_sync_in_worker_thread"),
    Rule(TASKS, "asyncio/", "", r"anyio/|sniffio/"),
    Rule(LOOP, "asyncio/"),
    Rule(LOOP, "/selectors.py"),
]


#: Helpers of the standard library (and the ``__init__`` of dataclasses, made from a string)
#: whose own time belongs to their caller's stage.
HELPERS = re.compile(
    r"/(weakref|_weakrefset|inspect|typing|functools|contextlib|enum|copy|dataclasses)\.py$"
    r"|^<string>$|^<frozen abc>$"
)
#: So do comprehensions and lambdas, wherever they are.
INLINE = re.compile(r"^<(genexpr|listcomp|dictcomp|setcomp|lambda)>$")


def stage_of(module: str, name: str, caller: str = "") -> str:
    """The stage a function's own time belongs to (called from ``caller``, a ``module:name``).

    A helper's, a comprehension's or a lambda's is its caller's (one level up: one called by
    another is "other").
    """
    if HELPERS.search(module) or INLINE.match(name):
        caller_module, _, caller_name = caller.rpartition(":")
        if not caller_module or HELPERS.search(caller_module):
            return OTHER
        return stage_of(caller_module, caller_name)
    for rule in RULES:
        if rule.matches(module, name, caller):
            return rule.stage
    return UNATTRIBUTED if "flask_status/" in module else OTHER


# -- the paths -----------------------------------------------------------------------------


def wsgi_app() -> Callable[[], None]:
    """One request through Flask's WSGI app, checked to answer 200."""
    app, _ = build("flask-status", TRIVIAL_MIXED)
    base = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": URL,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }

    def request() -> None:
        started: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            started.append(status)
            return None

        body = app.wsgi_app({**base, "wsgi.input": io.BytesIO()}, start_response)
        try:
            b"".join(body)
        finally:
            body.close()  # type: ignore[attr-defined]
        if started != ["200 OK"]:
            raise RuntimeError(f"the status route answered {started}")

    return request


def asgi_app() -> Any:
    """``StatusMiddleware(WsgiToAsgi(app), app)``, as uvicorn serves it in scenario 9."""
    from asgi_app import flask_status

    return flask_status(TRIVIAL_MIXED)


async def asgi_request(app: Any) -> None:
    """One request through ``app``, as a minimal ASGI server sends it, checked to answer 200."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(dict(STATUS_GET_SCOPE), receive, send)
    if not sent or sent[0].get("status") != 200:
        raise RuntimeError(f"the status route answered {sent[:1]}")


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Measured:
    """One case: CPU time per request without the profiler, and the profiled own time of each
    stage (and of each function, for ``--functions``)."""

    cpu_per_request: float
    stages: dict[str, float]
    functions: list[tuple[float, str, str]]  # (own time, stage, function)


def start_profiler() -> None:
    import yappi

    yappi.clear_stats()
    yappi.set_clock_type("cpu")
    yappi.start(builtins=False, profile_threads=True)


def profiled() -> tuple[dict[str, float], list[tuple[float, str, str]]]:
    """Own CPU time of every function since :func:`start_profiler`, by stage and by
    function."""
    import yappi

    yappi.stop()
    stats = yappi.get_func_stats()
    # Own time of each function by caller, where the profiler saw its callers.
    # (By full name: yappi merges the entries of one function, and a child's index may name
    # an entry merged away.)
    by_caller: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for caller in stats:
        for child in caller.children:
            by_caller[child.full_name].append((_key(caller.module, caller.name), child.tsub))
    stages: dict[str, float] = defaultdict(float)
    functions: dict[tuple[str, str], float] = defaultdict(float)
    for function in stats:
        module = function.module.replace("\\", "/")
        shares = by_caller.get(function.full_name, [])
        rest = function.tsub - sum(tsub for _, tsub in shares)
        for caller, tsub in [*shares, ("", max(rest, 0.0))]:
            stage = stage_of(module, function.name, caller)
            stages[stage] += tsub
            functions[stage, _where(module, function.name)] += tsub
    yappi.clear_stats()
    listed = sorted(
        ((tsub, stage, where) for (stage, where), tsub in functions.items()), reverse=True
    )
    return dict(stages), listed


def _key(module: str, name: str) -> str:
    return f"{module.replace(chr(92), '/')}:{name}"


def _where(module: str, name: str) -> str:
    for root in ("site-packages/", "/lib/python3"):
        if root in module:
            module = module.split(root, 1)[1]
    return f"{module.split('wt-costs/')[-1]}:{name}"


def measure_wsgi(concurrency: int, requests: int, profiled_requests: int) -> Measured:
    request = wsgi_app()
    for _ in range(WARMUP_REQUESTS):
        request()
    in_threads(request, concurrency, concurrency)  # each thread's first request, once
    cpu = statistics.median(
        cpu_per_request(partial(in_threads, request, concurrency), round_requests)
        for round_requests in _rounds(requests, concurrency)
    )
    start_profiler()
    in_threads(request, concurrency, profiled_requests)
    return Measured(cpu, *profiled())


def in_threads(request: Callable[[], None], concurrency: int, requests: int) -> None:
    """``requests`` requests, from ``concurrency`` threads at once (this one when 1)."""
    if concurrency == 1:
        for _ in range(requests):
            request()
        return
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(requests // concurrency):
                request()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def measure_asgi(concurrency: int, requests: int, profiled_requests: int) -> Measured:
    app = asgi_app()

    async def run(requests: int) -> None:
        """``requests`` requests, ``concurrency`` at once."""

        async def one_after_another() -> None:
            for _ in range(requests // concurrency):
                await asgi_request(app)

        await asyncio.gather(*(one_after_another() for _ in range(concurrency)))

    async def session() -> Measured:
        await run(WARMUP_REQUESTS)
        timed = []
        for round_requests in _rounds(requests, concurrency):
            started = time.process_time()
            await run(round_requests)
            timed.append((time.process_time() - started) / round_requests)
        start_profiler()
        await run(profiled_requests)
        return Measured(statistics.median(timed), *profiled())

    return asyncio.run(session())


def cpu_per_request(run: Callable[[int], None], requests: int) -> float:
    """CPU time of this process (all its threads) per request, over ``run(requests)``."""
    started = time.process_time()
    run(requests)
    return (time.process_time() - started) / requests


def _rounds(requests: int, concurrency: int) -> list[int]:
    """``requests`` in ``ROUNDS`` rounds, each a multiple of ``concurrency``."""
    per_round = max(requests // ROUNDS // concurrency, 1) * concurrency
    return [per_round] * ROUNDS


@dataclass(frozen=True)
class Case:
    path: str
    concurrency: int
    measure: Callable[[int, int, int], Measured]

    @property
    def label(self) -> str:
        load = "alone" if self.concurrency == 1 else f"{self.concurrency} at once"
        return f"{self.path}, {load}"


CASES = [
    Case("WSGI (portal)", 1, measure_wsgi),
    Case("WSGI (portal)", CONCURRENCY, measure_wsgi),
    Case("middleware", 1, measure_asgi),
    Case("middleware", CONCURRENCY, measure_asgi),
]


def measure_all(
    requests: int = REQUESTS, profiled_requests: int = PROFILED_REQUESTS
) -> list[tuple[Case, Measured]]:
    """Every case, one after another."""
    return [(case, case.measure(case.concurrency, requests, profiled_requests)) for case in CASES]


# -- the table -----------------------------------------------------------------------------


def table(measured: list[tuple[Case, Measured]]) -> str:
    """Microseconds of CPU per request, per stage (rows) and case (columns)."""
    header = "| stage | " + " | ".join(case.label for case, _ in measured) + " |"
    lines = [header, "| --- |" + " ---: |" * len(measured)]
    columns = [_microseconds(one) for _, one in measured]
    for row in ROWS:
        cells = [
            _cell(column.get(row, 0.0), one)
            for column, (_, one) in zip(columns, measured, strict=True)
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    total = " | ".join(f"**{one.cpu_per_request * 1e6:.0f}**" for _, one in measured)
    lines.append(f"| **CPU per request, measured without the profiler** | {total} |")
    return "\n".join(lines)


def _microseconds(one: Measured) -> dict[str, float]:
    profiled_total = sum(one.stages.values())
    return {
        stage: own / profiled_total * one.cpu_per_request * 1e6 for stage, own in one.stages.items()
    }


def _cell(microseconds: float, one: Measured) -> str:
    share = microseconds / (one.cpu_per_request * 1e6)
    return f"{microseconds:.0f} ({share:.0%})"


def functions_listing(measured: list[tuple[Case, Measured]], top: int = 40) -> str:
    lines = []
    for case, one in measured:
        total = sum(one.stages.values())
        lines.append(f"\n{case.label}: the {top} functions of most own time (profiled share)")
        for tsub, stage, where in one.functions[:top]:
            lines.append(f"  {tsub / total:6.1%}  {stage.split(' (')[0]:<36} {where}")
    return "\n".join(lines)


NOTE = (
    "In one process: WSGI is Flask's WSGI app called directly, its evaluation on the process's "
    "portal loop (under load, from 32 threads); the middleware is "
    "`StatusMiddleware(WsgiToAsgi(app), app)` called by a minimal ASGI caller on one asyncio "
    "loop in the main thread, as uvicorn's (under load, 32 calls at once), its sync checks "
    "sent to the portal loop's worker threads. Under load most requests join runs in flight. "
    "Profiler: yappi {version}, CPU clock, every thread; each function's own time (by caller) "
    "is put in a stage by the rules of `benchmarks/costs.py`. yappi inflates every call, "
    "unevenly: only each stage's share of the profiled CPU time is kept, and the µs are that "
    "share of the CPU time per request measured without the profiler (`time.process_time()` "
    "of the process, all its threads; the median of {rounds} rounds of {per_round:,} requests). "
    "Percentages are of that CPU time."
)


def note(requests: int) -> str:
    from importlib.metadata import version

    return NOTE.format(version=version("yappi"), rounds=ROUNDS, per_round=requests // ROUNDS)


def section(measured: list[tuple[Case, Measured]], requests: int = REQUESTS) -> str:
    """The cost table, under a heading, with its note: what ``make bench`` prints after its
    main table."""
    return f"### {TITLE}\n\n{table(measured)}\n\n{note(requests)}"


def scenario() -> tuple[list[Row], str]:
    """``run.py``'s scenario 17: a row per case in the main table, and the cost table."""
    try:
        import yappi  # noqa: F401
    except ImportError:
        why = "yappi is not installed (the `dev` extra, which `make bench` installs, has it)"
        return [not_run(TITLE, CONTENDERS[OURS], why)], ""
    measured = measure_all()
    rows = []
    for case, one in measured:
        shares = _microseconds(one)
        largest = max(STAGES, key=lambda stage: shares.get(stage, 0.0))
        share = shares.get(largest, 0.0) / (one.cpu_per_request * 1e6)
        rows.append(
            Row(
                TITLE,
                f"{CONTENDERS[OURS]}: {case.label}",
                f"CPU {seconds(one.cpu_per_request)} / request; the most: "
                f"{largest.split(' (')[0]}, {share:.0%}; every stage in the cost table below",
            )
        )
    return rows, section(measured)


def main(arguments: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=REQUESTS, help="timed, per case")
    parser.add_argument(
        "--profiled", type=int, default=PROFILED_REQUESTS, help="profiled, per case"
    )
    parser.add_argument(
        "--functions", action="store_true", help="also list each case's costliest functions"
    )
    options = parser.parse_args(arguments)
    measured = measure_all(options.requests, options.profiled)
    print(section(measured, options.requests))
    if options.functions:
        print(functions_listing(measured))


if __name__ == "__main__":
    main()
