"""Errors the service layer raises, each with the HTTP status a route answers with."""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    status = 400
    code = "invalid_input"


class Forbidden(ServiceError):
    """The caller is known but may not do this (a wrong key, another owner's objects)."""

    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class BeingWritten(Conflict):
    """What was asked for belongs to a job that has SUCCEEDED, and a worker is writing it just now
    (the merged result, insights, exports, pictures): answered 409 with Retry-After."""

    code = "being_written"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Gone(ServiceError):
    """A stored object the answer needs is no longer in the bucket (deleted behind the API's back, or a
    local stack's files lost); the message says which and what to do."""

    status = 410
    code = "gone"


class TooLarge(ServiceError):
    status = 413
    code = "too_large"


class Unavailable(ServiceError):
    """A dependency (database, S3, SQS) is down; the caller should retry after `retry_after_s`."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
