"""Secrets in storage URLs, masked: :func:`mask_url` is the form every message and log shows.

A URL may carry a password in two places: the user info (``scheme://user:PASSWORD@host``) and
the query (``?password=...``, ``?sslpassword=...``, a token, ...). Neither is always encoded
as it should be: a password may hold a raw ``@``, ``:``, ``/``, ``?``, ``#``, ``&`` or ``%``.
Such a URL is ambiguous, so the masking reads it two ways and hides what either way calls a
secret:

* the user info ends at the LAST ``@`` that a host follows (a raw ``@``, ``/`` or ``?`` in the
  password cannot leak part of it);
* the standard way: the user info ends at the first ``/``, ``?`` or ``#``; the query starts
  at the first ``?`` after the host, and each secret parameter's value is hidden up to the
  next ``&name=`` (a raw ``&`` inside a password is hidden with it; so is all of
  ``password=&...``, whose value would start with the ``&``).

Everything else is kept as written: scheme, user, host, port, database, other parameters.
Only when the two readings disagree (an unencoded ``@`` in the query, and a password in the
user info) does more than the password disappear. No SQLAlchemy parsing is involved, so a URL
that SQLAlchemy rejects is masked the same way.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

__all__ = ["MASK", "is_secret_parameter", "mask_url", "secret_spans"]

MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# What may follow the user info's "@" up to the path: host[:port], a [v6] host, several of
# them (libpq's host1:5432,host2:5433), or nothing (a Unix socket named in the query).
_HOSTS = re.compile(r"[\w.\-~%:,\[\]]*")
_HOSTPORT = re.compile(r"(?:\[[0-9A-Fa-f:.]*\]|[\w.\-~%]*)(?::\d*)?"
                       r"(?:,(?:\[[0-9A-Fa-f:.]*\]|[\w.\-~%]*)(?::\d*)?)*")
# A path and a query with a parameter whose value has begun: an "@" after this is in a value.
_IN_QUERY_VALUE = re.compile(r"(?:/[^?]*)?\?.*=", re.DOTALL)
_PARAMETER = re.compile(r"[A-Za-z_][\w.\-]*")  # a parameter's name (decoded)
_SECRET_NAMES = frozenset({"pass", "passwd", "pwd", "apikey", "api_key", "api-key",
                           "accesskey", "access_key", "auth", "credential", "credentials"})
_SECRET_PARTS = ("password", "secret", "token", "passphrase")
# a value that is itself a connection string with a password (odbc_connect=...;PWD=x;...)
_EMBEDDED = re.compile(r"(?:password|pwd|passwd|secret|token)\s*[=:]", re.IGNORECASE)


def is_secret_parameter(name: str) -> bool:
    """Whether a URL query parameter called ``name`` (raw or percent-encoded) holds a secret.

    ``password``, ``sslpassword``, ``passwd``, ``pass``, ``pwd``, ``secret``, ``token``,
    ``api_key``/``apikey``, ``access_token`` and anything whose name holds ``password``,
    ``secret`` or ``token`` (any case) do; paths such as ``passfile``, ``sslkey`` and
    ``sslcert`` do not.
    """
    try:
        plain = unquote_plus(name).strip().lower()
    except Exception:  # never raise: an undecodable name is treated as a secret
        return True
    return plain in _SECRET_NAMES or any(part in plain for part in _SECRET_PARTS)


def mask_url(url: str, *, also: Iterable[str] = ()) -> str:
    """The URL with every secret in it replaced by ``***`` (safe to print and log).

    The user info's password and the values of secret query parameters (see
    :func:`is_secret_parameter`) are hidden, raw or percent-encoded, whatever characters they
    hold; the rest is kept as written. Never raises: a URL that cannot be read at all comes
    back as ``scheme://***``.

    Args:
        url: the URL.
        also: names of query parameters whose values are hidden too (e.g. unknown options,
            which may be a misspelt password parameter).
    """
    text = url if isinstance(url, str) else str(url)
    try:
        return _replace(text, secret_spans(text, also=also))
    except Exception:  # never raise while building an error message
        scheme = _SCHEME.match(text)
        return (text[:scheme.end()] if scheme else "") + MASK


def secret_spans(url: str, *, also: Iterable[str] = ()) -> list[tuple[int, int]]:
    """(start, end) in ``url`` of each text :func:`mask_url` hides (spans may overlap).

    Args:
        url: the URL.
        also: see :func:`mask_url`.
    """
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    extra = frozenset(unquote_plus(name).strip().lower() for name in also)
    return [(start + a, start + b) for a, b in _secret_spans(url[start:], extra)]


def _secret_spans(rest: str, extra: frozenset[str]) -> list[tuple[int, int]]:
    """(start, end) of each secret in ``rest`` (the URL after ``scheme://``)."""
    if rest.startswith("/"):  # no host part (sqlite:///path): only the query may hold one
        return _query_spans(rest, 0, extra)
    auth_end = _first_of(rest, "/?#", 0)
    spans = _query_spans(rest, auth_end, extra)
    at = rest.rfind("@", 0, auth_end)
    user_has_password = False
    if at >= 0:
        colon = rest.find(":", 0, at)
        user_has_password = colon >= 0
        if user_has_password:
            spans.append((colon + 1, at))
    last_at = _last_userinfo_at(rest)
    if last_at is not None and last_at > auth_end:
        standard_reading_holds = (
            at >= 0 and not user_has_password
            and _HOSTPORT.fullmatch(rest, at + 1, auth_end) is not None
            and _IN_QUERY_VALUE.match(rest[auth_end:last_at]) is not None)
        colon = rest.find(":", 0, last_at)
        if not standard_reading_holds and colon >= 0:
            spans.append((colon + 1, last_at))
    return spans


def _last_userinfo_at(rest: str) -> int | None:
    """The last ``@`` that a plausible host part follows (where the user info would end)."""
    at = len(rest)
    while (at := rest.rfind("@", 0, at)) >= 0:
        host_end = _first_of(rest, "/?#", at + 1)
        if _HOSTS.fullmatch(rest, at + 1, host_end):
            return at
    return None


def _query_spans(rest: str, start: int, extra: frozenset[str]) -> list[tuple[int, int]]:
    """The values of secret parameters in the query after ``rest[start:]``'s first ``?``."""
    mark = rest.find("?", start)
    if mark < 0:
        return []
    spans: list[tuple[int, int]] = []
    pos, secret, empty = mark + 1, False, False
    for token in rest[mark + 1:].split("&"):
        name, equals, value = token.partition("=")
        if secret and (not equals or empty or not _PARAMETER.fullmatch(unquote_plus(name))):
            # a raw "&" inside a secret value (no "name=" after it, or the value would begin
            # with the "&"): hide the rest of the value too
            spans.append((pos - 1, pos + len(token)))
            empty = False
        elif equals:
            secret = (is_secret_parameter(name) or _holds_secret(value)
                      or _plain(name) in extra)
            empty = not value
            if secret and value:
                spans.append((pos + len(name) + 1, pos + len(token)))
        pos += len(token) + 1
    return spans


def _plain(name: str) -> str:
    try:
        return unquote_plus(name).strip().lower()
    except Exception:
        return name


def _holds_secret(value: str) -> bool:
    try:
        return _EMBEDDED.search(unquote_plus(value)) is not None
    except Exception:
        return True


def _first_of(text: str, chars: str, start: int) -> int:
    """Index of the first of ``chars`` in ``text[start:]``, else ``len(text)``."""
    found = [i for i in (text.find(c, start) for c in chars) if i >= 0]
    return min(found, default=len(text))


def _replace(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each span (overlapping or touching ones merged) replaced by ``***``."""
    merged: list[list[int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = [], 0
    for start, end in merged:
        out += [text[pos:start], MASK]
        pos = end
    out.append(text[pos:])
    return "".join(out)
