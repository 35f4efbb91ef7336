"""Metadata rows in SQLite (embedded) or MySQL/MariaDB (production) through SQLAlchemy 2.0.

Beside the `image` rows, the `content` table arbitrates the stored content that rows share,
across threads, replicas and jobs (the protocol is in image_search.indexing). Its rules here:
- every write transaction's FIRST statement is a write (an upsert or an UPDATE), so SQLite
  takes its database write lock and InnoDB an exclusive row lock before anything is read: no
  transaction decides on a stale read, and reads inside one use FOR UPDATE (latest version);
- locks are taken content row first, then image rows, in every transaction (and in milvus_id
  order when several content rows are locked), which keeps InnoDB deadlocks rare; one that
  happens anyway is retried (_write);
- `refs` counts committed image rows exactly (changed in the transaction that inserts or
  deletes a row), `pins` counts writers in flight; a row goes `purging` with a fresh token in
  the transaction that brings refs + pins to 0, and only that token's holder deletes data.

The `image_tag` table indexes each row's tags for tag filters (see ImageTag); `row_counter`
keeps the number of image rows (see RowCounter).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    case,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import CursorResult, Dialect, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, InvalidatePoolError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeDecorator, TypeEngine

from image_search.errors import Conflict, StoreUnavailable
from image_search.records import (
    TAG_MAX_CHARS,
    TAGS_MAX_COUNT,
    ImageRecord,
    NewImage,
    normal_tags,
    tags_json,
)
from image_search.stores.base import (
    LIVE,
    PURGING,
    ContentKey,
    IdRange,
    PinLost,
    Purge,
    RefDrift,
    Removal,
    TagCount,
    Wipe,
)

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


@contextmanager
def database_errors(store: str, keep: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Database failures inside become StoreUnavailable naming `store` (a 503); errors in
    `keep` pass unchanged, for the caller to turn into something else."""
    try:
        yield
    except keep:
        raise
    except (OperationalError, DBAPIError) as exc:
        raise StoreUnavailable(f"{store} unavailable: {exc.orig or exc}", "metadata") from exc


@contextmanager
def session_for(
    engine: Engine, store: str, keep: tuple[type[Exception], ...] = ()
) -> Iterator[Session]:
    """A session whose database failures are handled as database_errors says."""
    with database_errors(store, keep), Session(engine, expire_on_commit=False) as session:
        yield session


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
        return _record_of(self)


def _record_of(row: Any) -> ImageRecord:
    """The record of an Image instance, or of a plain row of IMAGE_COLUMNS (same names)."""
    return ImageRecord(
        id=row.id,
        meta_uuid=row.meta_uuid,
        hash_code=row.hash_code,
        sha256=row.sha256,
        milvus_id=row.milvus_id,
        file_name=row.file_name,
        file_path=row.file_path,
        mime=row.mime,
        size_bytes=row.size_bytes,
        width=row.width,
        height=row.height,
        created_at=row.created_at,
        updated_at=row.updated_at,
        tags=tuple(json.loads(row.tags or "[]")),
    )


# Reads that only return records select these columns, not the mapped class: plain rows skip
# the ORM's per-instance state and identity map, which were a third of a search's CPU in
# the Indexer (py-spy --gil, 16 clients, 26 rows per search).
IMAGE_COLUMNS = tuple(Image.__table__.columns)


class Content(Base):
    """One stored content (object, vector, thumbnails) and who may touch it; see the docstring."""

    __tablename__ = "content"
    __table_args__ = (
        Index("ix_content_token", "token"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},
    )

    milvus_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(String(64), default="")  # "" for a lone vector's claim
    file_path: Mapped[str] = mapped_column(String(255), default="")
    refs: Mapped[int] = mapped_column(Integer, default=0)
    pins: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(8), default=LIVE)
    token: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    def key(self) -> ContentKey:
        return ContentKey(self.milvus_id, self.sha256, self.file_path)


class ImageTag(Base):
    """One (image, tag): what tag filters (lists, counts, search) look up.

    The image row's JSON `tags` stays what the API returns: the tags in the order given, read
    with the row and no join. This table is derived from the very same tuple, in the same
    transaction (tags never change after a row is written), and goes with its row through the
    foreign key's ON DELETE CASCADE, so the two cannot disagree; create_schema derives it for
    rows written before it existed.
    """

    __tablename__ = "image_tag"
    __table_args__ = (
        Index("ix_image_tag_tag", "tag", "image_id"),
        {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},
    )

    image_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("image.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    # utf8mb4_bin on MySQL, BINARY on SQLite: tags match exactly, case included, on both.
    tag: Mapped[str] = mapped_column(String(TAG_MAX_CHARS), primary_key=True)


class RowCounter(Base):
    """Counts kept exact by the transactions that change them: the image count is one row
    read at any size, where COUNT(*) reads a whole index (168 ms at 1M rows on MariaDB).

    Every transaction that inserts or deletes image rows changes `images` last (after the
    content and image rows: the lock order), by its net change. Rows written around the
    store (a bulk load) are counted again by recount(), which reconcile --fix runs. One more
    row, TAGS_CHECKED, is a watermark rather than a count (see _fill_tags).
    """

    __tablename__ = "row_counter"
    __table_args__ = ({"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"},)

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


IMAGES = "images"  # RowCounter.name of the image row count
# RowCounter.name of a watermark, not a count: every image row up to this id has its image_tag
# rows (create_schema's tag fill starts above it).
TAGS_CHECKED = "tags_checked"
# Rows that existed before the content table get this token (tokens are only ever compared
# on one row, and purge tokens are fresh uuids, so one shared value is safe).
MIGRATED_TOKEN = "migrated"
# An abandoned purge's updated_at: older than any lease, so the next writer takes it over.
ABANDONED_AT = datetime(2000, 1, 1, tzinfo=UTC)
# Rows per transaction when create_schema indexes the tags of rows from before image_tag.
TAG_FILL_BATCH = 1000
# A row this old is committed with everything it will ever have: no transaction lives that
# long (lock waits and reads time out within a minute), so the tag fill's watermark may pass it.
SETTLED_S = 600
# Rows per read when iter_content walks the library (keyset pages, bounded memory per page).
CONTENT_PAGE = 10_000
# MySQL/MariaDB: deadlock victim, lock wait timeout. Both roll the transaction back whole.
_RETRYABLE_MYSQL = (1213, 1205)
WRITE_ATTEMPTS = 6
# A pooled MySQL connection unused this long is pinged before its next use (_ping_when_idle).
PING_IDLE_S = 1.0


def _token() -> str:
    return uuid.uuid4().hex


def _retryable(exc: BaseException | None) -> bool:
    orig = getattr(exc, "orig", None)
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] in _RETRYABLE_MYSQL


def _make_engine(uri: str, timeout_s: float) -> Engine:
    if uri.startswith("sqlite"):
        engine = create_engine(uri, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _rec: Any) -> None:
            # WAL lets the service read while a backfill job (another process) writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Off by default in SQLite: image_tag's rows go with their image row (CASCADE).
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_engine(
        uri,
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
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """A MySQL restart must not leave dead pooled connections behind, so a connection that sat
    idle is pinged before use. Not every checkout, as `pool_pre_ping` would: that is one more
    round trip per query, a fifth of a search's time in the Indexer (py-spy, 16 clients). A
    connection that dies while in busy use fails its query once (a 503); SQLAlchemy then
    sees the disconnect and replaces every pooled connection older than it."""

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _idle_since(_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()  # a new connection needs no ping

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < PING_IDLE_S:
            return
        try:
            engine.dialect.do_ping(conn)  # what pool_pre_ping calls: any MySQL driver
        except engine.dialect.loaded_dbapi.Error as exc:
            # The server went away: SQLAlchemy retries the checkout on a new connection,
            # and replaces every older pooled one too, as dead as this one.
            raise InvalidatePoolError(f"pooled connection is dead: {exc}") from exc


class SqlMetadataStore:
    """MetadataStore over any SQLAlchemy URL; the row is the source of truth."""

    name = "metadata"

    def __init__(self, uri: str, timeout_s: float = 5.0) -> None:
        self.uri = uri
        self.engine = _make_engine(uri, timeout_s)

    def _session(self) -> contextlib.AbstractContextManager[Session]:
        # IntegrityError passes: a taken meta_uuid is the caller's Conflict, not an outage.
        return session_for(self.engine, "metadata store", keep=(IntegrityError,))

    def _read(self, fn: Callable[[Session], T]) -> T:
        with self._session() as s:
            return fn(s)

    def _records(self, stmt: Select[Any]) -> list[ImageRecord]:
        """The records of a select over IMAGE_COLUMNS, on a bare connection: a read that
        builds no ORM objects needs no Session either (its set-up is per call)."""
        with database_errors("metadata store"), self.engine.connect() as conn:
            return [_record_of(row) for row in conn.execute(stmt)]

    def _write(self, fn: Callable[[Session], T]) -> T:
        """Run fn in one transaction and commit; a deadlock victim (MySQL) is run again."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._session() as s:
                    out = fn(s)
                    s.commit()
                    return out
            except StoreUnavailable as exc:
                if attempt + 1 == WRITE_ATTEMPTS or not _retryable(exc.__cause__):
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    def create_schema(self) -> None:
        try:
            had_content = inspect(self.engine).has_table(Content.__tablename__)
            Base.metadata.create_all(self.engine)
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"metadata store unavailable: {exc.orig}", "metadata") from exc
        if not had_content:
            # A database from before the content table: count its rows' references once.
            try:
                n = self._write(self._fill_content)
            except IntegrityError:
                n = 0  # another replica filled it at the same moment
            logger.info("content table created; %d contents counted from existing rows", n)
        tagged = self._fill_tags()
        if tagged:
            logger.info("image_tag: %d tags indexed from existing rows", tagged)
        self._start_counter()

    def _start_counter(self) -> None:
        """Count the image rows once, for a database from before row_counter (or new)."""
        if self._read(lambda s: s.get(RowCounter, IMAGES)) is not None:
            return
        # INSERT ... SELECT in one statement: InnoDB locks what it counts, so a row being
        # inserted meanwhile is either counted here or waits and bumps the new counter.
        stmt = insert(RowCounter).from_select(
            ["name", "value"], select(literal(IMAGES), func.count(Image.id))
        )
        try:
            self._write(lambda s: s.execute(stmt))
        except IntegrityError:
            return  # another replica counted at the same moment
        logger.info("row_counter: %d image rows counted", self.count())

    @staticmethod
    def _bump(s: Session, delta: int) -> None:
        """Change the image count by delta, last in the transaction (the lock order)."""
        if delta:
            s.execute(update(RowCounter).where(RowCounter.name == IMAGES)
                      .values(value=RowCounter.value + delta))  # fmt: skip

    def recount(self) -> tuple[int, int]:
        """Set the image count from the rows themselves: (count kept before, rows)."""

        def tx(s: Session) -> tuple[int, int]:
            # The counter row first: it waits for writers in flight, then holds them off.
            s.execute(update(RowCounter).where(RowCounter.name == IMAGES)
                      .values(value=RowCounter.value))  # fmt: skip
            kept = s.get(RowCounter, IMAGES, populate_existing=True, with_for_update=True)
            rows = int(s.execute(select(func.count(Image.id))).scalar_one())
            if kept is None:
                s.add(RowCounter(name=IMAGES, value=rows))
                return -1, rows
            before, kept.value = int(kept.value), rows
            return before, rows

        return self._write(tx)

    def _fill_tags(self) -> int:
        """Index the tags of rows that have tags and no image_tag rows: rows from before the
        table, or written by an older version during a rolling upgrade.

        Run at every start, above the watermark of the last run, so a start costs the same at
        any size (the whole table: 3 s at 1M rows on MariaDB). Idempotent and resumable: keyset
        pages, each inserted in its own transaction, duplicates ignored, so replicas starting
        together or a rerun after a crash converge on the same rows.
        """
        kept = self._read(lambda s: s.get(RowCounter, TAGS_CHECKED))
        after, n = (int(kept.value) if kept else 0), 0
        settled = self._read(self._settled_id)  # read before the scan: covered by it
        while True:
            batch = self._read(functools.partial(self._untagged_rows, after=after))
            if not batch:
                if settled is not None and (kept is None or settled > kept.value):
                    self._raise_tags_checked(settled)
                return n
            rows = [{"image_id": int(i), "tag": t} for i, js in batch for t in _tag_keys(js)]
            try:
                n += self._write(functools.partial(self._insert_tags, rows=rows))
            except IntegrityError:
                continue  # a row was deleted meanwhile (SQLite's foreign key): read again
            after = int(batch[-1][0])

    @staticmethod
    def _settled_id(s: Session) -> int | None:
        """The id of the newest row older than SETTLED_S (on ix_image_created_at: one step)."""
        cutoff = _now() - timedelta(seconds=SETTLED_S)
        stmt = (select(Image.id).where(Image.created_at < cutoff)
                .order_by(Image.created_at.desc()).limit(1))  # fmt: skip
        found = s.execute(stmt).scalar()
        return None if found is None else int(found)

    def _raise_tags_checked(self, upto: int) -> None:
        """Move the watermark up to `upto`. Only a saving: if it fails (another replica wrote
        it first, a lock), the next start scans a little more, and nothing is wrong."""

        def tx(s: Session) -> None:
            # A write first (the module's rule), then the insert if there was nothing to raise.
            raised = s.execute(update(RowCounter)
                               .where(RowCounter.name == TAGS_CHECKED, RowCounter.value < upto)
                               .values(value=upto))  # fmt: skip
            if not _rowcount(raised) and s.get(RowCounter, TAGS_CHECKED) is None:
                s.add(RowCounter(name=TAGS_CHECKED, value=upto))

        try:
            self._write(tx)
        except (IntegrityError, StoreUnavailable) as exc:
            logger.info("tag watermark not moved (%s); the next start checks those rows", exc)

    @staticmethod
    def _untagged_rows(s: Session, after: int) -> list[tuple[int, str]]:
        """(id, JSON tags) of the next rows after `after` with tags but no image_tag rows."""
        stmt = (
            select(Image.id, Image.tags)
            .where(Image.id > after, Image.tags != "[]",
                   ~exists().where(ImageTag.image_id == Image.id))
            .order_by(Image.id)
            .limit(TAG_FILL_BATCH)
        )  # fmt: skip
        return [(int(i), str(js)) for i, js in s.execute(stmt)]

    def _insert_tags(self, s: Session, rows: list[dict[str, Any]]) -> int:
        """INSERT tag rows, ignoring those that exist (another replica filling too)."""
        if not rows:
            return 0
        stmt: Insert
        if self.engine.dialect.name == "sqlite":
            stmt = sqlite_insert(ImageTag).on_conflict_do_nothing()
        else:
            # IGNORE also skips a row whose image was deleted meanwhile (foreign key).
            stmt = mysql_insert(ImageTag).prefix_with("IGNORE")
        s.execute(stmt, rows)
        return len(rows)

    @staticmethod
    def _fill_content(s: Session) -> int:
        """Insert a live content row for every milvus_id that rows use and that has none."""
        have = select(Content.milvus_id).where(Content.milvus_id == Image.milvus_id)
        groups = (
            select(Image.milvus_id, func.min(Image.sha256), func.min(Image.file_path),
                   func.count(Image.id))
            .where(~have.exists())
            .group_by(Image.milvus_id)
        )  # fmt: skip
        n = 0
        for mid, sha, path, count in s.execute(groups).all():
            s.add(_content_row(ContentKey(int(mid), sha, path), int(count), LIVE, MIGRATED_TOKEN))
            n += 1
        return n

    def ping(self) -> None:
        self._read(lambda s: s.execute(select(1)).scalar_one())

    # -- pins and commits ---------------------------------------------------------------------
    def _upsert(self, s: Session, key: ContentKey, values: dict[str, Any],
                on_conflict: dict[str, Any]) -> None:  # fmt: skip
        """INSERT the content row, or apply on_conflict to the existing one: one write."""
        row = {"milvus_id": key.milvus_id, "sha256": key.sha256, "file_path": key.file_path,
               "updated_at": _now(), **values}  # fmt: skip
        stmt: Insert
        if self.engine.dialect.name == "sqlite":
            stmt = (
                sqlite_insert(Content)
                .values(**row)
                .on_conflict_do_update(index_elements=[Content.milvus_id], set_=on_conflict)
            )
        else:
            stmt = mysql_insert(Content).values(**row).on_duplicate_key_update(**on_conflict)
        s.execute(stmt)

    @staticmethod
    def _locked(s: Session, milvus_id: int) -> Content | None:
        stmt = select(Content).where(Content.milvus_id == milvus_id).with_for_update()
        return s.scalars(stmt.execution_options(populate_existing=True)).first()

    @staticmethod
    def _stale(row: Content, lease_s: float) -> bool:
        return row.updated_at < _now() - timedelta(seconds=lease_s)

    def _pin_in(self, s: Session, key: ContentKey, n: int, lease_s: float) -> str | None:
        token = _token()
        live = Content.state == LIVE
        self._upsert(
            s, key, {"refs": 0, "pins": n, "state": LIVE, "token": token},
            {"pins": case((live, Content.pins + n), else_=Content.pins),
             "updated_at": case((live, literal(_now(), UTCDateTime())), else_=Content.updated_at)},
        )  # fmt: skip
        row = self._locked(s, key.milvus_id)
        if row is None:
            raise StoreUnavailable("content row vanished inside its transaction", "metadata")
        if row.state == LIVE:
            return row.token
        if not self._stale(row, lease_s):
            return None
        # A purge that outlived its lease: its purger crashed. Whatever it deleted, this
        # writer puts back (object if missing, vector upsert) before its row is committed.
        logger.warning("taking over a stale purge of content %d", key.milvus_id)
        row.state, row.refs, row.pins, row.token = LIVE, 0, n, token
        row.sha256 = key.sha256 or row.sha256
        row.file_path = key.file_path or row.file_path
        row.updated_at = _now()
        return token

    def pin(self, keys: Sequence[ContentKey], lease_s: float) -> dict[int, str]:
        counts = Counter(k.milvus_id for k in keys)
        first = {k.milvus_id: k for k in reversed(keys)}

        def tx(s: Session) -> dict[int, str]:
            out: dict[int, str] = {}
            for mid in sorted(counts):  # one lock order for every writer
                token = self._pin_in(s, first[mid], counts[mid], lease_s)
                if token is not None:
                    out[mid] = token
            return out

        return self._write(tx)

    def hold(self, milvus_id: int) -> str | None:
        def tx(s: Session) -> str | None:
            r = s.execute(
                update(Content)
                .where(Content.milvus_id == milvus_id, Content.state == LIVE, Content.refs > 0)
                .values(pins=Content.pins + 1, updated_at=_now())
            )
            if not _rowcount(r):
                return None
            row = self._locked(s, milvus_id)
            return None if row is None else row.token

        return self._write(tx)

    def _commit_in(self, s: Session, new: NewImage, token: str) -> Image:
        r = s.execute(
            update(Content)
            .where(Content.milvus_id == new.milvus_id, Content.token == token,
                   Content.state == LIVE, Content.pins > 0)
            .values(refs=Content.refs + 1, pins=Content.pins - 1, updated_at=_now())
        )  # fmt: skip
        if not _rowcount(r):
            raise PinLost(
                f"content of {new.meta_uuid!r} was deleted while it was being written; retry"
            )
        row = _image_row(new)
        s.add(row)
        try:
            s.flush()
        except IntegrityError as exc:
            raise Conflict(f"meta_uuid {new.meta_uuid!r} already exists") from exc
        # The tag index, in the row's own transaction (after the image row: the lock order).
        s.add_all([ImageTag(image_id=row.id, tag=t) for t in _tag_keys(row.tags)])
        s.flush()
        self._bump(s, 1)
        return row

    def commit(self, new: NewImage, token: str) -> ImageRecord:
        return self._write(lambda s: self._commit_in(s, new, token)).record()

    def add(self, new: NewImage) -> ImageRecord:
        key = ContentKey(new.milvus_id, new.sha256, new.file_path)

        def tx(s: Session) -> Image:
            token = self._pin_in(s, key, 1, lease_s=float("inf"))
            if token is None:
                raise StoreUnavailable("this content is being deleted; retry", "metadata")
            return self._commit_in(s, new, token)

        return self._write(tx).record()

    def _drop_one(self, s: Session, milvus_id: int, refs: int, pins: int) -> Purge | None:
        """Apply a drop of one reference or pin to the locked row; the purge when it was last."""
        row = self._locked(s, milvus_id)
        if row is None:
            return None
        row.refs, row.pins = max(0, row.refs - refs), max(0, row.pins - pins)
        row.updated_at = _now()
        if row.refs + row.pins > 0:
            return None
        row.state, row.token = PURGING, _token()
        return Purge(row.key(), row.token)

    def release(self, milvus_id: int, token: str) -> Purge | None:
        def tx(s: Session) -> Purge | None:
            r = s.execute(
                update(Content)
                .where(Content.milvus_id == milvus_id, Content.token == token,
                       Content.state == LIVE, Content.pins > 0)
                .values(updated_at=_now())
            )  # fmt: skip
            if not _rowcount(r):
                raise PinLost(f"the pin of content {milvus_id} is gone")
            return self._drop_one(s, milvus_id, refs=0, pins=1)

        return self._write(tx)

    # -- purges -------------------------------------------------------------------------------
    def claim(self, key: ContentKey, lease_s: float) -> Purge | None:
        def tx(s: Session) -> Purge | None:
            token = _token()
            self._upsert(
                s,
                key,
                {"refs": 0, "pins": 0, "state": PURGING, "token": token},
                {"updated_at": Content.updated_at},
            )  # a no-op that still locks the row
            row = self._locked(s, key.milvus_id)
            if row is None or row.state == LIVE:
                return None
            if row.token != token:
                if not self._stale(row, lease_s):
                    return None
                logger.warning("taking over a stale purge of content %d", key.milvus_id)
                row.token, row.updated_at = token, _now()
                row.sha256 = row.sha256 or key.sha256
                row.file_path = row.file_path or key.file_path
            return Purge(row.key(), token)

        return self._write(tx)

    def content_state(self, milvus_id: int) -> str | None:
        stmt = select(Content.state).where(Content.milvus_id == milvus_id)
        return self._read(lambda s: s.scalars(stmt).first())

    def end_purge(self, token: str, milvus_ids: Sequence[int] | None = None) -> int:
        stmt = delete(Content).where(Content.token == token, Content.state == PURGING)
        if milvus_ids is not None:
            stmt = stmt.where(Content.milvus_id.in_(list(milvus_ids)))
        return self._write(lambda s: _rowcount(s.execute(stmt)))

    def abandon_purge(self, token: str, milvus_ids: Sequence[int]) -> int:
        stmt = (
            update(Content)
            .where(Content.token == token, Content.state == PURGING,
                   Content.milvus_id.in_(list(milvus_ids)))
            .values(updated_at=ABANDONED_AT)
        )  # fmt: skip
        return self._write(lambda s: _rowcount(s.execute(stmt)))

    # -- rows -----------------------------------------------------------------------------
    def get(self, meta_uuid: str) -> ImageRecord | None:
        rows = self._records(select(*IMAGE_COLUMNS).where(Image.meta_uuid == meta_uuid))
        return rows[0] if rows else None

    def get_many(self, meta_uuids: Sequence[str]) -> dict[str, ImageRecord]:
        if not meta_uuids:
            return {}
        stmt = select(*IMAGE_COLUMNS).where(Image.meta_uuid.in_(list(set(meta_uuids))))
        return {rec.meta_uuid: rec for rec in self._records(stmt)}

    def page(
        self, offset: int, limit: int, tags: Sequence[str] = (), before: int | None = None
    ) -> list[ImageRecord]:
        stmt = _tagged(select(*IMAGE_COLUMNS), tags)
        if before is not None:
            # Keyset: a range on the primary key, as fast at the millionth row as at the first
            # (OFFSET reads and drops every row it skips: 1.6 s at 1M rows on MariaDB).
            stmt = stmt.where(Image.id < before)
        stmt = stmt.order_by(Image.id.desc()).offset(offset).limit(limit)
        return self._records(stmt)

    def count(self, tags: Sequence[str] = ()) -> int:
        if not tags:
            kept = self._read(lambda s: s.get(RowCounter, IMAGES))
            if kept is not None:
                return int(kept.value)
        stmt = _tagged(select(func.count(Image.id)), tags)
        return self._read(lambda s: int(s.execute(stmt).scalar_one()))

    def tag_counts(self, limit: int) -> list[TagCount]:
        stmt = (
            select(ImageTag.tag, func.count(ImageTag.image_id).label("n"))
            .group_by(ImageTag.tag)
            .order_by(func.count(ImageTag.image_id).desc(), ImageTag.tag)
            .limit(limit)
        )
        return self._read(lambda s: [TagCount(str(t), int(n)) for t, n in s.execute(stmt)])

    def tagged_contents(self, tags: Sequence[str], limit: int) -> list[int] | None:
        if not tags:
            raise ValueError("tagged_contents needs at least one tag")
        stmt = _tagged(select(Image.milvus_id).distinct(), tags).limit(limit + 1)
        ids = self._read(lambda s: [int(m) for m in s.scalars(stmt)])
        return None if len(ids) > limit else ids

    def delete(self, meta_uuid: str) -> Removal | None:
        while True:
            rec = self.get(meta_uuid)
            if rec is None:
                return None
            out = self._write(functools.partial(self._delete_in, rec=rec))
            if out is not None:
                return out
            # The row changed between the read and the lock (deleted and re-added): again.

    def _delete_in(self, s: Session, rec: ImageRecord) -> Removal | None:
        mid = rec.milvus_id
        # The lock first (content row, then the image row), as every writer takes them.
        had_content = _rowcount(s.execute(
            update(Content).where(Content.milvus_id == mid).values(updated_at=_now())
        ))  # fmt: skip
        stmt = select(Image).where(Image.meta_uuid == rec.meta_uuid).with_for_update()
        row = s.scalars(stmt).first()
        if row is None or row.id != rec.id:
            return None
        record = row.record()
        s.delete(row)
        s.flush()
        self._bump(s, -1)
        if had_content:
            return Removal(record, self._drop_one(s, mid, refs=1, pins=0))
        # Rows older than the content table that create_schema did not see: count them now.
        left = int(s.execute(
            select(func.count(Image.id)).where(Image.milvus_id == mid).with_for_update()
        ).scalar_one())  # fmt: skip
        key = ContentKey(mid, record.sha256, record.file_path)
        token = MIGRATED_TOKEN if left else _token()
        s.add(_content_row(key, left, LIVE if left else PURGING, token))
        return Removal(record, None if left else Purge(key, token))

    def references(self, sha256: str) -> int:
        stmt = select(func.count(Image.id)).where(Image.sha256 == sha256)
        return self._read(lambda s: int(s.execute(stmt).scalar_one()))

    def by_milvus_ids(
        self, ids: Sequence[int], tags: Sequence[str] = ()
    ) -> dict[int, list[ImageRecord]]:
        if not ids:
            return {}
        stmt = _tagged(select(*IMAGE_COLUMNS).where(Image.milvus_id.in_(list(ids))), tags)
        stmt = stmt.order_by(Image.id)

        out: dict[int, list[ImageRecord]] = {}
        for rec in self._records(stmt):
            out.setdefault(rec.milvus_id, []).append(rec)
        return out

    def existing_uuids(self, meta_uuids: Sequence[str]) -> set[str]:
        if not meta_uuids:
            return set()
        stmt = select(Image.meta_uuid).where(Image.meta_uuid.in_(list(meta_uuids)))
        # On a bare connection, as _records: every upload asks this first, and a Session's
        # set-up was two thirds of its 1.2 ms (SQLite, one upload at a time).
        with database_errors("metadata store"), self.engine.connect() as conn:
            return set(conn.execute(stmt).scalars())

    def content_counts(self, after: int, limit: int) -> list[tuple[int, int]]:
        # Keyset pages on ix_image_milvus_id: each page costs the same however deep it is.
        stmt = (
            select(Image.milvus_id, func.count(Image.id))
            .where(Image.milvus_id > after)
            .group_by(Image.milvus_id)
            .order_by(Image.milvus_id)
            .limit(limit)
        )
        return self._read(lambda s: [(int(m), int(n)) for m, n in s.execute(stmt)])

    def iter_content(self, within: IdRange | None = None) -> Iterator[tuple[str, int, str]]:
        # Keyset pages on ix_image_milvus_id, one short read each: no transaction held open
        # while the caller works, and one page in memory at a time.
        # Bounds within the signed 64 bits a database's INTEGER takes.
        lo, hi = within or (-(2**63) + 1, 2**63)
        after, upto = lo - 1, hi - 1
        while True:
            page = self._read(functools.partial(_content_page, after=after, upto=upto))
            if not page:
                return
            yield from page
            after = page[-1][1]

    def delete_all(self) -> Wipe:
        token = _token()

        def tx(s: Session) -> Wipe:
            # Content rows first (the lock order); a new token invalidates every pin. The
            # image_tag rows go with the image rows (ON DELETE CASCADE).
            s.execute(update(Content).values(state=PURGING, token=token, refs=0, pins=0,
                                             updated_at=_now()))  # fmt: skip
            n = _rowcount(s.execute(delete(Image)))
            self._bump(s, -n)
            keys = [r.key() for r in s.scalars(select(Content).where(Content.token == token))]
            return Wipe(n, token, keys)

        return self._write(tx)

    # -- reconcile ----------------------------------------------------------------------------
    def ref_drift(self, lease_s: float) -> list[RefDrift]:
        def q(s: Session) -> list[RefDrift]:
            counts = {int(m): (int(n), sha, path) for m, n, sha, path in s.execute(
                select(Image.milvus_id, func.count(Image.id), func.min(Image.sha256),
                       func.min(Image.file_path)).group_by(Image.milvus_id)
            )}  # fmt: skip
            now, out = _now(), []
            for row in s.scalars(select(Content)):
                rows = counts.pop(row.milvus_id, (0, "", ""))[0]
                stale = self._stale(row, lease_s)
                if row.refs != rows or (stale and (row.pins or row.state == PURGING)):
                    age = (now - row.updated_at).total_seconds()
                    out.append(RefDrift(row.key(), row.refs, rows, row.pins, row.state, age))
            for mid, (rows, sha, path) in counts.items():
                out.append(RefDrift(ContentKey(mid, sha, path), -1, rows, 0, "", 0.0))
            return out

        return self._read(q)

    def repair_refs(self, lease_s: float) -> list[Purge]:
        purges: list[Purge] = []
        for drift in sorted(self.ref_drift(lease_s), key=lambda d: d.key.milvus_id):
            purge = self._write(functools.partial(self._repair_in, key=drift.key, lease_s=lease_s))
            if purge is not None:
                purges.append(purge)
        return purges

    def _repair_in(self, s: Session, key: ContentKey, lease_s: float) -> Purge | None:
        mid = key.milvus_id
        had = _rowcount(s.execute(
            update(Content).where(Content.milvus_id == mid).values(milvus_id=Content.milvus_id)
        ))  # fmt: skip
        rows = int(s.execute(
            select(func.count(Image.id)).where(Image.milvus_id == mid).with_for_update()
        ).scalar_one())  # fmt: skip
        row = self._locked(s, mid) if had else None
        if row is None:
            if rows:
                s.add(_content_row(key, rows, LIVE, _token()))
            return None
        stale = self._stale(row, lease_s)
        if row.state == PURGING:
            if not stale:
                return None
            row.token, row.updated_at = _token(), _now()  # take over a crashed purge
            return Purge(row.key(), row.token)
        if row.refs != rows:
            logger.warning("content %d: refs %d but %d rows; repaired", mid, row.refs, rows)
            row.refs = rows
        if stale and row.pins:
            logger.warning("content %d: %d pins older than %.0fs dropped", mid, row.pins, lease_s)
            row.pins = 0
        return self._drop_one(s, mid, refs=0, pins=0)


def _content_page(s: Session, after: int, upto: int) -> list[tuple[str, int, str]]:
    """(sha256, milvus_id, a file_path) of the next CONTENT_PAGE milvus_ids above `after` and
    at most `upto`, milvus_id ascending (a milvus_id has one sha256, except in rows older than
    the content table: all of its groups come in the same page)."""
    ids = (select(Image.milvus_id).where(Image.milvus_id > after, Image.milvus_id <= upto)
           .group_by(Image.milvus_id).order_by(Image.milvus_id).limit(CONTENT_PAGE))  # fmt: skip
    last = s.execute(select(func.max(ids.subquery().c.milvus_id))).scalar()
    if last is None:
        return []
    stmt = (
        select(Image.sha256, Image.milvus_id, func.min(Image.file_path))
        .where(Image.milvus_id > after, Image.milvus_id <= last)
        .group_by(Image.milvus_id, Image.sha256)
        .order_by(Image.milvus_id, Image.sha256)
    )
    return [(str(h), int(m), str(p)) for h, m, p in s.execute(stmt)]


def _rowcount(result: Any) -> int:
    cursor: CursorResult[Any] = result
    return int(cursor.rowcount or 0)


def _content_row(key: ContentKey, refs: int, state: str, token: str) -> Content:
    return Content(milvus_id=key.milvus_id, sha256=key.sha256, file_path=key.file_path,
                   refs=refs, pins=0, state=state, token=token, updated_at=_now())  # fmt: skip


def _tag_keys(tags_column: str) -> tuple[str, ...]:
    """The image_tag rows of a row's JSON tags: each distinct tag that fits the index (rows
    older than TAG_MAX_CHARS may hold longer ones; no filter can name those anyway)."""
    tags = normal_tags([str(t) for t in json.loads(tags_column or "[]")])
    return tuple(t for t in tags if len(t) <= TAG_MAX_CHARS)


S = TypeVar("S", bound=Select[Any])


def _tagged(stmt: S, tags: Sequence[str]) -> S:
    """Only the image rows that carry every one of `tags` (none: all rows)."""
    if len(tags) > TAGS_MAX_COUNT:
        raise ValueError(f"at most {TAGS_MAX_COUNT} tags in a filter")  # checked at the edge
    for tag in normal_tags(tags):
        # IN (sub-select on ix_image_tag_tag): the planner starts from the tag's rows.
        stmt = stmt.where(Image.id.in_(select(ImageTag.image_id).where(ImageTag.tag == tag)))
    return stmt


def _image_row(new: NewImage) -> Image:
    return Image(
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
        tags=tags_json(normal_tags(new.tags)),
    )
