"""API keys: random bearer tokens, stored only as their SHA-256.

Keys carry 256 bits of randomness, so a fast unsalted hash is enough: nothing can be guessed
from it, and lookups stay one indexed query. ``spartan apikey create`` writes keys straight to
the job store; the API (``api.auth``) looks the owner of a request's key up by its hash, and
refuses revoked keys (``spartan apikey revoke KEY_ID``).
"""

from __future__ import annotations

import hashlib
import re
import secrets

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
    return issue_api_key(store, owner=owner)[1]


def issue_api_key(store: JobStore, *, owner: str) -> tuple[str, str]:
    """Like ``create_api_key``, returning ``(key id, key)``: the id names the key in
    ``spartan apikey list`` and ``revoke``."""
    if not _OWNER.match(owner):
        raise ValueError(f"owner: expected 1-100 characters from A-Za-z0-9_.@-, got {owner!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return store.add_api_key(owner=owner, key_hash=hash_key(key)), key


def owner_for_key(store: JobStore, key: str) -> str | None:
    """The owner of an unrevoked key, or None."""
    return store.owner_for_key_hash(key_hash=hash_key(key))
