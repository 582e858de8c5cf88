"""Credentials in URLs: one rule for every URL the project stores, prints or logs (a provider's `base_url`,
`mlflow.tracking_uri`, `cluster.address`, `cluster.storage`, `llamaduo init --remote`, the MLFLOW_TRACKING_URI
environment variable). params.yaml and .dvc/config are committed, and params land in dvc.lock and MLflow, so:

- a stored URL never holds a credential written out (`credential_refusal` names the key and says where the
  credential goes instead); where the project fills a URL in itself (a provider's `base_url`), the credential
  is written `${VAR}` and `expand_url` fills it in for the request alone;
- a URL taken from the environment keeps its credential out of every message (`userinfo_to_env` hands a
  user:password to the client's own variables);
- a URL is shown, logged or keyed on only masked (`mask_url`).

Imports nothing of the package but its errors: the params schema checks URLs with it, and the providers use it.
"""

from __future__ import annotations

import os
import re
import urllib.parse

from llamaduo.errors import UserError

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


# schemes on which a user name alone is a token (`https://TOKEN@host`, as git and many gateways take one); elsewhere
# it is a login or a place (ssh://git@host, postgresql://mlflow@db, abfs://container@account.dfs.core.windows.net)
_TOKEN_USER_SCHEMES = frozenset({"http", "https", "ws", "wss", "webdav", "webdavs"})


def literal_credentials(url: str | None, *, refs_filled: bool = True) -> list[str]:
    """The credentials written into `url`: its password (or, on http(s), a user name alone, which may be a token)
    and secret-looking query values. With `refs_filled` a `${VAR}` in their place is not one (the project fills it
    in from the environment at the request); without, the URL is used as written and a `${VAR}` counts too."""
    try:
        parts = urllib.parse.urlsplit(url or "")
    except ValueError:
        return []
    token_user = parts.username and parts.scheme.lower() in _TOKEN_USER_SCHEMES
    found = [parts.password] if parts.password else [parts.username] if token_user else []
    found += [v for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if v and _SECRET_PARAM.search(k)]
    return [v for v in found if not (refs_filled and _ENV_REF.fullmatch(v))]


def credential_refusal(url: str | None, key: str, *, stored: str, instead: str, refs_filled: bool = False) -> str | None:
    """The error naming `key` when `url` carries a credential (`literal_credentials`), else None. It quotes neither
    the URL nor the credential: `stored` says where the value is written (why no credential may be in it),
    `instead` where the credential goes."""
    if not literal_credentials(url, refs_filled=refs_filled):
        return None
    return f"`{key}` carries a credential (a user:password, a token as user name, or a key/token query value); {stored}: {instead}"


def userinfo_to_env(url: str, user_env: str, password_env: str, *, source: str) -> str:
    """`url` (http or https) without its user:password, which go to the environment variables `user_env` and
    `password_env` of this process (a value already set there wins): a client that reads its credentials from
    them sends the same basic auth, while the URL it prints and quotes in its errors carries none. Other URLs
    come back as they are (a database URL needs its password in it; such a URL is only ever shown masked).
    `source` names where the URL came from, for the error about a user name without a password."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return url
    if parts.password is None:
        # a token as the user name: the client sends basic auth only with both a user and a password
        raise UserError(f"{source} ({mask_url(url)}) names a user and no password: set {user_env} and {password_env} "
                        "in the environment and leave the credentials out of the URL")
    os.environ.setdefault(user_env, urllib.parse.unquote(parts.username or ""))
    os.environ.setdefault(password_env, urllib.parse.unquote(parts.password))
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


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
