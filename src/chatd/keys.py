"""API keys: how they are made, hashed and shown, and the values the key store returns."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from chatd.errors import InputError

KEY_PREFIX = "chatd_"
# 32 random bytes, base64url: 43 characters and 256 bits of entropy.
_KEY = re.compile(r"chatd_[A-Za-z0-9_-]{43}")
_SHOWN = 8  # random characters kept for display: enough to tell keys apart, useless to guess


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's limits; None means no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None
    tokens_per_day: int | None = None
    budget_usd_per_day: float | None = None

    def over(self, base: KeyLimits) -> KeyLimits:
        """Return these limits with unset ones taken from base."""
        return KeyLimits(
            self.rpm if self.rpm is not None else base.rpm,
            self.tpm if self.tpm is not None else base.tpm,
            self.tokens_per_day if self.tokens_per_day is not None else base.tokens_per_day,
            self.budget_usd_per_day
            if self.budget_usd_per_day is not None
            else base.budget_usd_per_day,
        )


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, as far as anyone may see it: never the key itself."""

    id: str
    prefix: str
    user_id: str
    admin: bool
    limits: KeyLimits
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def usable(self, now: datetime) -> bool:
        """Tell whether the key may authenticate at this moment."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


def new_key() -> tuple[str, str, str]:
    """Return a fresh key, its SHA-256 hash and its display prefix."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key), key[: len(KEY_PREFIX) + _SHOWN]


def hash_key(key: str) -> str:
    """Return the hex SHA-256 of a key.

    A plain fast hash is right here, unlike for passwords: keys are 256 random bits, so no
    guessing attack works on the hash however fast it is, and a deterministic hash lets each
    request find its key by an indexed lookup instead of trying a slow hash per stored key.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(text: str) -> bool:
    """Tell whether text has the shape of a chatd key (checked before any lookup)."""
    return _KEY.fullmatch(text) is not None


def user_name(text: str) -> str:
    """Return a valid user name (1-255 printable characters, no spaces); InputError otherwise."""
    if not re.fullmatch(r"[\x21-\x7e]{1,255}", text):
        raise InputError("user name must be 1-255 printable ASCII characters without spaces")
    return text
