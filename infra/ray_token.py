"""Ray's token authentication on the client side: the token Ray itself would use, and a new one
for a new cluster.

Ray looks for its token in $RAY_AUTH_TOKEN, then the file named by $RAY_AUTH_TOKEN_PATH, then
~/.ray/auth_token (https://docs.ray.io/en/latest/ray-security/token-auth.html). Requests to a
cluster's Jobs API carry it as `Authorization: Bearer <token>`; `foldwise cluster up` starts its
head with the same token, creating ~/.ray/auth_token first when there is none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from foldwise.infra.secrets import private_umask

DOCS = "https://docs.ray.io/en/latest/ray-security/token-auth.html"


class RayTokenError(RuntimeError):
    """Ray's token cannot be read (e.g. $RAY_AUTH_TOKEN_PATH names a missing file) or created."""


def _loader() -> Any:
    # private: no public API to read Ray's auth token in Ray 2.60 (the only public reader is the
    # `ray get-auth-token` CLI, a process start per request; see DOCS). It is the loader Ray's own
    # clients use, so the token found here is the one Ray would send.
    from ray._raylet import AuthenticationTokenLoader

    return AuthenticationTokenLoader.instance()


def _has_token(loader: Any) -> bool:
    from ray.exceptions import AuthenticationError

    try:
        return bool(loader.has_token(ignore_auth_mode=True))
    except AuthenticationError as e:
        raise RayTokenError(_first_line(e)) from None


def has_token() -> bool:
    """Whether Ray would find a token (whatever RAY_AUTH_MODE says); RayTokenError when it cannot read it."""
    return _has_token(_loader())


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer <token>` with the token Ray would load, or {} when there is none."""
    loader = _loader()
    if not _has_token(loader):
        return {}
    return {"Authorization": f"Bearer {loader.get_raw_token(ignore_auth_mode=True).strip()}"}


def token_source() -> str:
    """Where Ray takes its token from, in its own order of precedence (for messages)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"


def ensure_ray_token() -> str:
    """Ray's token auth needs a token: use the one Ray would find, else create ~/.ray/auth_token
    with Ray's public `ray get-auth-token --generate`. Returns a line saying which."""
    loader = _loader()
    if _has_token(loader):
        return f"Ray token authentication: on (token from {token_source()})"
    with private_umask():  # Ray writes the token with open(): 0600 from its first byte only under umask 077
        done = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    if done.returncode != 0:
        raise RayTokenError(f"`ray get-auth-token --generate` failed (exit {done.returncode}): "
                            f"{done.stderr.strip()[-500:]}")
    loader.reset_cache()  # this process reads the new token from now on
    return "Ray token authentication: on (new token written to ~/.ray/auth_token)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
