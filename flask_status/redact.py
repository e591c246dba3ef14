"""Masking credentials in what ready-made checks say about their targets.

A check's error text ends up in the status answer, in logs and in monitoring: none of them may
show a password or a token. :func:`redact_url` is the form of a URL a check shows; a
:class:`Redactor` masks a target's secrets in text the check did not write itself, such as an
exception message from the client library.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

MASK = "***"

#: Query parameter names that hold a secret: their values are masked wherever they appear.
SECRET_NAME = re.compile(
    r"pass|pwd|secret|token|key|auth|sig|credential|session|cookie|code|jwt|bearer|private",
    re.IGNORECASE,
)

#: Other query values shorter than this are not masked in free text: ``page=2`` would turn
#: every ``2`` of an error message into ``***``. The URL itself always shows them masked.
MIN_PLAIN_SECRET = 4


def redact_url(url: str) -> str:
    """``url`` with its userinfo password, every query value and any fragment masked.

    ``https://user:pw@host/p?token=t&page=2`` becomes ``https://user:***@host/p?token=***&page=***``.
    A userinfo without a password (``https://TOKEN@host/``) is masked whole: it is as often a
    token as a user name. The scheme, host, port and path are kept.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: show nothing that might be secret
        return f"(unparsable URL, {len(url)} characters)"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{MASK}@{hostport}"
    else:
        netloc = parts.netloc
    query = "&".join(_masked_item(item) for item in parts.query.split("&")) if parts.query else ""
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _masked_item(item: str) -> str:
    name, equals, value = item.partition("=")
    if not equals:
        return MASK if name else ""  # a bare ``?TOKEN`` is a value too
    return f"{name}={MASK}" if value else item


class Redactor:
    """Masks a target's secrets in any text: its URL as :func:`redact_url` shows it, then each
    secret (a password, a token) wherever it appears, as given or percent-decoded."""

    def __init__(self, urls: Iterable[str] = (), secrets: Iterable[str] = ()) -> None:
        pairs: dict[str, str] = {}
        found = [str(secret) for secret in secrets if secret]
        for url in urls:
            if url:
                pairs[url] = redact_url(url)
                found.extend(url_secrets(url))
        for secret in found:
            for form in {secret, unquote(secret), unquote_plus(secret)}:
                if form:
                    pairs.setdefault(form, MASK)
        # Longest first: a URL before the password inside it, a secret before its prefixes.
        self._pairs = sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True)

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def scrub(self, text: str) -> str:
        """``text`` with every secret masked."""
        for secret, shown in self._pairs:
            text = text.replace(secret, shown)
        return text

    def reveals(self, text: str) -> bool:
        """True when ``text`` holds one of the secrets."""
        return any(secret in text for secret, _ in self._pairs)


def url_secrets(url: str) -> list[str]:
    """The secrets of ``url`` to mask in free text: its userinfo password (or a userinfo
    without one), and its query values, but for short values of harmless-looking names."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    userinfo, at, _ = parts.netloc.rpartition("@")
    found = []
    if at:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    for item in parts.query.split("&") if parts.query else []:
        name, equals, value = item.partition("=")
        if not equals:
            value = name
        if value and (SECRET_NAME.search(name) or len(value) >= MIN_PLAIN_SECRET):
            found.append(value)
    if parts.fragment:
        found.append(parts.fragment)
    return found
