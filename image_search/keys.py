"""API keys with scopes (read < write < admin), stored hashed in the metadata database.

A key reads `ise_<key_id>_<secret>`: the key id is public (it is what `keys list` shows and
what a lookup is by), the secret is 256 random bits. Only sha256(secret) is stored.

Why sha256 and not bcrypt/argon2: slow hashes exist to make guessing *low-entropy* passwords
expensive after a database leak. A 256-bit random secret cannot be guessed whatever the hash
costs, so a slow hash would only add tens of milliseconds of CPU to every request (and hand an
attacker a cheap way to burn our CPU with bogus keys) for no gain.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar, get_args

from sqlalchemy import String, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from image_search.errors import BadRequest, NotFound, StoreUnavailable

# The metadata store's engine options (SQLite WAL, MySQL pool and timeouts) and its UTC column
# type: the key table lives in the same database, so it is opened the same way.
from image_search.stores.metadata import UTCDateTime, _make_engine, _now, session_for

T = TypeVar("T")
Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
# admin implies write implies read.
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}
PREFIX = "ise"
# What a presented key may look like at all; anything else is refused without a lookup.
MAX_KEY_CHARS = 128
_KEY = re.compile(r"^ise_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[\w .@:+-]{1,100}$")


def allows(have: Scope, need: Scope) -> bool:
    """Whether a key of scope `have` may call a route that needs `need`."""
    return _RANK[have] >= _RANK[need]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class _Base(DeclarativeBase):
    pass


class ApiKeyRow(_Base):
    __tablename__ = "api_key"
    __table_args__ = ({"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},)

    key_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(8))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    last4: Mapped[str] = mapped_column(String(4))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: never its secret."""

    key_id: str
    name: str
    scope: Scope
    last4: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class NewKey:
    """A key just created: `key` is shown once and never stored."""

    key: str
    info: KeyInfo


def _info(row: ApiKeyRow) -> KeyInfo:
    # A hand-edited row with an unknown scope grants the least, not an error per request.
    scope: Scope = row.scope if row.scope in SCOPES else "read"
    return KeyInfo(row.key_id, row.name, scope, row.last4, row.created_at, row.revoked_at)


def parse_key(presented: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, or None. Never raises, whatever the input."""
    if len(presented) > MAX_KEY_CHARS:
        return None
    match = _KEY.match(presented)
    return (match.group(1), match.group(2)) if match else None


class KeyStore:
    """The `api_key` table, over its own engine on the metadata database's URL."""

    def __init__(self, uri: str, timeout_s: float = 5.0) -> None:
        self.engine = _make_engine(uri, timeout_s)

    def _session(self) -> AbstractContextManager[Session]:
        return session_for(self.engine, "key store")

    def _read(self, fn: Callable[[Session], T]) -> T:
        with self._session() as s:
            return fn(s)

    def create_schema(self) -> None:
        """Create the key table if missing; idempotent, separate from the image table's."""
        try:
            _Base.metadata.create_all(self.engine)
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"key store unavailable: {exc.orig or exc}", "metadata") from exc

    def close(self) -> None:
        self.engine.dispose()

    def create(self, name: str, scope: str) -> NewKey:
        if scope not in SCOPES:
            raise BadRequest(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        if not _NAME.match(name):
            raise BadRequest("name: 1-100 letters, digits, spaces or . @ : + - _")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        key = f"{PREFIX}_{key_id}_{secret}"
        row = ApiKeyRow(
            key_id=key_id, name=name, scope=scope, secret_sha256=_digest(secret), last4=key[-4:]
        )
        with self._session() as s:
            s.add(row)
            s.commit()
            return NewKey(key, _info(row))

    def list_keys(self) -> list[KeyInfo]:
        stmt = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
        return self._read(lambda s: [_info(r) for r in s.scalars(stmt)])

    def revoke(self, key_id: str) -> KeyInfo:
        """Mark a key revoked (kept for the record); revoking twice keeps the first time."""
        with self._session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no key with id {key_id!r}")
            if row.revoked_at is None:
                s.execute(
                    update(ApiKeyRow).where(ApiKeyRow.key_id == key_id).values(revoked_at=_now())
                )
                s.commit()
                s.refresh(row)
            return _info(row)

    def verify(self, presented: str) -> Scope | None:
        """The scope of a valid, unrevoked key; None for anything else (malformed, unknown)."""
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        row = self._read(lambda s: s.get(ApiKeyRow, key_id))
        if row is None or row.revoked_at is not None:
            return None
        # Constant-time: the comparison must not tell how many leading characters matched.
        if not hmac.compare_digest(_digest(secret), row.secret_sha256):
            return None
        return _info(row).scope
