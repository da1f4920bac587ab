"""Masking credentials in URLs and free text: the one function every output goes through.

Configuration output, health and status documents, log lines and error texts all show URLs
through :func:`mask_url`, so a password, an API key in a path or a webhook token is never
printed, logged or stored.
"""

from __future__ import annotations

import re
from typing import Final

MASK: Final = "***"
"""What a masked credential is shown as."""
# user:password@ (a port followed by a path is not a password).
_URL_PASSWORD_RE: Final = re.compile(r"(?<=://)([^:/@]+):(?!\d*[/?#])([^@]*)@")
# A URL inside free text: it ends at whitespace, a quote or an angle bracket.
_URL_IN_TEXT_RE: Final = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>`]*", re.IGNORECASE)
# Runs of the characters API keys and webhook tokens are made of (within a path segment).
_KEY_RUN_RE: Final = re.compile(r"[A-Za-z0-9_~-]{16,}")
# Path segments after which every segment is a credential: webhook URLs (Slack
# /services/T…/B…/<token>, Discord /api/webhooks/<id>/<token>, generic …/hooks/<token>) and
# …/key/<key> styles.
_SECRET_PATH_MARKERS: Final = frozenset(
    {"services", "webhook", "webhooks", "hook", "hooks", "token", "tokens", "key", "keys"}
    | {"apikey", "api_key", "api-key", "secret", "secrets"}
)
# Query parameters whose values are shown (libpq's harmless connection options); every other
# query value is masked.
_SHOWN_QUERY_NAMES: Final = frozenset(
    {"sslmode", "connect_timeout", "application_name", "target_session_attrs", "dbname"}
)


def mask_url(text: str, *, hide_path: bool = False) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``.

    The one masking function: configuration output, health and status documents, log lines and
    error texts all go through it. It masks a URL's password (``user:***@host``) and a lone
    user name that looks like a key, path segments that look like keys (Alchemy ``/v2/<key>``,
    Infura ``/v3/<32 hex>``: a run of 16+ letters and digits, or of 32+ key characters) and
    every segment after a webhook/key marker (Slack ``/services/…``, Discord
    ``/api/webhooks/…``, ``/hooks/…``), every query value except libpq's harmless options
    (``?apikey=***``), and the fragment. ``hide_path`` masks the whole path, query and fragment
    (``scheme://host/***``): for URLs that are secrets as a whole, such as webhook URLs.
    """
    if "://" not in text:
        return text
    # Passwords first, over the whole text: one that holds a space or a quote is still masked.
    text = _URL_PASSWORD_RE.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    return _URL_IN_TEXT_RE.sub(lambda m: _mask_one_url(m.group(), hide_path), text)


def looks_like_key(token: str) -> bool:
    """A credential-looking string: 32+ characters, or 16+ mixing letters and digits."""
    if len(token) >= 32:
        return True
    return len(token) >= 16 and any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def mask_key_runs(text: str) -> str:
    """``text`` with every key-looking run of key characters replaced by ``***``."""
    return _KEY_RUN_RE.sub(lambda m: MASK if looks_like_key(m.group()) else m.group(), text)


def _first_of(text: str, characters: str, start: int = 0) -> int:
    """Index of the first of ``characters`` in ``text`` at or after ``start``, else its length."""
    found = [i for i in (text.find(c, start) for c in characters) if i >= 0]
    return min(found, default=len(text))


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """``user:password@host/…`` (the part after ``://``) → (``user:password``, ``host/…``)."""
    first_at = rest.find("@")
    if first_at < 0:
        return None, rest
    stop = _first_of(rest, ":/?#@")
    if rest[stop] == "@":
        return rest[:stop], rest[stop + 1 :]
    if rest[stop] != ":":
        return None, rest  # the '@' is in the path or the query
    after_colon = rest[stop + 1 :]
    delimiter = _first_of(after_colon, "/?#@")
    port_like = after_colon[:delimiter].isdigit() or delimiter == 0
    if port_like and after_colon[delimiter : delimiter + 1] in {"/", "?", "#"}:
        return None, rest  # host:port/…, the '@' is further on
    # A password may hold unescaped '@' or '/': the user info ends at the last '@' before the
    # host's end.
    host_end = _first_of(rest, "/?#", first_at)
    last_at = rest.rfind("@", 0, host_end)
    return rest[:last_at], rest[last_at + 1 :]


def _mask_userinfo(info: str) -> str:
    user, colon, password = info.partition(":")
    user = MASK if looks_like_key(user) else user
    if colon:
        return f"{user}:{MASK}" if password else f"{user}:"
    return user


def _mask_path(path: str) -> str:
    segments = []
    hide = False
    for segment in path.split("/"):
        if hide and segment:
            segments.append(MASK)
            continue
        segments.append(mask_key_runs(segment))
        hide = hide or segment.lower() in _SECRET_PATH_MARKERS
    return "/".join(segments)


def _mask_query(query: str) -> str:
    items: list[str] = []
    for item in query.split("&"):
        name, equals, value = item.partition("=")
        if not equals:
            items.append(MASK if item else item)
        elif value and name.lower() not in _SHOWN_QUERY_NAMES:
            items.append(f"{name}={MASK}")
        else:
            items.append(item)
    return "&".join(items)


def _mask_one_url(url: str, hide_path: bool) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, rest = _split_userinfo(rest)
    host_end = _first_of(rest, "/?#")
    host, tail = rest[:host_end], rest[host_end:]
    shown = f"{scheme}://" + ("" if userinfo is None else _mask_userinfo(userinfo) + "@") + host
    if hide_path:
        return shown + (f"/{MASK}" if tail.strip("/") else tail)
    tail, hash_sign, fragment = tail.partition("#")
    path, question_mark, query = tail.partition("?")
    return (
        shown
        + _mask_path(path)
        + (question_mark + _mask_query(query))
        + (hash_sign + (MASK if fragment else ""))
    )
