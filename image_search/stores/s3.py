"""Image bytes in MinIO or any S3-compatible server through the `minio` client (s3://bucket)."""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from image_search.errors import NotFound, StoreUnavailable

if TYPE_CHECKING:
    from image_search.config import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Answers that mean "this key (or the bucket holding it) is not there", not "S3 is down".
_MISSING = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound", "NotFound"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket[/prefix] -> (bucket, "prefix/" or "")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(f"invalid S3 bucket name {bucket!r} in {uri!r}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _http_client(timeout_s: float, secure: bool) -> urllib3.PoolManager:
    # minio's own default waits 5 minutes per attempt and retries 5 times: a stopped server
    # would hang uploads for half an hour. Fail fast instead, so the API answers 503 at once.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=max(30.0, timeout_s)),
        maxsize=16,
        cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=2, connect=1, read=1, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]
        ),
    )


@functools.lru_cache(maxsize=4)
def _minio(endpoint: str, access: str, secret: str, secure: bool, region: str | None,
           timeout_s: float) -> Minio:  # fmt: skip
    return Minio(
        endpoint,
        access_key=access,
        secret_key=secret,
        secure=secure,
        region=region,
        http_client=_http_client(timeout_s, secure),
    )


def minio_client(settings: Settings) -> Minio:
    """One fail-fast client per process and endpoint, for the object store and S3 sources."""
    st = settings.stores
    # The minio client wants host:port; config may carry a URL.
    endpoint = st.s3_endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")
    return _minio(endpoint, st.s3_access_key, st.s3_secret_key, st.s3_secure, st.s3_region,
                  st.connect_timeout_s)  # fmt: skip


class S3ObjectStore:
    """ObjectStore over one bucket (optionally under a key prefix). The bucket stays private."""

    name = "objects"

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str = "",
        presign_seconds: int | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        # None: serve bytes through our API; otherwise presigned GET URLs valid this long.
        self.presign_seconds = presign_seconds
        self._bucket_ready = False
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ObjectStore:
        st = settings.stores
        bucket, prefix = parse_s3_uri(st.objects_uri)
        presign = st.presign_seconds if st.file_url_mode == "presigned" else None
        return cls(minio_client(settings), bucket, prefix, presign)

    # -- helpers ----------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        return self.prefix + key

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one client call; transport failures and server errors become StoreUnavailable."""
        try:
            return fn()
        except S3Error:
            raise  # the caller decides what a missing key or bucket means
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(
                f"object store unavailable ({what} on bucket {self.bucket!r}): {exc}", "objects"
            ) from exc

    def _unavailable(self, what: str, exc: S3Error) -> StoreUnavailable:
        # AccessDenied, InvalidAccessKeyId and friends: S3 answers but refuses us.
        return StoreUnavailable(
            f"object store refused {what} on bucket {self.bucket!r}: {exc.code}: {exc.message}",
            "objects",
        )

    def ensure_bucket(self) -> None:
        """Create the (private) bucket when missing. Called lazily before the first write."""
        with self._lock:
            if self._bucket_ready:
                return
            try:
                if not self._call("bucket_exists", lambda: self.client.bucket_exists(self.bucket)):
                    self._call("make_bucket", lambda: self.client.make_bucket(self.bucket))
                    logger.info("created bucket %s", self.bucket)
            except S3Error as exc:
                # Another process created it between our check and our create: fine.
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise self._unavailable("make_bucket", exc) from exc
            self._bucket_ready = True

    # -- ObjectStore ------------------------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str) -> None:
        name = self._key(key)
        self.ensure_bucket()

        def upload() -> None:
            self.client.put_object(
                self.bucket, name, io.BytesIO(data), len(data), content_type=content_type
            )

        try:
            self._call("put", upload)
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise self._unavailable("put", exc) from exc
            # The bucket vanished under us (an emptied or reset server): recreate it once.
            self._bucket_ready = False
            self.ensure_bucket()
            try:
                self._call("put", upload)
            except S3Error as again:
                raise self._unavailable("put", again) from again

    def get(self, key: str) -> bytes:
        name = self._key(key)

        def download() -> bytes:
            resp = self.client.get_object(self.bucket, name)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        try:
            return self._call("get", download)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise NotFound(f"object {key!r} not found") from exc
            raise self._unavailable("get", exc) from exc

    def delete(self, key: str) -> None:
        name = self._key(key)
        try:
            self._call("delete", lambda: self.client.remove_object(self.bucket, name))
        except S3Error as exc:
            if exc.code not in _MISSING:  # deleting what is not there is done already
                raise self._unavailable("delete", exc) from exc

    def exists(self, key: str) -> bool:
        name = self._key(key)
        try:
            self._call("stat", lambda: self.client.stat_object(self.bucket, name))
        except S3Error as exc:
            if exc.code in _MISSING or exc.response.status == 404:
                return False
            raise self._unavailable("stat", exc) from exc
        return True

    def keys(self, prefix: str = "") -> Iterator[str]:
        # S3 lists in key order, 1,000 keys a request; streamed, so that a listing of
        # millions holds one page.
        listing = self.client.list_objects(self.bucket, prefix=self.prefix + prefix, recursive=True)
        while True:
            try:
                obj = self._call("list", lambda: next(listing, None))
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    return
                raise self._unavailable("list", exc) from exc
            if obj is None:
                return
            if obj.object_name and not obj.is_dir:
                yield obj.object_name[len(self.prefix) :]

    def presigned_url(self, key: str) -> str | None:
        if self.presign_seconds is None:
            return None
        name = self._key(key)
        expires = timedelta(seconds=self.presign_seconds)
        try:
            return self._call(
                "presign", lambda: self.client.presigned_get_object(self.bucket, name, expires)
            )
        except S3Error as exc:
            raise self._unavailable("presign", exc) from exc

    def age_seconds(self, key: str) -> float | None:
        name = self._key(key)
        try:
            stat = self._call("stat", lambda: self.client.stat_object(self.bucket, name))
        except S3Error:
            return None
        if stat.last_modified is None:
            return None
        return time.time() - stat.last_modified.timestamp()

    def ping(self) -> None:
        # A HEAD on the bucket: proves the server answers and our keys are accepted, whether or
        # not the bucket exists yet (the first write creates it).
        try:
            self._call("ping", lambda: self.client.bucket_exists(self.bucket))
        except S3Error as exc:
            raise self._unavailable("ping", exc) from exc
