"""Where a status route lands on an app, and the checks that keep it from clashing there."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask import Flask
from flask.blueprints import BlueprintSetupState

from .fields import url_problem


@dataclass(frozen=True)
class Mount:
    """Where a status route's rules land: on the app itself, or through a blueprint."""

    url_prefix: str | None = None
    blueprint: str = ""  # the endpoint prefix, dotted for nested blueprints
    subdomain: str | None = None

    @classmethod
    def of(cls, state: BlueprintSetupState) -> Mount:
        name = f"{state.name_prefix}.{state.name}".lstrip(".")
        return cls(state.url_prefix, name, state.subdomain)

    def rule(self, url: str) -> str:
        """The rule the app gets for ``url``, joined as ``BlueprintSetupState`` joins it."""
        if self.url_prefix is None:
            return url
        return "/".join((self.url_prefix.rstrip("/"), url.lstrip("/")))

    def check_url(self, url: str) -> None:
        """Refuse a blueprint prefix that makes the status URL unusable (a converter, ...)."""
        if self.url_prefix is None:
            return  # the URL alone was checked with the settings
        rule = self.rule(url)
        problem = url_problem(rule)
        if problem is not None:
            raise ValueError(
                f"status URL {rule!r} (url_prefix {self.url_prefix!r} of blueprint "
                f"{self.blueprint!r} + url {url!r}) {problem}"
            )

    def check_unrouted(self, app: Flask, url: str, what: str) -> None:
        """Refuse a rule the app already has: one of the two would silently shadow the other."""
        rule = self.rule(url)
        shape = rule_shape(rule)
        for existing in app.url_map.iter_rules():
            same_host = (existing.subdomain or "") == (self.subdomain or "")
            if same_host and rule_shape(existing.rule) == shape:
                raise ValueError(
                    f"status {what} {rule!r} is already routed on the app "
                    f"(rule {existing.rule!r}, endpoint {existing.endpoint!r})"
                )

    def taken_endpoint(self, app: Flask, name: str) -> str | None:
        """The app's endpoint that ``name`` or its twins (per-field, drain) would overwrite."""
        for endpoint in (name, name + "_field", name + "_drain"):
            full = f"{self.blueprint}.{endpoint}" if self.blueprint else endpoint
            if full in app.view_functions:
                return full
        return None


def rule_shape(rule: str) -> str:
    """A rule with its converters blanked: ``/a/<int:id>`` and ``/a/<field>`` match alike."""
    return re.sub(r"<[^>]*>", "<>", rule)
