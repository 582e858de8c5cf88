"""Credentials in a service's URL. params.yaml is committed every cycle and its provider sections land in
dvc.lock and MLflow, so a credential a URL must carry is written there as `${VAR}` (`expand_url` fills it in for
the request alone), a credential written out is refused (`literal_credentials`), and a URL is shown, logged or
keyed on only masked (`mask_url`).

Imports nothing of the package: the params schema checks URLs with it, and the providers use it.
"""

from __future__ import annotations

import os
import re
import urllib.parse

# query parameter names whose values are credentials (Azure's `api-key`, `key=` of Google APIs, SAS `sig`, tokens)
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential", re.IGNORECASE)


# `${VAR}` in a base_url: where a gateway wants a credential inside its URL, params name the variable that holds it
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def env_refs(url: str | None) -> list[str]:
    """The environment variables `url` refers to as `${VAR}`."""
    return _ENV_REF.findall(url or "")


def expand_url(url: str | None, *, missing=None) -> str | None:
    """`url` with each `${VAR}` replaced by that variable's value. params.yaml is committed every cycle and its
    provider sections land in dvc.lock and MLflow, so a credential a URL must carry is written there as `${VAR}` and
    only the request (never an identity, a row or a log: see mask_url) sees the value. `missing(name)` is called for an
    unset variable (default: left as written)."""
    if not url:
        return url

    def value(m: re.Match) -> str:
        got = os.environ.get(m.group(1))
        if got is None:
            if missing is not None:
                missing(m.group(1))
            return m.group(0)
        return got

    return _ENV_REF.sub(value, url)


def literal_credentials(url: str | None) -> list[str]:
    """The credentials written out in `url` rather than as `${VAR}`: its password (or, alone, a user name, which may
    be a token) and secret-looking query values. params must hold none (ProviderParams refuses them)."""
    try:
        parts = urllib.parse.urlsplit(url or "")
    except ValueError:
        return []
    found = [parts.password] if parts.password else [parts.username] if parts.username else []
    found += [v for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if v and _SECRET_PARAM.search(k)]
    return [v for v in found if not _ENV_REF.fullmatch(v)]


def url_secrets(url: str | None) -> list[str]:
    """The credentials written into `url`: its userinfo (user and password) and secret-looking query values."""
    if not url:
        return []
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not a URL the SDKs could use either; nothing to find
        return []
    found = [v for v in (parts.username, parts.password) if v]
    found += [v for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if v and _SECRET_PARAM.search(k)]
    return found


def mask_url(url: str | None) -> str | None:
    """`url` fit to print, log or key a cache on: userinfo and secret-looking query values become `***`.
    Requests still go to the real URL; this is only what a URL may say about itself anywhere else."""
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # unparseable: say nothing of it rather than risk a key
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = urllib.parse.urlencode([(k, "***" if v and _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
