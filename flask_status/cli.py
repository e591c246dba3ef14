"""The ``flask status`` command: run an app's status fields in-process and print the JSON."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import with_appcontext

from .route import routes_of


@click.command("status")
@click.option("--url", default=None, help="The status route to run (default: every one).")
@with_appcontext
def status_command(url: str | None) -> None:
    """Run the status checks and print the answer; exit 1 when a status is DOWN.

    With several status routes and no ``--url``, each is run and printed under its URL, as
    one JSON object.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    routes = routes_of(app)
    served = {path: route for route in routes for path in route.paths(app)}
    if not served:
        raise click.ClickException("this app has no status route")
    if url is not None and url not in served:
        raise click.BadParameter(f"choose one of: {', '.join(served)}", param_hint="--url")
    chosen = [url] if url is not None else list(served)
    answers = {}
    for path in chosen:
        with app.test_request_context(path):
            answers[path] = served[path].respond_now()
    if len(answers) == 1:
        (response,) = answers.values()
        click.echo(response.get_data(as_text=True).rstrip("\n"))
    else:
        bodies = {path: json.loads(response.get_data()) for path, response in answers.items()}
        click.echo(json.dumps(bodies, indent=2))
    raise SystemExit(1 if any(r.status_code >= 500 for r in answers.values()) else 0)
