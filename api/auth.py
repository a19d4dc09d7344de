"""API keys: random bearer tokens, stored only as their SHA-256.

Keys carry 256 bits of randomness, so a fast unsalted hash is enough: nothing can be
guessed from it, and lookups stay one indexed query. With ``settings.auth_enabled`` false
(the embedded single-user default) every request belongs to the owner ``local``.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from api.errors import ApiError
from spartan.store import JobStore

LOCAL_OWNER = "local"
KEY_PREFIX = "spk_"
_OWNER = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")


def hash_key(key: str) -> str:
    """The stored form of a key (hex SHA-256)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(store: JobStore, *, owner: str) -> str:
    """Create a key for ``owner`` and return it; only its hash is stored.

    Raises:
        ValueError: if the owner name is empty, too long or has characters outside
            ``A-Z a-z 0-9 _ . @ -``.
    """
    if not _OWNER.match(owner):
        raise ValueError(f"owner: expected 1-100 characters from A-Za-z0-9_.@-, got {owner!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    store.add_api_key(owner=owner, key_hash=hash_key(key))
    return key


def owner_for_token(store: JobStore, token: str | None, *, auth_enabled: bool) -> str:
    """The owner a request acts for.

    Raises:
        ApiError: 401 when auth is on and the token is missing, unknown or revoked.
    """
    if not auth_enabled:
        return LOCAL_OWNER
    challenge = {"WWW-Authenticate": "Bearer"}
    if not token:
        raise ApiError(
            401,
            "missing API key (Authorization: Bearer <key>)",
            loc=["header", "authorization"],
            type="unauthorized",
            headers=challenge,
        )
    owner = store.owner_for_key_hash(key_hash=hash_key(token))
    if owner is None:
        raise ApiError(
            401,
            "unknown or revoked API key",
            loc=["header", "authorization"],
            type="unauthorized",
            headers=challenge,
        )
    return owner
