"""The ``flask status`` command: run an app's status fields in-process and print the JSON."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from .extension import EXTENSION_KEY, StatusRoute


@click.command("status")
@click.option("--url", default=None, help="The status route to run, when the app has several.")
@with_appcontext
def status_command(url: str | None) -> None:
    """Run the status checks and print the answer; exit 1 when the status is DOWN."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    routes: list[StatusRoute] = app.extensions.get(EXTENSION_KEY, [])
    served = {path: route for route in routes for path in route.paths(app)}
    if not served:
        raise click.ClickException("this app has no status route")
    if url is None:
        url = next(iter(served))
    elif url not in served:
        raise click.BadParameter(f"choose one of: {', '.join(served)}", param_hint="--url")
    with app.test_request_context(url):
        response = served[url].respond_now()
    click.echo(response.get_data(as_text=True).rstrip("\n"))
    raise SystemExit(1 if response.status_code >= 500 else 0)
