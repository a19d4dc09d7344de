"""Who a request acts for: its bearer API key's owner (keys themselves: ``spartan.keys``).

With ``settings.auth_enabled`` false (the embedded single-user default) every request belongs
to the owner ``local``.
"""

from __future__ import annotations

from api.errors import ApiError
from spartan.keys import LOCAL_OWNER, owner_for_key
from spartan.store import JobStore

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def owner_for_token(store: JobStore, token: str | None, *, auth_enabled: bool) -> str:
    """The owner a request acts for.

    Raises:
        ApiError: 401 when auth is on and the token is missing, unknown or revoked.
    """
    if not auth_enabled:
        return LOCAL_OWNER
    if not token:
        raise _unauthorized("missing API key (Authorization: Bearer <key>)")
    owner = owner_for_key(store, token)
    if owner is None:
        raise _unauthorized("unknown or revoked API key")
    return owner


def _unauthorized(msg: str) -> ApiError:
    return ApiError(
        401, msg, loc=["header", "authorization"], type="unauthorized", headers=_CHALLENGE
    )
