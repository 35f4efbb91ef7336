"""Metadata rows in SQLite (embedded) or MySQL/MariaDB (production) through SQLAlchemy 2.0."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Integer,
    String,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import CursorResult, Dialect, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from image_search.errors import Conflict, StoreUnavailable
from image_search.records import ImageRecord, NewImage

logger = logging.getLogger(__name__)
T = TypeVar("T")

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes in, UTC-aware out, on SQLite and MySQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        # MySQL's plain DATETIME drops microseconds: the record returned by add() would then
        # differ from the one read back, and rows written in the same second could not be
        # ordered by time. DATETIME(6) keeps them (stored as UTC, no 2038 limit of TIMESTAMP).
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Image(Base):
    __tablename__ = "image"
    __table_args__ = (
        Index("ix_image_sha256", "sha256"),
        Index("ix_image_hash_code", "hash_code"),
        Index("ix_image_milvus_id", "milvus_id"),
        Index("ix_image_created_at", "created_at"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    meta_uuid: Mapped[str] = mapped_column(String(36), unique=True)
    hash_code: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    milvus_id: Mapped[int] = mapped_column(BigInteger)
    file_name: Mapped[str] = mapped_column(String(255))
    file_path: Mapped[str] = mapped_column(String(255))
    mime: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # Free-form labels (from a backfill manifest or the upload form), stored as a JSON list.
    tags: Mapped[str] = mapped_column(String(2048), default="[]")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now, onupdate=_now)

    def record(self) -> ImageRecord:
        return ImageRecord(
            id=self.id,
            meta_uuid=self.meta_uuid,
            hash_code=self.hash_code,
            sha256=self.sha256,
            milvus_id=self.milvus_id,
            file_name=self.file_name,
            file_path=self.file_path,
            mime=self.mime,
            size_bytes=self.size_bytes,
            width=self.width,
            height=self.height,
            created_at=self.created_at,
            updated_at=self.updated_at,
            tags=tuple(json.loads(self.tags or "[]")),
        )


def _make_engine(uri: str, timeout_s: float) -> Engine:
    if uri.startswith("sqlite"):
        engine = create_engine(uri, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _rec: Any) -> None:
            # WAL lets the service read while a backfill job (another process) writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # pre_ping: a MySQL restart must not leave dead pooled connections behind.
    return create_engine(
        uri,
        pool_pre_ping=True,
        pool_recycle=3600,
        pool_size=5,
        max_overflow=5,
        connect_args={
            "connect_timeout": max(1, int(timeout_s)),
            "read_timeout": 30,
            "write_timeout": 30,
            "charset": "utf8mb4",
        },
    )


class SqlMetadataStore:
    """MetadataStore over any SQLAlchemy URL; the row is the source of truth."""

    name = "metadata"

    def __init__(self, uri: str, timeout_s: float = 5.0) -> None:
        self.uri = uri
        self.engine = _make_engine(uri, timeout_s)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                yield session
        except (Conflict, StoreUnavailable):
            raise
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(
                f"metadata store unavailable: {exc.orig or exc}", "metadata"
            ) from exc

    def _read(self, fn: Callable[[Session], T]) -> T:
        with self._session() as s:
            return fn(s)

    def create_schema(self) -> None:
        try:
            Base.metadata.create_all(self.engine)
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"metadata store unavailable: {exc.orig}", "metadata") from exc

    def ping(self) -> None:
        self._read(lambda s: s.execute(select(1)).scalar_one())

    def add(self, new: NewImage) -> ImageRecord:
        row = Image(
            meta_uuid=new.meta_uuid,
            hash_code=new.hash_code,
            sha256=new.sha256,
            milvus_id=new.milvus_id,
            file_name=new.file_name[:255],
            file_path=new.file_path,
            mime=new.mime,
            size_bytes=new.size_bytes,
            width=new.width,
            height=new.height,
            tags=json.dumps(list(new.tags)),
        )
        try:
            with self._session() as s:
                s.add(row)
                s.commit()
                return row.record()
        except IntegrityError as exc:
            raise Conflict(f"meta_uuid {new.meta_uuid!r} already exists") from exc

    def get(self, meta_uuid: str) -> ImageRecord | None:
        def q(s: Session) -> ImageRecord | None:
            row = s.scalars(select(Image).where(Image.meta_uuid == meta_uuid)).first()
            return row.record() if row else None

        return self._read(q)

    def page(self, offset: int, limit: int) -> list[ImageRecord]:
        stmt = select(Image).order_by(Image.id.desc()).offset(offset).limit(limit)
        return self._read(lambda s: [r.record() for r in s.scalars(stmt)])

    def count(self) -> int:
        return self._read(lambda s: int(s.execute(select(func.count(Image.id))).scalar_one()))

    def delete(self, meta_uuid: str) -> ImageRecord | None:
        with self._session() as s:
            row = s.scalars(select(Image).where(Image.meta_uuid == meta_uuid)).first()
            if row is None:
                return None
            rec = row.record()
            s.delete(row)
            s.commit()
            return rec

    def references(self, sha256: str) -> int:
        stmt = select(func.count(Image.id)).where(Image.sha256 == sha256)
        return self._read(lambda s: int(s.execute(stmt).scalar_one()))

    def by_milvus_ids(self, ids: Sequence[int]) -> dict[int, list[ImageRecord]]:
        if not ids:
            return {}
        stmt = select(Image).where(Image.milvus_id.in_(list(ids))).order_by(Image.id)

        def q(s: Session) -> dict[int, list[ImageRecord]]:
            out: dict[int, list[ImageRecord]] = {}
            for row in s.scalars(stmt):
                out.setdefault(row.milvus_id, []).append(row.record())
            return out

        return self._read(q)

    def existing_uuids(self, meta_uuids: Sequence[str]) -> set[str]:
        if not meta_uuids:
            return set()
        stmt = select(Image.meta_uuid).where(Image.meta_uuid.in_(list(meta_uuids)))
        return self._read(lambda s: set(s.scalars(stmt)))

    def iter_content(self) -> Iterator[tuple[str, int, str]]:
        stmt = select(Image.sha256, Image.milvus_id, func.min(Image.file_path)).group_by(
            Image.sha256, Image.milvus_id
        )
        rows = self._read(lambda s: [(str(a), int(b), str(c)) for a, b, c in s.execute(stmt)])
        yield from rows

    def delete_all(self) -> int:
        with self._session() as s:
            result: CursorResult[Any] = s.execute(delete(Image))  # type: ignore[assignment]
            n = result.rowcount
            s.commit()
            return int(n or 0)
