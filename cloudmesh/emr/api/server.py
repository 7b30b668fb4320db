"""The REST service: connexion serves api/emr.yaml, each operation calls the Provider.

Spec first: connexion routes every operationId of ``emr.yaml`` to a function here and
validates requests and responses against the spec. Each function makes one Provider
for the request (sharing one Database and one dict of boto3 clients across requests),
calls the same method the command line calls, and returns the records with datetimes
as ISO-8601 strings. Errors become ``application/problem+json`` with the status of
their class (see errors.py); anything unexpected becomes a 500 problem that shows no
internals, with the traceback in the server's log only.

Only ``cms emr server start`` imports this module: connexion is not loaded otherwise.
"""

import hmac
import ipaddress
import logging
import secrets
import sys
import time
from pathlib import Path

from cloudmesh.emr.errors import (
    AwsError, Conflict, DatabaseError, EmrError, NotFound, UsageError,
)

SPEC = Path(__file__).with_name("emr.yaml")
ACCESS = logging.getLogger("cloudmesh.emr.server.access")
LOG = logging.getLogger("cloudmesh.emr.server")
LOOPBACK_NAMES = ("localhost",)

# error class -> the problem type that names it
PROBLEM_TYPES = {
    UsageError: "bad-request",
    NotFound: "not-found",
    Conflict: "conflict",
    AwsError: "aws",
    DatabaseError: "database",
    EmrError: "aws",
}
ERRORS_BY_NAME = {cls.__name__: cls for cls in PROBLEM_TYPES}


def problem_type(slug):
    return f"urn:cloudmesh-emr:problem:{slug}"


def is_loopback(host):
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


# ---- the state one app shares across its requests ---------------------------------


class Service:
    """What every request of one app shares: settings, cloud, database, boto3 clients."""

    def __init__(self, cloud=None, settings=None):
        from cloudmesh.emr.config import Settings
        from cloudmesh.emr.database import Database

        self.settings = settings or Settings.load()
        self.cloud = self.settings.cloud(cloud)
        self.database = Database(self.settings)
        self.clients = {}

    def provider(self):
        from cloudmesh.emr.api.provider import Provider

        return Provider(self.cloud, self.settings, database=self.database, clients=self.clients)


EXTENSION = "cloudmesh.emr"  # where the Flask app of create_app keeps its Service


def _service():
    import flask

    return flask.current_app.extensions[EXTENSION]


class Unrecorded(Exception):
    """The AWS call succeeded but its result could not be recorded: a 503 with the result."""

    def __init__(self, error, result):
        super().__init__(error.message)
        self.error = error
        self.result = result


def _answer(provider, body, status=200, headers=None):
    """The JSON answer, unless the database failed after AWS did its part."""
    from cloudmesh.emr.printer import plain

    body = plain(body)
    if provider.database_error is not None:
        raise Unrecorded(provider.database_error, body)
    return body, status, {"Content-Type": "application/json", **(headers or {})}


# ---- the operations (operationIds of emr.yaml) --------------------------------------


def list_clusters(status=None):
    provider = _service().provider()
    return _answer(provider, provider.list_clusters(status=status or None))


def describe_cluster(cluster_id):
    provider = _service().provider()
    return _answer(provider, provider.describe(cluster_id))


def list_instances(cluster_id, status=None, type=None):
    provider = _service().provider()
    return _answer(provider, provider.list_instances(cluster_id, status=status or None,
                                                     types=type or None))


def list_steps(cluster_id, state=None):
    provider = _service().provider()
    return _answer(provider, provider.list_steps(cluster_id, state=state or None))


def start_cluster(body):
    provider = _service().provider()
    action = provider.start(body["name"], master=body.get("master"), node=body.get("node"),
                            count=body.get("count"), release=body.get("release"))
    cluster_id = action["Target"]
    return _answer(provider, {"ClusterId": cluster_id, "Action": action}, 201,
                   {"Location": f"/clusters/{cluster_id}"})


def stop_cluster(cluster_id):
    provider = _service().provider()
    action = provider.stop([cluster_id])[0]
    if action.get("Error"):  # recorded as an action; answered as the error it was
        error = action["Error"]
        raise ERRORS_BY_NAME.get(error["Type"], EmrError)(error["Message"])
    return _answer(provider, {"ClusterId": cluster_id, "Action": action}, 202)


def add_step(cluster_id, body):
    provider = _service().provider()
    if body["type"] == "copy" and "args" in body:
        raise UsageError("args: a copy step takes no arguments; args are for type spark")
    if body["type"] == "spark":
        action = provider.run(cluster_id, body["bucket"], body["key"], body.get("args") or [])
    else:
        action = provider.copy(cluster_id, body["bucket"], body["key"])
    return _answer(provider, {"StepId": action["Target"], "ClusterId": cluster_id,
                              "Action": action}, 201)


def upload_object(bucket, key, file=None):
    """The file is the request body: raw bytes, or the ``file`` part of a form."""
    import flask

    provider = _service().provider()
    if file is not None:  # multipart/form-data: werkzeug spools big parts to a temp file
        stream, name = file.stream, file.filename or None
    else:  # application/octet-stream: read as it arrives, never whole in memory
        stream, name = flask.request.stream, None
    action = provider.upload_stream(stream, bucket, key, name=name)
    return _answer(provider, {"Url": action["Target"], "Action": action}, 201)


# ---- errors --------------------------------------------------------------------------


def _problem(status, title, detail, slug, result=None):
    from connexion.problem import problem

    ext = {"result": result} if result is not None else None
    return problem(status, title, detail, type=problem_type(slug), ext=ext)


def _emr_error(request, error):
    slug = next(s for cls, s in PROBLEM_TYPES.items() if isinstance(error, cls))
    if error.http_status >= 500:  # the client's own mistakes are only in its answer
        LOG.warning("%s %s: %s", request.method, request.url.path, error.message)
    return _problem(error.http_status, error.title, error.message, slug)


def _unauthorized(request, error):
    """connexion's 401, with the challenge RFC 6750 asks for."""
    from connexion.problem import problem

    return problem(401, "Unauthorized", error.detail, type=problem_type("unauthorized"),
                   headers={"WWW-Authenticate": 'Bearer realm="cms emr"'})


def _unrecorded(request, unrecorded):
    error = unrecorded.error
    LOG.warning("%s %s: %s", request.method, request.url.path, error.message)
    return _problem(error.http_status, error.title, error.message, "database", unrecorded.result)


def _unreadable(request, error):
    """A body that is not what its Content-Type says: the client's doing, so a 400.

    connexion and starlette parse bodies before any operation runs, and raise
    UnicodeDecodeError (JSON that is not UTF-8) or MultiPartException (a broken form).
    """
    if isinstance(error, UnicodeDecodeError):
        what = f"not valid {error.encoding} ({error.reason} at byte {error.start})"
    else:
        what = f"not a well-formed multipart/form-data body ({error})"
    return _problem(400, UsageError.title, f"the request body is {what}", "bad-request")


def _unexpected(request, error):
    """The catch-all: a defect. The log keeps the traceback; the client sees no internals."""
    LOG.error("%s %s: unexpected %s", request.method, request.url.path, type(error).__name__,
              exc_info=error)
    return _problem(500, "Internal error",
                    "the service failed unexpectedly; the server log says where "
                    "(please report it)", "internal")


# ---- bearer token ----------------------------------------------------------------------


def _security_map(token):
    """connexion's handler for the spec's bearer scheme, bound to this app's token.

    With a token, every operation needs ``Authorization: Bearer <token>``, compared in
    constant time. Without one (loopback, nothing configured), every request passes.
    """
    from connexion.security import BearerSecurityHandler

    expected = token.encode() if token else None

    def check(given):
        if hmac.compare_digest(given.encode(), expected):
            return {"sub": "client"}
        return None  # connexion answers 401

    class TokenHandler(BearerSecurityHandler):
        def get_fn(self, security_scheme, required_scopes):
            if expected is None:
                return lambda request: {}
            return self._get_verify_func(check)

    return {"bearer": TokenHandler}


# ---- access log ----------------------------------------------------------------------


class AccessLog:
    """ASGI middleware: one line per request (method, path, status, milliseconds)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            ms = (time.perf_counter() - start) * 1000
            ACCESS.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0], ms)


# ---- the app and the server ------------------------------------------------------------


def create_app(cloud=None, token=None, settings=None, host="127.0.0.1"):
    """The connexion app of the service for ``cloud``; its ``test_client()`` serves tests.

    ``token``: the bearer token every operation requires; it is required when ``host``
    is not a loopback address, and a UsageError otherwise.
    """
    try:
        import connexion
        from connexion.middleware import MiddlewarePosition
        from connexion.options import SwaggerUIOptions
    except ImportError:
        raise UsageError(
            "the REST service needs connexion: pip install 'cloudmesh-emr[server]'"
        ) from None
    if not token and not is_loopback(host):
        raise UsageError(
            f"refusing to serve on {host} without a bearer token: set "
            "cloudmesh.emr.server.token in cloudmesh.yaml, or serve on 127.0.0.1"
        )
    service = Service(cloud, settings)
    app = connexion.FlaskApp(
        __name__,
        specification_dir=str(SPEC.parent),
        swagger_ui_options=SwaggerUIOptions(swagger_ui=True, swagger_ui_path="/ui",
                                            spec_path="/openapi.json"),
    )
    app.add_api(SPEC.name, strict_validation=True, validate_responses=True,
                security_map=_security_map(token))
    from connexion.exceptions import OAuthProblem
    from starlette.formparsers import MultiPartException

    app.add_error_handler(EmrError, _emr_error)
    app.add_error_handler(OAuthProblem, _unauthorized)
    app.add_error_handler(Unrecorded, _unrecorded)
    for unreadable in (UnicodeDecodeError, MultiPartException):
        app.add_error_handler(unreadable, _unreadable)
    app.add_error_handler(Exception, _unexpected)
    app.add_middleware(AccessLog, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.app.extensions[EXTENSION] = service
    app.service = service
    return app


def _log_to_stderr():
    """The access log and the service's own log, on stderr, each line with its time."""
    if not any(getattr(h, "cloudmesh", False) for h in LOG.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.cloudmesh = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
        LOG.addHandler(handler)  # ACCESS is a child of LOG
    LOG.setLevel(logging.INFO)
    logging.getLogger("connexion").setLevel(logging.ERROR)  # our own log says what failed


def _check_address(host, port):
    """Fail early, in one line, when (host, port) cannot be listened on."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"--host: cannot use '{host}' ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as error:
            raise EmrError(f"cannot listen on {host}:{port} ({error.strerror}); "
                           "pick another --port or --host") from None


def serve(host="127.0.0.1", port=8080, cloud=None):
    """Serve in the foreground until Ctrl-C; return the exit code."""
    import warnings

    from cloudmesh.emr.config import Settings

    settings = Settings.load()
    _check_address(host, port)
    token = settings.server_token()
    if not token and not is_loopback(host):
        token = secrets.token_urlsafe(32)
        print(f"bearer token (shown once; send 'Authorization: Bearer <token>'): {token}",
              file=sys.stderr, flush=True)
    with warnings.catch_warnings():  # connexion imports starlette's test client, which warns
        warnings.filterwarnings("ignore", message=".*starlette.testclient")
        app = create_app(cloud=cloud, token=token, settings=settings, host=host)
    try:
        import uvicorn
    except ImportError:
        raise UsageError(
            "the REST service needs uvicorn: pip install 'cloudmesh-emr[server]'"
        ) from None
    _log_to_stderr()
    try:  # connect now (MODE embedded: start the database), so a problem shows at once
        app.service.database.client()
    except DatabaseError as error:
        print(f"WARNING: {error.message}; answers will be 503 until it is reachable",
              file=sys.stderr, flush=True)
    where = f"[{host}]" if ":" in host else host
    print(f"cms emr REST service for cloud '{app.service.cloud}' at http://{where}:{port}/ "
          f"(Swagger UI at /ui, spec at /openapi.json); Ctrl-C stops it",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as stop:  # uvicorn exits when it cannot start
        return 1 if stop.code else 0
    except KeyboardInterrupt:
        pass
    finally:
        app.service.database.close()
    return 0 if server.started else 1
