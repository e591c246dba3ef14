"""Regression tests for the bugs of Flask-Status 1.0.1."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, abort, request
from flask.testing import FlaskClient
from helpers import CallCounter

from flask_status import FlaskStatus

PROJECT_DIR = Path(__file__).resolve().parent.parent


def test_callables_run_on_every_request(app: Flask, client: FlaskClient) -> None:
    status = FlaskStatus(app)
    status.add_field("requests", CallCounter())

    counts = [client.get("/api/status").get_json()["requests"] for _ in range(3)]

    assert counts == [1, 2, 3]


def test_no_state_shared_between_instances() -> None:
    first_app, second_app = Flask("first"), Flask("second")
    first = FlaskStatus(first_app)
    FlaskStatus(second_app)

    first.add_field("only_on_first", True)

    assert first_app.test_client().get("/api/status").get_json() == {
        "status": "OK",
        "only_on_first": True,
    }
    assert second_app.test_client().get("/api/status").get_json() == {"status": "OK"}


def test_callers_message_dict_is_not_modified(app: Flask, client: FlaskClient) -> None:
    message = {"status": "OK", "service": "api"}
    status = FlaskStatus(app, message=message)
    status.add_field("database", lambda: True)
    status.add_field("failing", lambda: 1 / 0)

    client.get("/api/status")
    client.get("/api/status")

    assert message == {"status": "OK", "service": "api"}


def test_two_instances_on_one_app(app: Flask, client: FlaskClient) -> None:
    liveness = FlaskStatus(app, url="/livez", message="alive")
    readiness = FlaskStatus(app, url="/readyz")
    liveness.add_field("pid", lambda: 1)
    readiness.add_field("database", lambda: "connected")

    livez = client.get("/livez")
    readyz = client.get("/readyz")

    assert (livez.status_code, livez.get_json()) == (200, {"message": "alive", "pid": 1})
    assert (readyz.status_code, readyz.get_json()) == (
        200,
        {"status": "OK", "database": "connected"},
    )


def test_factory_pattern_with_fields_before_and_after_init_app(
    app: Flask, client: FlaskClient
) -> None:
    status = FlaskStatus(url="/healthz")
    status.add_field("before", lambda: "added before init_app")
    status.init_app(app)
    status.add_field("after", lambda: "added after init_app")

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {
        "status": "OK",
        "before": "added before init_app",
        "after": "added after init_app",
    }


def test_init_app_accepts_positional_arguments_of_1_0_1(app: Flask, client: FlaskClient) -> None:
    status = FlaskStatus()
    status.init_app(app, "/ping", {"message": "pong"}, require_key_header)

    assert client.get("/ping").status_code == 401
    response = client.get("/ping", headers={"X-Key": "k"})
    assert response.status_code == 200
    assert response.get_json() == {"message": "pong"}


def require_key_header(view: Callable[..., Any], header: str = "X-Key") -> Callable[..., Any]:
    """An authenticator that rejects requests without ``header``."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if header not in request.headers:
            abort(401)
        return view(*args, **kwargs)

    return wrapper


class KeyChecker:
    """An authenticator object, used as a bound method and as a callable object."""

    def __init__(self, header: str) -> None:
        self.header = header

    def protect(self, view: Callable[..., Any]) -> Callable[..., Any]:
        return require_key_header(view, self.header)

    def __call__(self, view: Callable[..., Any]) -> Callable[..., Any]:
        return self.protect(view)


@pytest.mark.parametrize(
    "authenticator",
    [
        functools.partial(require_key_header, header="X-Token"),
        KeyChecker("X-Token").protect,
        KeyChecker("X-Token"),
    ],
    ids=["partial", "bound-method", "callable-object"],
)
def test_authenticator_may_be_any_callable(
    app: Flask, client: FlaskClient, authenticator: Callable[..., Any]
) -> None:
    FlaskStatus(app, authenticator=authenticator)

    assert client.get("/api/status").status_code == 401
    assert client.get("/api/status", headers={"X-Key": "k"}).status_code == 401
    response = client.get("/api/status", headers={"X-Token": "t"})
    assert (response.status_code, response.get_json()) == (200, {"status": "OK"})


@pytest.mark.parametrize("authenticator", ["login_required", 42, object()])
def test_non_callable_authenticator_is_a_type_error(app: Flask, authenticator: object) -> None:
    with pytest.raises(TypeError, match="authenticator"):
        FlaskStatus(app, authenticator=authenticator)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="authenticator"):
        FlaskStatus().init_app(app, "/ping", "pong", authenticator)  # type: ignore[arg-type]


#: The oldest Python this project supports (``requires-python``).
OLDEST = "3.10"


def oldest_python() -> str | None:
    """The path of a working oldest Python: on PATH, or installed by pyenv."""
    environments = [dict(os.environ)]
    if shutil.which("pyenv"):
        # pyenv's shim only runs when that version is the selected one.
        installed = subprocess.run(
            ["pyenv", "whence", f"python{OLDEST}"], capture_output=True, text=True, timeout=30
        ).stdout.split()
        environments += [{**os.environ, "PYENV_VERSION": version} for version in installed]
    for environment in environments:
        try:
            found = subprocess.run(
                [f"python{OLDEST}", "-c", "import sys; print(sys.executable)"],
                env=environment,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except FileNotFoundError:
            return None
        if found.returncode == 0:
            return found.stdout.strip()
    return None


SMOKE_TEST_OLDEST = f"""
import asyncio, importlib, pkgutil, sys
import flask_status
from flask import Flask
from flask_status import FlaskStatus

assert sys.version_info[:2] == ({OLDEST.replace(".", ", ")}), sys.version
for module in pkgutil.walk_packages(flask_status.__path__, "flask_status."):
    try:
        importlib.import_module(module.name)
    except ImportError as exc:  # modules of optional extras say which extra to install
        assert "extra" in str(exc), exc

async def cache():
    await asyncio.sleep(0)
    return "reachable"

app = Flask("oldest")
status = FlaskStatus(app, timeout=5)
status.add_field("database", lambda: True)
status.add_field("cache", cache)
response = app.test_client().get("/api/status")
assert response.status_code == 200, response.get_data()
assert response.get_json() == {{"status": "OK", "database": True, "cache": "reachable"}}
print("ok")
"""


def test_installs_imports_and_serves_on_the_oldest_python(tmp_path: Path) -> None:
    """What ``requires-python`` promises holds: a real install on the oldest Python serves."""
    interpreter = oldest_python()
    if interpreter is None:
        pytest.skip(f"no Python {OLDEST} interpreter on this machine")
    # Install a copy, so that building the package leaves nothing in the source tree.
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(PROJECT_DIR / "flask_status", project / "flask_status")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_DIR / name, project / name)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"

    def run(*command: str | Path) -> str:
        completed = subprocess.run(
            [str(part) for part in command],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
        return completed.stdout

    run(interpreter, "-m", "venv", venv)
    run(python, "-m", "pip", "install", "--quiet", project)

    assert run(python, "-c", SMOKE_TEST_OLDEST).strip() == "ok"
