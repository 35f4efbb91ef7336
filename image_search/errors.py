"""Domain exceptions: core code raises these, only the ingress maps them to HTTP codes."""

from __future__ import annotations


class SearchEngineError(Exception):
    """Base class. `status` is the HTTP code the ingress answers with."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        # Ray pickles exceptions across replicas; keep them rebuildable from the message.
        return (type(self), (self.message,))


class ConfigError(SearchEngineError):
    """Settings are invalid or the model/collection pair does not match."""


class InvalidImage(SearchEngineError):
    """Empty, truncated or otherwise undecodable image bytes."""

    status = 400


class UnsupportedImage(SearchEngineError):
    """Bytes that are not an image format we accept."""

    status = 415


class ImageTooLarge(SearchEngineError):
    """Upload over max_upload_bytes or pixels over max_pixels (decompression bombs)."""

    status = 413


class BadRequest(SearchEngineError):
    status = 400


class NotFound(SearchEngineError):
    status = 404


class Unauthorized(SearchEngineError):
    """No credentials, or credentials that are not valid (unknown, revoked, malformed)."""

    status = 401


class Forbidden(SearchEngineError):
    """Valid credentials that do not allow this (a key of too low a scope, a cross-site form)."""

    status = 403


class Conflict(SearchEngineError):
    """meta_uuid already taken."""

    status = 409


class StoreUnavailable(SearchEngineError):
    """A backing store (metadata, objects, vectors) cannot be reached; names the store."""

    status = 503

    def __init__(self, message: str, store: str = "") -> None:
        super().__init__(message)
        self.store = store

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # type: ignore[override]
        return (type(self), (self.message, self.store))


class ModelMismatch(StoreUnavailable):
    """A vector made by another model than the collection's: a model switch is under way.

    Its own type so that callers retry it (briefly) and never another unavailable store.
    """

    def __init__(self, message: str, store: str = "vectors") -> None:
        super().__init__(message, store)


class ModelUnavailable(SearchEngineError):
    """Model weights cannot be had (missing file, bad checksum, no network)."""

    status = 503


class Overloaded(SearchEngineError):
    """More work than this replica admits right now: retry after `retry_after_s` seconds."""

    status = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type, tuple[str, int]]:  # type: ignore[override]
        return (type(self), (self.message, self.retry_after_s))


class RequestTimeout(SearchEngineError):
    """The client stopped sending its request body."""

    status = 408
