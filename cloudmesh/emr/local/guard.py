"""The emulator's front door: only this machine's user, through a signed request, gets in.

A WSGI middleware around moto's server application. Every request, the ones to
``/moto-api/`` included, must

1. name the emulator in its ``Host`` header: ``127.0.0.1:PORT`` or ``localhost:PORT``
   (a DNS-rebinding page names its own host);
2. not be a CORS preflight (``OPTIONS``): a browser page gets no permission;
3. carry an AWS Signature Version 4, in the ``Authorization`` header or in the
   query string (a presigned URL), made with the daemon's own credentials
   (``credentials.py``), within 15 minutes of now (a presigned URL: until it expires);
   an S3 presigned URL may also be of Signature Version 2, the default of boto3 and
   ``aws s3 presign`` for a custom endpoint (a SigV2 ``Authorization`` header is not
   accepted).

A refused request gets AWS's own error in the shape its protocol expects (JSON for
EMR, XML for S3 and EC2, the query XML for CloudWatch-like services, CBOR for
smithy-rpc-v2-cbor), and reaches moto not at all. No answer carries an
``Access-Control-*`` header (moto's flask-cors adds them; they are removed).

Why not moto's own IAM authentication (``INITIAL_NO_AUTH_ACTION_COUNT``)? It fails
with a server error on a request without ``Authorization``, does not check presigned
URLs, leaves ``/moto-api/`` (which can switch it off) open, and needs IAM policies
for the key. The signature is recomputed with botocore's own signer instead
(``SigV4Auth``, ``S3SigV4Auth`` and their query-string variants), over exactly the
headers the client signed.
"""

import hmac
import io
import logging
import re
import time
import uuid
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import unquote
from xml.sax.saxutils import escape

log = logging.getLogger("cloudmesh.emr.local.guard")

SKEW = 15 * 60  # seconds a signed request may be off from now, as on AWS
MAX_EXPIRES = 7 * 24 * 3600  # the longest a presigned URL may live (SigV4)
ALGORITHM = "AWS4-HMAC-SHA256"
TIMESTAMP = "%Y%m%dT%H%M%SZ"
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<scope>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-fA-F]+)\s*$"
)
EC2_VERSION = "2016-11-15"
FORM = "application/x-www-form-urlencoded"
FORM_LIMIT = 1 << 20  # bytes of a form body read to tell EC2 from other query services

# why a request is refused -> (HTTP status, error code) per protocol; AWS's own words
REFUSALS = {
    "missing": {
        "json": (403, "InvalidClientTokenId"), "cbor": (403, "InvalidClientTokenId"),
        "query": (403, "InvalidClientTokenId"), "ec2": (401, "AuthFailure"),
        "s3": (403, "AccessDenied"),
    },
    "unknown-key": {
        "json": (403, "InvalidClientTokenId"), "cbor": (403, "InvalidClientTokenId"),
        "query": (403, "InvalidClientTokenId"), "ec2": (401, "AuthFailure"),
        "s3": (403, "InvalidAccessKeyId"),
    },
    "bad-signature": {
        "json": (403, "SignatureDoesNotMatch"), "cbor": (403, "SignatureDoesNotMatch"),
        "query": (403, "SignatureDoesNotMatch"), "ec2": (401, "AuthFailure"),
        "s3": (403, "SignatureDoesNotMatch"),
    },
    "expired": {
        "json": (403, "SignatureDoesNotMatch"), "cbor": (403, "SignatureDoesNotMatch"),
        "query": (403, "SignatureDoesNotMatch"), "ec2": (401, "AuthFailure"),
        "s3": (403, "AccessDenied"),
    },
    "skewed": {
        "json": (403, "SignatureDoesNotMatch"), "cbor": (403, "SignatureDoesNotMatch"),
        "query": (403, "SignatureDoesNotMatch"), "ec2": (401, "AuthFailure"),
        "s3": (403, "RequestTimeTooSkewed"),
    },
    "sigv2": {
        "json": (400, "IncompleteSignature"), "cbor": (400, "IncompleteSignature"),
        "query": (400, "IncompleteSignature"), "ec2": (401, "AuthFailure"),
        "s3": (400, "InvalidRequest"),
    },
    "host": {
        "json": (403, "AccessDeniedException"), "cbor": (403, "AccessDeniedException"),
        "query": (403, "AccessDenied"), "ec2": (403, "UnauthorizedOperation"),
        "s3": (403, "AccessDenied"),
    },
    "preflight": {
        "json": (403, "AccessDeniedException"), "cbor": (403, "AccessDeniedException"),
        "query": (403, "AccessDenied"), "ec2": (403, "UnauthorizedOperation"),
        "s3": (403, "AccessDenied"),
    },
}
HINT = "the local emulator accepts only requests signed with its own credentials: see 'cms emr local env'"
MESSAGES = {
    "missing": f"Request is missing Authentication Token; {HINT}",
    "unknown-key": f"The security token included in the request is invalid; {HINT}",
    "bad-signature": (
        "The request signature we calculated does not match the signature you provided. "
        f"Check your AWS Secret Access Key and signing method; {HINT}"
    ),
    "expired": "Request has expired",
    "skewed": "The difference between the request time and the current time is too large",
    "sigv2": (
        "The authorization mechanism you have provided is not supported. Please use "
        "AWS4-HMAC-SHA256 (boto3: Config(signature_version='s3v4') for presigned URLs)"
    ),
    "host": "the local emulator answers only requests for Host 127.0.0.1:{port} or localhost:{port}",
    "preflight": "the local emulator does not answer cross-origin (CORS) requests",
}


class Refusal(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def wrap(app, credentials):
    """``app`` behind the guard, accepting requests signed with ``credentials``."""
    return Guard(app, credentials)


def install(credentials):
    """Put every moto ThreadedMotoServer started after this call behind the guard."""
    from moto.moto_server import threaded_moto_server as module

    dispatcher = module.DomainDispatcherApplication
    if getattr(dispatcher, "guarded", False):
        return

    def guarded(create_app):
        return Guard(dispatcher(create_app), credentials)

    guarded.guarded = True
    module.DomainDispatcherApplication = guarded


class Guard:
    """The WSGI middleware; see the module's text."""

    def __init__(self, app, credentials, clock=time.time):
        self.app = app
        self.credentials = credentials
        self.clock = clock

    def __call__(self, environ, start_response):
        try:
            self.check(environ)
        except Refusal as refusal:
            return self.refuse(environ, start_response, refusal.reason)

        def start(status, headers, exc_info=None):
            kept = [(name, value) for name, value in headers
                    if not name.lower().startswith("access-control-")]
            return start_response(status, kept, exc_info)

        return self.app(environ, start)

    # ---- the checks ------------------------------------------------------------------

    def check(self, environ):
        port = environ.get("SERVER_PORT", "")
        host = environ.get("HTTP_HOST", "").strip().lower()
        if host not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            raise Refusal("host")
        if environ.get("REQUEST_METHOD", "").upper() == "OPTIONS":
            raise Refusal("preflight")
        header = environ.get("HTTP_AUTHORIZATION", "").strip()
        query = _query_pairs(environ.get("QUERY_STRING", ""))
        if header:
            match = AUTHORIZATION.match(header)
            if not match:
                if header.startswith("AWS "):
                    raise Refusal("sigv2")
                raise Refusal("missing")  # a bearer token, ...: no AWS signature
            timestamp = _header_timestamp(environ)
            self._verify(environ, match["scope"], match["signed"], match["signature"],
                         timestamp, presigned=None)
            return
        values = dict(query)
        if values.get("X-Amz-Algorithm") == ALGORITHM:
            try:
                expires = int(values.get("X-Amz-Expires", ""))
            except ValueError:
                raise Refusal("bad-signature") from None
            if not 0 < expires <= MAX_EXPIRES:
                raise Refusal("bad-signature")
            self._verify(environ, values.get("X-Amz-Credential", ""),
                         values.get("X-Amz-SignedHeaders", ""), values.get("X-Amz-Signature", ""),
                         values.get("X-Amz-Date", ""), presigned=expires)
            return
        if "Signature" in values and "AWSAccessKeyId" in values and "Expires" in values:
            self._verify_v2(environ, values)  # an S3 presigned URL of Signature Version 2
            return
        raise Refusal("missing")

    def _verify_v2(self, environ, values):
        """An S3 presigned URL of Signature Version 2 (what boto3 and ``aws s3 presign``
        make by default for a custom endpoint), recomputed with botocore's HmacV1 signer."""
        from urllib.parse import urlsplit

        from botocore.auth import HmacV1Auth
        from botocore.awsrequest import HTTPHeaders
        from botocore.credentials import Credentials

        if not hmac.compare_digest(values["AWSAccessKeyId"].encode(),
                                   self.credentials.access_key_id.encode()):
            raise Refusal("unknown-key")
        try:
            expires = int(values["Expires"])
        except ValueError:
            raise Refusal("bad-signature") from None
        if self.clock() > expires:
            raise Refusal("expired")
        headers = HTTPHeaders()
        for name, value in values.items():  # signed headers travel in the query
            if name.lower().startswith("x-amz-") or name.lower() in ("content-md5",
                                                                     "content-type"):
                headers[name.lower()] = value

        class Verifier(HmacV1Auth):
            def _get_date(self):
                return str(expires)  # the Date line of a presigned URL is its Expires

        signer = Verifier(Credentials(self.credentials.access_key_id,
                                      self.credentials.secret_access_key))
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        split = urlsplit(f"http://{environ.get('HTTP_HOST')}{raw}")
        expected = signer.sign_string(signer.canonical_string(
            environ.get("REQUEST_METHOD", "GET"), split, headers))
        if not hmac.compare_digest(expected.encode(), values["Signature"].encode()):
            raise Refusal("bad-signature")

    def _verify(self, environ, scope, signed, signature, timestamp, presigned):
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        from werkzeug.datastructures import EnvironHeaders

        parts = scope.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request" or not parts[2] or not parts[3]:
            raise Refusal("bad-signature")
        key, day, region, service, _ = parts
        if not hmac.compare_digest(key.encode(), self.credentials.access_key_id.encode()):
            raise Refusal("unknown-key")
        when = _parse_timestamp(timestamp)
        if when is None or day != timestamp[:8]:
            raise Refusal("bad-signature")
        now = self.clock()
        if presigned is None:
            if abs(now - when) > SKEW:
                raise Refusal("skewed")
        elif when - now > SKEW or now > when + presigned:
            raise Refusal("expired")

        names = [name.strip().lower() for name in signed.split(";") if name.strip()]
        if "host" not in names:
            raise Refusal("bad-signature")
        received = EnvironHeaders(environ)
        headers = []
        for name in names:
            value = received.get(name)
            if value is None:
                raise Refusal("bad-signature")
            headers.append((name, value))

        s3 = service == "s3"
        body = b""
        if not s3 and presigned is None and "x-amz-content-sha256" not in names:
            body = _read_body(environ)
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        path = raw.split("?", 1)[0] or "/"
        pairs = _query_pairs(environ.get("QUERY_STRING", ""))
        if presigned is not None:
            pairs = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
        request = AWSRequest(method=environ.get("REQUEST_METHOD", "GET").upper(),
                             url=f"http://{environ.get('HTTP_HOST')}{path}",
                             data=body, params=pairs)
        for name, value in headers:
            request.headers[name] = value
        request.context["timestamp"] = timestamp
        signer = _signer(s3, presigned is not None)(
            Credentials(self.credentials.access_key_id, self.credentials.secret_access_key),
            service, region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
            raise Refusal("bad-signature")

    # ---- the refusal -----------------------------------------------------------------

    def refuse(self, environ, start_response, reason):
        protocol = _protocol(environ)
        status, code = REFUSALS[reason][protocol]
        message = MESSAGES[reason].format(port=environ.get("SERVER_PORT", "PORT"))
        request_id = str(uuid.uuid4())
        log.info("refused %s %s (%s): %s", environ.get("REQUEST_METHOD"),
                 environ.get("PATH_INFO"), protocol, reason)
        content_type, body = BODIES[protocol](code, message, request_id)
        if environ.get("REQUEST_METHOD", "").upper() == "HEAD":
            body = b""
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("x-amzn-RequestId", request_id)]
        if protocol in ("json", "cbor"):
            headers.append(("x-amzn-ErrorType", code))
        if protocol == "cbor":
            headers.append(("smithy-protocol", "rpc-v2-cbor"))
        if protocol == "s3":
            headers.append(("x-amz-request-id", request_id))
        start_response(f"{status} {STATUS_TEXT[status]}", headers)
        return [body]


STATUS_TEXT = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}


def _signer(s3, presigned):
    from botocore import auth

    base = {
        (False, False): auth.SigV4Auth,
        (True, False): auth.S3SigV4Auth,
        (False, True): auth.SigV4QueryAuth,
        (True, True): auth.S3SigV4QueryAuth,
    }[s3, presigned]

    class Verifier(base):
        def headers_to_sign(self, request):
            return request.headers  # exactly the headers the client signed

    return Verifier


def _query_pairs(query):
    pairs = []
    for part in query.split("&") if query else []:
        key, _, value = part.partition("=")
        pairs.append((unquote(key), unquote(value)))
    return pairs


def _parse_timestamp(text):
    try:
        return datetime.strptime(text, TIMESTAMP).replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def _header_timestamp(environ):
    stamp = environ.get("HTTP_X_AMZ_DATE", "").strip()
    if stamp:
        return stamp
    try:
        when = parsedate_to_datetime(environ.get("HTTP_DATE", ""))
    except (TypeError, ValueError):
        raise Refusal("bad-signature") from None
    return when.astimezone(timezone.utc).strftime(TIMESTAMP)


def _read_body(environ, limit=None):
    """The whole body (or its first ``limit`` bytes); the app still reads all of it."""
    from werkzeug.wsgi import get_input_stream

    cached = environ.get("cloudmesh.body")
    if cached is None:
        cached = get_input_stream(environ, safe_fallback=False).read()
        environ["cloudmesh.body"] = cached
        environ["wsgi.input"] = io.BytesIO(cached)
        environ["CONTENT_LENGTH"] = str(len(cached))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = False
    return cached if limit is None else cached[:limit]


def _protocol(environ):
    """Which of AWS's protocols the request speaks: json, cbor, ec2, query or s3."""
    if environ.get("HTTP_SMITHY_PROTOCOL", "").lower() == "rpc-v2-cbor":
        return "cbor"
    content_type = environ.get("CONTENT_TYPE", "").lower()
    if environ.get("HTTP_X_AMZ_TARGET") or content_type.startswith("application/x-amz-json"):
        return "json"
    scope = environ.get("HTTP_AUTHORIZATION", "")
    if "/ec2/aws4_request" in scope:
        return "ec2"
    fields = dict(_query_pairs(environ.get("QUERY_STRING", "")))
    if content_type.startswith(FORM) and environ.get("REQUEST_METHOD", "").upper() == "POST":
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if 0 < length <= FORM_LIMIT:
            text = _read_body(environ).decode("utf-8", "replace").replace("+", " ")
            fields.update(_query_pairs(text))
        return "ec2" if fields.get("Version") == EC2_VERSION else "query"
    if "Action" in fields and "Version" in fields:
        return "ec2" if fields.get("Version") == EC2_VERSION else "query"
    return "s3"


def _json_body(code, message, _request_id):
    import json

    return "application/x-amz-json-1.1", json.dumps({"__type": code, "message": message}).encode()


def _cbor_text(text):
    data = text.encode()
    size = len(data)
    if size < 24:
        head = bytes([0x60 | size])
    elif size < 0x100:
        head = bytes([0x78, size])
    else:
        head = bytes([0x79]) + size.to_bytes(2, "big")
    return head + data


def _cbor_body(code, message, _request_id):
    body = bytes([0xA2]) + _cbor_text("__type") + _cbor_text(code)
    return "application/cbor", body + _cbor_text("message") + _cbor_text(message)


def _query_body(code, message, request_id):
    return "text/xml", (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()


def _ec2_body(code, message, request_id):
    return "text/xml;charset=UTF-8", (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{request_id}</RequestID></Response>"
    ).encode()


def _s3_body(code, message, request_id):
    return "application/xml", (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
        f"<Message>{escape(message)}</Message><RequestId>{request_id}</RequestId></Error>"
    ).encode()


BODIES = {"json": _json_body, "cbor": _cbor_body, "query": _query_body, "ec2": _ec2_body,
          "s3": _s3_body}
