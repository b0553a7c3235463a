"""A study storage's URL, resolved once at the command's edge.

``--storage``, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db``: :func:`resolve_storage` is the
one place that reads the environment for it, and the CLI calls it once per command. Everything
below takes the :class:`StorageURL` it returns (an explicit URL string is accepted as one by
:func:`as_storage`, never the environment). Its ``str()`` and ``repr()`` are the masked form
(:func:`hpo.store.secrets.mask_url`), so a handle printed by mistake shows no password.

:func:`check_url` reads the URL as SQLAlchemy will, without connecting or creating anything,
and turns every URL the storage could not use into one line naming the (masked) URL, what is
wrong and the fix: :func:`hpo.store.storage.open_storage` calls it first, and so may a
command's edge. :func:`reading_url` is the form a reader opens a read-only SQLite file with.
"""
from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from hpo.errors import StorageError
from hpo.store.secrets import mask_url, secret_spans

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["DEFAULT_STORAGE", "STORAGE_ENV", "StorageURL", "as_storage", "check_url",
           "read_only_reason", "reading_url", "resolve_storage", "sqlite_file"]

STORAGE_ENV = "HPO_STORAGE"
DEFAULT_STORAGE = "sqlite:///hpo.db"
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


@dataclass(frozen=True)
class StorageURL:
    """A storage URL (postgresql:// means psycopg 3) and whether the user named it.

    Attributes:
        url: the full URL, secrets included: hand it only to the database driver.
        explicit: given with ``--storage`` (so hints repeat it), not from the environment or
            the default.
    """

    url: str = field(repr=False)
    explicit: bool = True

    def __post_init__(self) -> None:
        scheme, sep, rest = self.url.partition("://")
        if sep and scheme in _DRIVERS:
            object.__setattr__(self, "url", f"{_DRIVERS[scheme]}://{rest}")

    @property
    def masked(self) -> str:
        """The URL with every secret replaced by ``***``: the form every message shows."""
        return mask_url(self.url)

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"StorageURL({self.masked!r})"


def resolve_storage(flag: str | None = None, *,
                    environ: Mapping[str, str] | None = None) -> StorageURL:
    """The command's storage: ``flag``, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db``.

    Args:
        flag: the ``--storage`` value, if given.
        environ: the environment to read (default ``os.environ``).
    """
    if flag:
        return StorageURL(flag, explicit=True)
    env = os.environ if environ is None else environ
    return StorageURL(env.get(STORAGE_ENV) or DEFAULT_STORAGE, explicit=False)


def as_storage(value: StorageURL | str) -> StorageURL:
    """``value`` as a :class:`StorageURL`: a handle as it is, a URL string as an explicit one.

    Raises:
        TypeError: ``value`` is None or empty: the storage is resolved at the command's edge
            (:func:`resolve_storage`), never guessed below it.
    """
    if isinstance(value, StorageURL):
        return value
    if isinstance(value, str) and value:
        return StorageURL(value)
    raise TypeError(f"storage is {value!r}; resolve it once with hpo.store.url.resolve_storage "
                    "and pass the StorageURL down")


_SCHEME = re.compile(r"[A-Za-z][\w+.\-]*")
_EXAMPLES = "sqlite:///hpo.db (a file) or postgresql://USER:PASSWORD@HOST:5432/DB"
# SQLAlchemy's own reading of what follows "scheme://" (sqlalchemy.engine.url._parse_url)
_SQLALCHEMY = re.compile(r"""
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
    (?:/(?P<database>[^?]*))?(?:\?(?P<query>.*))?""", re.VERBOSE)
_PIP = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary"}
_PYSQLITE = ("uri", "timeout", "isolation_level", "detect_types", "check_same_thread",
             "cached_statements")
_SQLITE_URI = ("mode", "cache", "immutable", "nolock", "psow", "vfs", "modeof")


def check_url(storage: StorageURL | str) -> URL:
    """The storage URL as SQLAlchemy reads it, checked without connecting or creating anything.

    Args:
        storage: the storage (:func:`resolve_storage`), or its URL.

    Returns:
        SQLAlchemy's reading of the URL.

    Raises:
        StorageError: one line naming the URL (masked), what is wrong and the fix: no
            ``scheme://``; a control character; a database other than SQLite or PostgreSQL;
            a raw ``@`` that makes the URL read two ways (part of a password taken for the
            host); a port that is not a number from 1 to 65535; a host name with an empty or
            too long part; a driver SQLAlchemy does not know, an asyncio one or one not
            installed; a SQLite URL with a host (``sqlite://x.db``); an option the driver does
            not take.
    """
    handle = as_storage(storage)
    scheme, sep, rest = handle.url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise _refused(handle, "is not a database URL (it has no scheme://)", f"use {_EXAMPLES}")
    if not handle.url.isprintable():
        raise _refused(handle, "holds a control character (a line break, a tab, ...)",
                       "remove it, or percent-encode it in a password (%0A, %09)")
    backend = scheme.partition("+")[0]
    if backend not in ("sqlite", "postgresql"):
        raise _refused(handle, f"names the database {backend!r}, but studies live in SQLite or "
                       "PostgreSQL only", f"use {_EXAMPLES}")
    _check_readings(handle, len(scheme) + 3)
    parsed = _parsed(handle, rest)
    _check_driver(handle, parsed)
    if backend == "sqlite":
        _check_sqlite(handle, parsed)
    elif parsed.host and not parsed.host.startswith("["):
        _check_host(handle, parsed.host)
    _check_options(handle, parsed)
    return parsed


def _refused(handle: StorageURL, problem: str, fix: str, *,
             shown: str | None = None) -> StorageError:
    """The one-line error for an unusable URL (shown masked, control characters escaped)."""
    text = shown if shown is not None else handle.masked
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return StorageError(f"storage URL {text} {problem}; {fix}")


def _check_readings(handle: StorageURL, start: int) -> None:
    """Refuse a URL whose user info SQLAlchemy reads otherwise than the masking does.

    SQLAlchemy ends a password at its first ``@``; a raw ``@`` inside it (or one in an option
    after a password) would send part of the password as the host, the port or the database,
    where messages show it. The URL is used only when SQLAlchemy's host, port, database and
    user name hold no text the masking hides, and its password only such text.
    """
    url = handle.url
    if "@" not in url[start:] or url[start:].startswith("/"):
        return  # no user info: SQLAlchemy reads the host part of "sqlite:///x" as empty
    match = _SQLALCHEMY.match(url, start)
    hidden = secret_spans(url)
    inside = [match.span(g) for g in ("username", "ipv6host", "ipv4host", "port", "database")
              if match.group(g)]
    password = match.span("password") if match.group("password") else None
    shown_secret = any(a < e and s < b for a, b in inside for s, e in hidden)
    bare_password = password is not None and not any(
        s <= password[0] and password[1] <= e for s, e in hidden)
    if shown_secret or bare_password:
        raise _refused(handle, "holds an unencoded '@' in its user name, password, database or "
                       "options, so it reads two ways (part of the password would be taken "
                       "for the host)", "write each '@' but the one before the host as %40 "
                       "(percent-encode the password)")


def _parsed(handle: StorageURL, rest: str) -> URL:
    from sqlalchemy.engine import make_url

    port = _SQLALCHEMY.match(rest).group("port")
    try:
        parsed = make_url(handle.url)
    except ValueError:  # int(port)
        parsed = None
    except Exception as exc:
        raise _refused(handle, f"cannot be read by SQLAlchemy ({exc})",
                       f"use {_EXAMPLES}") from None
    if parsed is None or (parsed.port is not None and not 0 < parsed.port < 65536):
        several = " (several hosts go in the options: ?host=h1:5432&host=h2:5433)" \
            if "," in (port or "") else ""
        raise _refused(handle, f"has the port {port!r}, but a port is a number from 1 to "
                       "65535", f"write HOST:PORT with digits (e.g. 127.0.0.1:5432), or leave "
                       f":PORT out for the default{several}")
    return parsed


def _check_driver(handle: StorageURL, parsed: URL) -> None:
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    default = "postgresql://" if backend == "postgresql" else "sqlite:///"
    try:
        dialect = parsed.get_dialect()
    except Exception:
        raise _refused(handle, f"names the driver {driver!r}, which SQLAlchemy does not know "
                       f"for {backend}", f"use {default} (no +driver)") from None
    if getattr(dialect, "is_async", False):
        raise _refused(handle, f"names the asyncio driver {driver!r}, but the storage needs a "
                       "blocking one", f"use {default} (no +driver)")
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise _refused(handle, f"names the driver {driver!r}, which is not installed ({exc})",
                       f"install it (pip install {_PIP.get(driver, driver)}) or use {default}"
                       " (no +driver)") from None


def _check_host(handle: StorageURL, host: str) -> None:
    try:
        host.encode("idna")  # what the driver does before it resolves the name
    except UnicodeError:
        raise _refused(handle, f"has the host {host!r}, which is not a host name (a part "
                       "between dots is empty or longer than 63 characters)",
                       "fix the host's spelling, e.g. db.example.com or 127.0.0.1") from None


def _check_sqlite(handle: StorageURL, parsed: URL) -> None:
    password = parsed.password if parsed.get_driver_name() != "pysqlcipher" else None
    if parsed.host:
        path = parsed.host + (f"/{parsed.database}" if parsed.database else "")
        raise _refused(handle, f"reads {parsed.host!r} as a host (two slashes), but a SQLite "
                       "URL names a file after three", f"use sqlite:///{path} for a path "
                       "relative to the current folder, or four slashes for an absolute one "
                       "(sqlite:////abs/path.db)")
    if parsed.username or password or parsed.port:
        raise _refused(handle, "has a user name, password or port, which a SQLite file does "
                       "not take", "use sqlite:///relative/path.db or sqlite:////abs/path.db")


def _options(parsed: URL) -> tuple[frozenset[str], str] | None:
    """The query options the URL's driver takes and a note listing them (None: unchecked)."""
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite" and driver == "pysqlite":
        uri = str(parsed.query.get("uri", "")).lower() in ("1", "true", "yes", "on")
        names = _PYSQLITE + (_SQLITE_URI if uri else ())
        note = f"sqlite:/// takes {', '.join(_PYSQLITE)}" + (
            "" if uri else f"; with uri=true also {', '.join(_SQLITE_URI)}")
        return frozenset(names), note
    if backend == "postgresql" and driver in ("psycopg", "psycopg2"):
        try:
            from psycopg import pq

            names = frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())
        except Exception:  # libpq's list is not at hand: the server's error will say
            return None
        return names, ("PostgreSQL takes libpq's connection parameters: sslmode, "
                       "connect_timeout, application_name, options, target_session_attrs, ...")
    return None


def _check_options(handle: StorageURL, parsed: URL) -> None:
    known = _options(parsed)
    if known is None or not parsed.query:
        return
    names, note = known
    unknown = [name for name in parsed.query if name not in names]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, sorted(names), n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    raise _refused(handle, f"has the option {name!r}, which the driver does not take{guess}",
                   f"remove it or fix its name; {note}",
                   shown=mask_url(handle.url, also=unknown))


def sqlite_file(parsed: URL) -> Path | None:
    """The SQLite database file a URL names (None: in memory, or a ``file:`` URI as given)."""
    path = parsed.database
    if not path or path == ":memory:" or str(parsed.query.get("uri", "")).lower() in (
            "1", "true", "yes", "on"):
        return None
    return Path(path).expanduser()


def read_only_reason(db: Path) -> str | None:
    """Why this process cannot write the SQLite file ``db`` (or create it), or None."""
    try:
        if os.statvfs(db if db.exists() else db.parent).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    except OSError:
        return None  # SQLite says what is wrong in its own words
    if db.exists() and not os.access(db, os.W_OK):
        return "the file is not writable by this user"
    if not os.access(db.parent, os.W_OK | os.X_OK):
        return (f"its folder {db.parent} is not writable by this user, and SQLite writes its "
                "-wal and -shm files there")
    return None


def reading_url(url: str) -> str:
    """The URL a reader opens a SQLite storage with: it reads a read-only file as it is.

    ``url`` itself when this process may write the file and its folder, else SQLite's
    read-only form (``file:PATH?mode=ro``). Where SQLite cannot make the ``-shm`` file a WAL
    database needs (a read-only file system or folder) and no ``-wal`` file says that a writer
    is at work, the file is read as immutable (SQLite opens it without that file). Other URLs
    come back as they are.
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url  # check_url explains it
    db = sqlite_file(parsed) if parsed.get_backend_name() == "sqlite" else None
    if db is None or not db.is_file() or read_only_reason(db) is None:
        return url
    query = {"mode": "ro", "uri": "true"}
    folder_writable = os.access(db.parent, os.W_OK | os.X_OK) and not (
        os.statvfs(db).f_flag & os.ST_RDONLY)
    if not folder_writable and not db.with_name(f"{db.name}-wal").exists():
        query["immutable"] = "1"
    name = "file:" + quote(str(db.resolve()), safe="/")
    return parsed.set(database=name, query=query).render_as_string(hide_password=False)
