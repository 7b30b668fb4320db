"""The failures a user can cause or meet, each with its exit code and HTTP status.

Every layer raises these; the command turns one into a single ``ERROR:`` line and
its exit code, the REST service into an ``application/problem+json`` answer.
Anything else that escapes is a defect, not a user's doing. A message never shows the
userinfo of a URL (redaction.redact), whoever wrote it: botocore repeats whole endpoint
URLs in its errors.
"""

from cloudmesh.emr.redaction import redact


class EmrError(Exception):
    """A failure with a message that says what was wrong and what to do."""

    exit_code = 1
    http_status = 502
    title = "Operation failed"

    def __init__(self, message, **detail):
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.detail = detail


class UsageError(EmrError):
    """Bad input: a value the user gave is not one we accept."""

    exit_code = 2
    http_status = 400
    title = "Bad request"


class NotOffered(UsageError):
    """A release label or instance type that EMR does not offer (in the region, for the
    release): bad input on the command line (exit 2); over REST a 404, since the request
    fits the spec and names something that does not exist."""

    http_status = 404
    title = "Not found"


class NotFound(EmrError):
    """The cluster, step, bucket or file does not exist."""

    http_status = 404
    title = "Not found"


class Conflict(EmrError):
    """The resource is in a state that refuses the operation (termination protection), or
    the account lacks what it needs (a start's service role or instance profile)."""

    http_status = 409
    title = "Conflict"


class AwsError(EmrError):
    """AWS (or the endpoint standing in for it) said no, or could not be reached."""

    http_status = 502
    title = "AWS request failed"


class DatabaseError(EmrError):
    """The results database could not be reached or refused a write."""

    http_status = 503
    title = "Database unavailable"


ECHO_LIMIT = 200


def shorten(text, limit=ECHO_LIMIT):
    """What a user gave, fit to be echoed in a one-line message: at most ``limit``
    characters, control characters and bytes that are not text shown as escapes, and
    the cut marked with '...' and the full length."""
    text = str(text)
    try:  # bytes of argv that were not UTF-8 (surrogate-escaped): shown as the bytes, \xe9
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate of another kind (a JSON escape): \udce9
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode()
                   for c in text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def undecodable(text):
    """Whether ``text`` holds what is not valid Unicode (bytes that were not UTF-8 in
    argv, surrogate-escaped; a lone surrogate from a JSON escape)."""
    try:
        str(text).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True
