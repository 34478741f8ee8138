"""What an AWS-style service's error says: its code, its HTTP status, whether it means "not
there", and one line for a message. One copy for the S3, Glacier and snapshot modules.

Invariant: these read ``ClientError.response`` defensively (a proxy's or a failing server's
answer may lack any part of it) and never raise.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

__all__ = ["error_code", "error_line", "http_status", "is_missing", "response_headers"]

#: codes S3 uses for an absent object or bucket (HEAD answers carry only the status)
_MISSING = ("NoSuchKey", "404", "NotFound")


def error_code(e: ClientError, *, or_status: bool = False) -> str:
    """Returns: the error's code (``NoSuchKey``), ``""`` when it has none, or with
    ``or_status`` then its HTTP status as text (``"403"``)."""
    code = str(e.response.get("Error", {}).get("Code", "") or "")
    if not code and or_status:
        status = http_status(e)
        return str(status) if status else ""
    return code


def http_status(e: ClientError) -> int:
    """Returns: the answer's HTTP status, 0 when unknown."""
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def response_headers(e: ClientError) -> dict[str, str]:
    """Returns: the answer's HTTP headers (empty when unknown)."""
    return dict(e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {})


def is_missing(e: ClientError, *codes: str) -> bool:
    """Whether the error says the thing asked for is not there.

    Args:
        e: the error.
        codes: the service's codes for "not there" (default S3's); a 404 always is.
    """
    return error_code(e) in (codes or _MISSING) or http_status(e) == 404


def error_line(e: BaseException) -> str:
    """Returns: one line for a message: ``Code: Message`` for a service's error, else the
    exception's type and text."""
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(e).__name__}: {e}"
