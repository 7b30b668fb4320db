"""The REST service: connexion serves api/emr.yaml, each operation calls the Provider.

Spec first: connexion routes every operationId of ``emr.yaml`` to a function here and
validates requests and responses against the spec. Each function makes one Provider
for the request (sharing one Database and one dict of boto3 clients across requests),
calls the same method the command line calls, and returns the records with datetimes
as ISO-8601 strings. Errors become ``application/problem+json`` with the status of
their class (see errors.py); anything unexpected becomes a 500 problem that shows no
internals, with the traceback in the server's log only.

Around connexion sit four small ASGI middlewares: the access log, HEAD served as a GET
without its body, a guard in front of everything that refuses requests from anyone but
the service's user (see RequestGuard), and a guard behind connexion's router (see
OperationGuard). The spec it serves is built from emr.yaml when the app is made, so it
says what this app does (see served_spec).

Only ``cms emr server start`` imports this module: connexion is not loaded otherwise.
"""

import copy
import functools
import hmac
import io
import ipaddress
import logging
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cloudmesh.emr.errors import (
    AwsError, Conflict, DatabaseError, EmrError, NotFound, NotOffered, UsageError,
)

SPEC = Path(__file__).with_name("emr.yaml")
ACCESS = logging.getLogger("cloudmesh.emr.server.access")
LOG = logging.getLogger("cloudmesh.emr.server")
LOOPBACK_NAMES = ("localhost",)

# error class -> the problem type that names it
PROBLEM_TYPES = {  # the first class an error is an instance of names it
    NotOffered: "not-found",
    UsageError: "bad-request",
    NotFound: "not-found",
    Conflict: "conflict",
    AwsError: "aws",
    DatabaseError: "database",
    EmrError: "aws",
}
ERRORS_BY_NAME = {cls.__name__: cls for cls in PROBLEM_TYPES}


INTERNAL = ("the service failed unexpectedly; the server log says where "
            "(please report it)")
JSON = "application/json"
HTTP_PORTS = {"http": 80, "https": 443}


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
    """What every request of one app shares: settings, cloud, database, boto3 clients,
    and for ``answer_ttl`` seconds the answers of its listings."""

    def __init__(self, cloud=None, settings=None, answer_ttl=0):
        from cloudmesh.emr.config import Settings
        from cloudmesh.emr.database import Database

        self.settings = settings or Settings.load()
        self.cloud = self.settings.cloud(cloud)
        self.database = Database(self.settings)
        self.clients = {}
        self.answer_ttl = float(answer_ttl or 0)
        self._answers = {}  # key -> (when, answer, epoch)
        self._answer_locks = {}
        self._answers_lock = threading.Lock()
        self._epoch = 0

    def shared(self, key, make):
        """The answer ``make()`` gives, shared by the requests that ask for the same
        ``key`` within ``answer_ttl`` seconds: one request asks AWS, the others take
        its answer (the first ones wait for it; once there is one, the requests that
        come while it is renewed take the one it replaces). Only a complete answer is
        shared (an error, or records the database could not take, are not), and a
        change made through the service drops them all (``changed``)."""
        if self.answer_ttl <= 0:
            return make()
        with self._answers_lock:
            lock = self._answer_locks.setdefault(key, threading.Lock())
        kept = self._usable(key)
        if kept and kept[0]:
            return kept[1]
        if kept and not lock.acquire(blocking=False):
            return kept[1]  # another request is renewing it: take the one it replaces
        if not kept:
            lock.acquire()
        try:
            kept = self._usable(key)
            if kept and kept[0]:  # renewed while this one waited
                return kept[1]
            epoch = self._epoch
            answer = make()
            if epoch == self._epoch:  # nothing changed while it was made
                self._answers[key] = (time.monotonic(), answer, epoch)
            return answer
        finally:
            lock.release()

    def _usable(self, key):
        """(fresh, answer) of what is shared for ``key``: fresh within answer_ttl; an
        older one only while a request renews it. None when nothing is, or a change
        made through the service came after it."""
        kept = self._answers.get(key)
        if not kept or kept[2] != self._epoch:
            return None
        return time.monotonic() - kept[0] < self.answer_ttl, kept[1]

    def changed(self):
        """Something may have changed through the service: what was shared is dropped."""
        with self._answers_lock:
            self._epoch += 1
            self._answers.clear()

    def after_change(self, response):
        self.changed()
        return response

    def provider(self):
        from cloudmesh.emr.api.provider import Provider

        return Provider(self.cloud, self.settings, database=self.database, clients=self.clients)


SERVED_TTL = 1.0  # seconds `cms emr server start` shares a listing's answer by default

# on an answer whose records wait in the journal (the database is away): how many
JOURNALED_HEADER = "Cloudmesh-Journaled"
EXTENSION = "cloudmesh.emr"  # where the Flask app of create_app keeps its Service


def _service():
    """The app's Service. A request that may change something (any but GET and HEAD)
    drops the answers shared so far, before it acts and after."""
    import flask

    service = flask.current_app.extensions[EXTENSION]
    if flask.request.method not in ("GET", "HEAD"):
        service.changed()
        flask.after_this_request(service.after_change)
    return service


def _shared(key, make):
    """``make(provider)``'s records as the answer, shared by the requests for ``key``
    within the service's answer_ttl (see Service.shared)."""
    service = _service()

    def answer():
        provider = service.provider()
        return _answer(provider, make(provider))

    return service.shared(key, answer)


class Unrecorded(Exception):
    """The AWS call succeeded but its result could not be recorded: a 503 with the result."""

    def __init__(self, error, result):
        super().__init__(error.message)
        self.error = error
        self.result = result


_VALIDATORS = {}  # (operationId, status) -> the validator of that answer's schema, or None


def conform(body, status):
    """Check an answer against the schema the spec gives it, as connexion's response
    validation would, with one validator per operation and status made once.

    connexion's own response validation (``validate_responses``) made a validator and
    parsed the serialised body again on every answer, in the event loop that serves
    every request: 100 clusters cost about 25 ms each time. Here each answer is checked
    once, where it is made; an answer shared by later requests is not checked again.
    """
    from connexion.context import operation
    from connexion.exceptions import NonConformingResponse
    from connexion.json_schema import Draft4ResponseValidator, format_error_with_path
    from jsonschema import Draft4Validator, ValidationError

    try:
        key = (operation.operation_id, status)
    except (LookupError, RuntimeError):  # outside an operation: nothing to check against
        return
    if key not in _VALIDATORS:
        schema = operation.response_schema(str(status), "application/json")
        _VALIDATORS[key] = Draft4ResponseValidator(
            schema, format_checker=Draft4Validator.FORMAT_CHECKER) if schema else None
    validator = _VALIDATORS[key]
    if validator is None:
        return
    try:
        validator.validate(body)
    except ValidationError as error:
        raise NonConformingResponse(detail=f"{error.message}{format_error_with_path(error)}") from None


def _answer(provider, body, status=200, headers=None):
    """The JSON answer, checked against the spec, unless the database failed after AWS
    did its part."""
    from cloudmesh.emr.printer import plain

    body = plain(body)
    conform(body, status)
    if provider.database_error is not None:
        raise Unrecorded(provider.database_error, body)
    headers = {"Content-Type": "application/json", **(headers or {})}
    if provider.journaled:  # the database is away; the records wait in the journal
        LOG.warning("%s", provider.journal_error.message)
        headers[JOURNALED_HEADER] = str(provider.journaled)
    return body, status, headers


# ---- the operations (operationIds of emr.yaml) --------------------------------------


def list_clusters(status=None, created_after=None, created_before=None, cached=False):
    status = status or None
    if cached:  # from the database, never shared with or through AWS's answers
        provider = _service().provider()
        clusters = provider.cached_clusters(status=status)
        age = provider.cached_age
        return _answer(provider, clusters, headers=None if age is None else
                       {"X-Cloudmesh-Cached-Age": str(age)})
    return _shared(("clusters", tuple(status or ()), created_after, created_before),
                   lambda provider: provider.list_clusters(status=status,
                                                           created_after=created_after,
                                                           created_before=created_before))


def describe_cluster(cluster_id):
    return _shared(("cluster", cluster_id), lambda provider: provider.describe(cluster_id))


def list_instances(cluster_id, status=None, type=None):
    status, types = status or None, type or None
    return _shared(("instances", cluster_id, tuple(status or ()), tuple(types or ())),
                   lambda provider: provider.list_instances(cluster_id, status=status,
                                                            types=types))


def list_steps(cluster_id, state=None):
    state = state or None
    return _shared(("steps", cluster_id, tuple(state or ())),
                   lambda provider: provider.list_steps(cluster_id, state=state))


# fields of POST /clusters -> keyword arguments of Provider.start (the rest are the same)
START_FIELDS = {"tags": None, "name": None, "config": None}


def _valid_text(body, path=""):
    """A 400 naming the field when a string of the body is not valid Unicode (a lone
    surrogate, ``"\\udce9"`` in the JSON): it would reach AWS as something else."""
    from cloudmesh.emr.errors import shorten, undecodable

    if isinstance(body, dict):
        for key, value in body.items():
            _valid_text(key, path or "body")
            _valid_text(value, f"{path}.{key}" if path else str(key))
    elif isinstance(body, list):
        for index, value in enumerate(body):
            _valid_text(value, f"{path}[{index}]")
    elif isinstance(body, str) and undecodable(body):
        raise UsageError(f"{path}: '{shorten(body)}' is not valid text (a lone surrogate); "
                         "send UTF-8 text")
    return body


def _idempotency_key():
    import flask

    key = flask.request.headers.get("Idempotency-Key")
    return _valid_text(key, "Idempotency-Key") if key is not None else None


def start_cluster(body):
    _valid_text(body)
    provider = _service().provider()
    options = {key: value for key, value in body.items() if key not in START_FIELDS}
    if body.get("tags"):
        options["tags"] = [f"{key}={value}" for key, value in body["tags"].items()]
    for key in ("count", "task_count"):
        if options.get(key) is not None:
            options[key] = str(options[key])
    action = provider.start(body.get("name"), config=body.get("config"),
                            idempotency_key=_idempotency_key(), **options)
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


def cluster_config(cluster_id):
    provider = _service().provider()
    return _answer(provider, provider.cluster_config(cluster_id))


def modify_cluster(cluster_id, body):
    """PATCH /clusters/{id}: modify (concurrency, idle timeout, scaling) and protect."""
    provider = _service().provider()
    actions = []
    changes = {key: body[key] for key in ("concurrency", "idle_timeout", "scaling")
               if key in body}
    if changes:
        actions.append(provider.modify(cluster_id, **changes))
    if "protected" in body:
        actions.append(provider.protect(cluster_id, on=body["protected"]))
    return _answer(provider, {"ClusterId": cluster_id, "Actions": actions})


def list_groups(cluster_id):
    provider = _service().provider()
    return _answer(provider, provider.list_groups(cluster_id))


def add_task_group(cluster_id, body):
    provider = _service().provider()
    action = provider.add_task(cluster_id, node=body.get("node"), count=body.get("count"),
                               spot=bool(body.get("spot")), bid=body.get("bid"))
    return _answer(provider, {"GroupId": action["Target"], "ClusterId": cluster_id,
                              "Action": action}, 201)


def resize_group(cluster_id, group_id, body):
    provider = _service().provider()
    action = provider.resize(cluster_id, group_id, body["count"])
    return _answer(provider, {"ClusterId": cluster_id, "Actions": [action]})


def cluster_metrics(cluster_id, since=None):
    provider = _service().provider()
    return _answer(provider, provider.metrics(cluster_id, since=since))


def cluster_cost(cluster_id):
    provider = _service().provider()
    report = provider.cost([cluster_id])
    return _answer(provider, {**report, "Warnings": list(provider.warnings)})


def cost(status=None):
    provider = _service().provider()
    report = provider.cost(status=status or None)
    return _answer(provider, {**report, "Warnings": list(provider.warnings)})


def reap(dry_run=False, idle=None):
    provider = _service().provider()
    return _answer(provider, provider.reap(dry_run=bool(dry_run), idle=idle))


def doctor(release=None, master=None, node=None, count=None, key=None, subnet=None,
           loguri=None):
    provider = _service().provider()
    return _answer(provider, provider.doctor(
        release=release, master=master, node=node,
        count=str(count) if count is not None else None, key=key, subnet=subnet,
        loguri=loguri))


def cluster_history(cluster_id):
    provider = _service().provider()
    return _answer(provider, provider.history(cluster_id))


# the fields each type of step takes, besides its type
STEP_FIELDS = {
    "spark": ({"bucket", "key"}, {"args", "name", "on_failure"}),
    "jar": ({"bucket", "key"}, {"args", "name", "on_failure", "class"}),
    "streaming": ({"mapper", "reducer", "input", "output"}, {"name", "on_failure"}),
    "copy": ({"bucket", "key"}, set()),
}


def add_step(cluster_id, body):
    _valid_text(body)
    provider = _service().provider()
    kind = body["type"]
    needed, optional = STEP_FIELDS[kind]
    given = set(body) - {"type"}
    missing = sorted(needed - given)
    if missing:
        raise UsageError(f"{', '.join(missing)}: a {kind} step needs "
                         f"{', '.join(sorted(needed))}")
    extra = sorted(given - needed - optional)
    if extra:
        takes = [name for name, (need, opt) in STEP_FIELDS.items() if extra[0] in need | opt]
        raise UsageError(f"{extra[0]}: a {kind} step takes no {extra[0]}; "
                         f"{extra[0]} is for type {' or '.join(takes) or 'none'}")
    key = _idempotency_key()
    options = {"name": body.get("name"), "on_failure": body.get("on_failure"),
               "idempotency_key": key}
    if kind == "spark":
        action = provider.run(cluster_id, body["bucket"], body["key"], body.get("args") or [],
                              **options)
    elif kind == "jar":
        if not body["key"].lower().endswith(".jar"):
            raise UsageError(f"key: '{body['key']}' is not a .jar; use type spark for a "
                             "Python program")
        action = provider.run(cluster_id, body["bucket"], body["key"], body.get("args") or [],
                              main_class=body.get("class"), **options)
    elif kind == "streaming":
        action = provider.stream(cluster_id, body["mapper"], body["reducer"], body["input"],
                                 body["output"], **options)
    else:
        action = provider.copy(cluster_id, body["bucket"], body["key"], idempotency_key=key)
    return _answer(provider, {"StepId": action["Target"], "ClusterId": cluster_id,
                              "Action": action}, 201)


def cancel_step(cluster_id, step_id):
    provider = _service().provider()
    action = provider.cancel(cluster_id, [step_id])[0]
    return _answer(provider, {"ClusterId": cluster_id, "StepId": step_id, "Action": action}, 202)


def step_log(cluster_id, step_id, file, tail=None):
    provider = _service().provider()
    text = provider.logs(cluster_id, step_id, file=file, tail=tail)
    if provider.database_error is not None:
        raise Unrecorded(provider.database_error, text)
    return text, 200, {"Content-Type": "text/plain"}


def step_diagnosis(cluster_id, step_id):
    provider = _service().provider()
    return _answer(provider, provider.diagnosis(cluster_id, step_id))


class _Raw(io.RawIOBase):
    """A readable stream as a raw stream, so io.BufferedReader can peek into it."""

    def __init__(self, stream):
        super().__init__()
        self._stream = stream

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _not_empty(stream):
    """The stream, refused with a 400 when it holds no byte: no file was sent."""
    reader = io.BufferedReader(_Raw(stream), buffer_size=1024 * 1024)
    if not reader.peek(1):
        raise UsageError(
            "the request body is empty: send the file's bytes as the body "
            "(curl -T FILE URL) or as the 'file' part of a form (curl -F file=@FILE URL)"
        )
    return reader


def upload_object(bucket, key, file=None):
    """The file is the request body: raw bytes, or the ``file`` part of a form."""
    import flask

    request = flask.request
    if request.mimetype == "multipart/form-data":
        if file is None:  # connexion saw a 'file' part: a plain field, not a file
            raise UsageError(
                "file: the form's 'file' part is a plain field, not a file; send the file "
                "itself (curl -F file=@FILE URL)"
            )
        # a spooled temporary file; its part says a file was sent, even an empty one
        stream, name = file.stream, file.filename or None
    else:  # application/octet-stream (or no Content-Type): read as it arrives
        stream, name = _not_empty(request.stream), None
    provider = _service().provider()
    action = provider.upload_stream(stream, bucket, key, name=name)
    return _answer(provider, {"Url": action["Target"], "Action": action}, 201)


# ---- errors --------------------------------------------------------------------------


def _problem(status, title, detail, slug, result=None):
    from connexion.problem import problem

    ext = {"result": result} if result is not None else None
    return problem(status, title, detail, type=problem_type(slug), ext=ext)


def _rest_words(message):
    """A message in the service's words: the CLI's '--count' is the field 'count' here."""
    return message[2:] if message.startswith("--") else message


def _emr_error(request, error):
    slug = next(s for cls, s in PROBLEM_TYPES.items() if isinstance(error, cls))
    if error.http_status >= 500:  # the client's own mistakes are only in its answer
        LOG.warning("%s %s: %s", request.method, request.url.path, error.message)
    return _problem(error.http_status, error.title, _rest_words(error.message), slug)


def _bad_request(request, error):
    """connexion's own 400s (the request does not fit the spec), typed like ours."""
    return _problem(400, UsageError.title, error.detail, "bad-request")


def _nonconforming(request, error):
    """An answer that does not fit the spec is a defect: logged, and a 500 without internals."""
    LOG.error("%s %s: the answer does not conform to the spec: %s", request.method,
              request.url.path, error.detail)
    return _problem(500, "Internal error", INTERNAL, "internal")


def _client_gone(request, error):
    LOG.warning("%s %s: %s", request.method, request.url.path, error)
    return _problem(400, UsageError.title, str(error), "bad-request")


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


class Refused(Exception):
    """A request the service will not take, whatever it asks: answered with ``status``."""

    TITLES = {400: "Bad request", 403: "Forbidden", 415: "Unsupported media type"}

    def __init__(self, status, slug, detail):
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail


def _refused(request, refused):
    return _problem(refused.status, Refused.TITLES[refused.status], refused.detail, refused.slug)


def _unsupported(request, error):
    """connexion's 415 (a body in a media type the operation does not take), typed like ours."""
    return _problem(415, Refused.TITLES[415], error.detail, "unsupported-media-type")


def spec_methods(spec):
    """[(regex of a path of the spec, the methods it takes)]: the ``Allow`` of a 405.
    HEAD goes wherever GET does (see HeadAsGet)."""
    import re

    table = []
    for path, item in spec["paths"].items():
        methods = sorted(m.upper() for m in item if m != "parameters")
        if "GET" in methods:
            methods = sorted([*methods, "HEAD"])
        pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: "(.+)" if m.group(1) == "key" else "([^/]+)",
                         re.escape(path))
        table.append((re.compile(f"^{pattern}$"), ", ".join(methods)))
    return table


def _http_error(methods):
    """starlette's HTTP errors as connexion answers them, except that a 405 names in
    ``Allow`` every method of its path (the router names only those of one operation)."""

    def handle(request, error):
        import http

        from connexion.problem import problem

        headers = dict(error.headers or {})
        if error.status_code == 405:
            path = request.url.path
            headers["Allow"] = next((allowed for pattern, allowed in methods
                                     if pattern.match(path)), headers.get("Allow", ""))
        return problem(error.status_code, http.HTTPStatus(error.status_code).phrase,
                       error.detail, headers=headers)

    return handle


def _unexpected(request, error):
    """The catch-all: a defect. The log keeps the traceback; the client sees no internals."""
    LOG.error("%s %s: unexpected %s", request.method, request.url.path, type(error).__name__,
              exc_info=error)
    return _problem(500, "Internal error", INTERNAL, "internal")


# ---- bearer token ----------------------------------------------------------------------


def _security_map(token):
    """connexion's handler for the spec's bearer scheme, bound to this app's token.

    Every operation needs ``Authorization: Bearer <token>``, compared in constant time.
    Without a token the served spec has no security requirement, and this is not used.
    """
    from connexion.security import BearerSecurityHandler

    expected = token.encode()

    def check(given):
        if hmac.compare_digest(given.encode(), expected):
            return {"sub": "client"}
        return None  # connexion answers 401

    class TokenHandler(BearerSecurityHandler):
        def get_fn(self, security_scheme, required_scopes):
            return self._get_verify_func(check)

    return {"bearer": TokenHandler}


def _bearer(headers):
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, given = (headers.get("authorization") or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


# ---- the spec as served -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _spec_source():
    """emr.yaml, parsed once per process (with libyaml's parser when PyYAML has it: the
    spec is large, and pure-Python parsing took half a second per app)."""
    import yaml

    return yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def served_spec(token):
    """emr.yaml as this app serves it: what the app requires and accepts, no more.

    - With a token every operation requires the bearer scheme; without one the spec has
      no security requirement, no securitySchemes and no 401 answers.
    - A query parameter marked ``x-vocabulary: <kind>`` lists the words of that table of
      vocabulary.py (lower and upper case) as the enum of its items.
    """
    from cloudmesh.emr.api import vocabulary

    spec = copy.deepcopy(_spec_source())  # each app changes its own copy
    components = spec["components"]
    if not token:
        spec.pop("security", None)
        components.pop("securitySchemes", None)
        components["responses"].pop("Unauthorized", None)
        for item in spec["paths"].values():
            for method, operation in item.items():
                if method != "parameters":
                    operation["responses"].pop("401", None)
    for parameter in components["parameters"].values():
        kind = parameter.get("x-vocabulary")
        if kind is not None:
            parameter["schema"]["items"]["enum"] = vocabulary.spellings(kind)
    return spec


# ---- middlewares -------------------------------------------------------------------


class AccessLog:
    """ASGI middleware: one line per request (method, path, status, milliseconds).

    The path is logged as it came over the wire (percent-encoded), so a client cannot
    break the line with an encoded newline.
    """

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

        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope["path"]
        path = path.encode("unicode_escape").decode("ascii")  # no control character either
        try:
            await self.app(scope, receive, sending)
        finally:
            ms = (time.perf_counter() - start) * 1000
            ACCESS.info("%s %s %d %.1f ms", scope["method"], path, status[0], ms)


class HeadAsGet:
    """ASGI middleware: HEAD is answered as the GET it stands for, without the body.

    connexion routes HEAD to the GET operation but checks the missing body against
    the GET's schema and fails; here the operation runs as a GET, the status and
    headers (Content-Length included) go out, the body does not.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def _authority(value, default_port):
    """(host, port) that ``host[:port]`` names, host in lower case without brackets;
    None when it is not a host name or address with an optional port."""
    from urllib.parse import urlsplit

    from cloudmesh.emr.config import HOST_NAME

    if not HOST_NAME.match(value):
        return None
    parts = urlsplit(f"//{value}")
    try:
        port = parts.port
    except ValueError:  # out of range
        return None
    return parts.hostname, default_port if port is None else port


@dataclass(frozen=True)
class Audience:
    """Whom the service answers: the names a Host header (or an Origin) may give.

    Its own address and ``localhost``, on its own port; any IP address of the machine
    when it is bound to all of them (0.0.0.0 or ::); and the names of
    cloudmesh.emr.server.hosts (``name`` on any port, ``name:port`` on that one).
    """

    address: str
    port: int
    names: tuple = ()

    @classmethod
    def of(cls, address, port, hosts=()):
        names = tuple(_authority(name, None) for name in hosts)
        return cls(address.lower().strip("[]"), int(port), names)

    def admits(self, host, port):
        if any(host == name and named in (None, port) for name, named in self.names):
            return True
        if port != self.port:
            return False
        if host in (self.address, *LOOPBACK_NAMES):
            return True
        try:
            given = ipaddress.ip_address(host)
        except ValueError:  # a name: only the listed ones
            return False
        if self.address in LOOPBACK_NAMES:
            return given.is_loopback
        bound = ipaddress.ip_address(self.address)
        return given == bound or bound.is_unspecified

    def admits_host(self, value):
        where = _authority(value, HTTP_PORTS["http"])
        return where is not None and self.admits(*where)

    def admits_origin(self, origin):
        from urllib.parse import urlsplit

        parts = urlsplit(origin)
        if parts.scheme not in HTTP_PORTS or parts.path or parts.query or "@" in parts.netloc:
            return False  # 'null', a file: page, anything that is not http(s)://host[:port]
        where = _authority(parts.netloc, HTTP_PORTS[parts.scheme])
        return where is not None and self.admits(*where)

    def example(self):
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{address}:{self.port}"


class RequestGuard:
    """ASGI middleware in front of everything but the error handlers: only the service's
    user gets an answer.

    - The Host header must name the service (see Audience), else 400: a web page whose
      name an attacker points at 127.0.0.1 (DNS rebinding) gets nothing.
    - A request that carries an Origin the Audience does not admit (a page of another
      site in the user's browser) is refused with 403 unless it carries the bearer token.
    The service sends no CORS header, so a browser grants no cross-site preflight.
    """

    def __init__(self, app, audience, token=None):
        self.app = app
        self.audience = audience
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        hosts, origins, headers = [], [], {}
        for name, value in scope["headers"]:
            name, value = name.decode("latin-1").lower(), value.decode("latin-1")
            headers.setdefault(name, value)
            if name == "host":
                hosts.append(value)
            elif name == "origin":
                origins.append(value)
        if len(hosts) != 1 or not self.audience.admits_host(hosts[0]):
            shown = repr(hosts[0][:100]) if hosts else "none"
            raise Refused(400, "bad-request",
                          f"the Host header ({shown}) does not name this service: use "
                          f"{self.audience.example()} or localhost:{self.audience.port}, or list "
                          "the name under cloudmesh.emr.server.hosts in cloudmesh.yaml")
        if origins and not (len(origins) == 1 and self.audience.admits_origin(origins[0])) \
                and not self._token_given(headers):
            raise Refused(403, "forbidden",
                          f"requests from pages of another site (Origin {origins[0][:100]!r}) "
                          "are refused; send the bearer token, or call the service from a "
                          "program, not a web page")
        await self.app(scope, receive, send)

    def _token_given(self, headers):
        given = _bearer(headers)
        return (self.token is not None and given is not None
                and hmac.compare_digest(given.encode(), self.token))


class ClientGone(Exception):
    """The client went away before it had sent the whole request body."""


@dataclass(frozen=True)
class Operation:
    """What OperationGuard needs to know of one operation of the spec."""

    method: str
    path: str
    query: tuple  # the names of its query parameters
    media_types: tuple  # the media types its request body may have, the spec's first first
    fields: tuple  # the properties of its JSON or form body
    vocabularies: tuple = ()  # (query parameter, vocabulary kind) of its word filters


def spec_operations(spec):
    """operationId -> Operation, for every operation of the (parsed) spec."""

    def resolve(node):
        while isinstance(node, dict) and "$ref" in node:
            target = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            node = target
        return node

    table = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            parameters = [resolve(p) for p in item.get("parameters", []) + op.get("parameters", [])]
            content = resolve(op.get("requestBody", {})).get("content", {})
            fields = []
            for media in content.values():
                schema = resolve(media.get("schema", {}))
                for one in [schema, *(resolve(s) for s in schema.get("oneOf", []))]:
                    fields.extend(f for f in one.get("properties", {}) if f not in fields)
            table[op["operationId"]] = Operation(
                method.upper(), path, tuple(p["name"] for p in parameters if p["in"] == "query"),
                tuple(content), tuple(fields),
                tuple((p["name"], p["x-vocabulary"]) for p in parameters if "x-vocabulary" in p))
    return table


class OperationGuard:
    """ASGI middleware right behind connexion's router, for what connexion leaves open.

    - A request the router could not tie to an operation of our API is a 404 here.
      connexion would pass it to Flask, whose own router may still match it (a path
      with an encoded newline) and fail outside connexion's context: a 500.
    - A JSON operation (POST) takes a body that says it is JSON, else 415: a browser
      sends a body without Content-Type (or as text/plain) cross-site without asking
      first. An upload body without a Content-Type is read as raw bytes, the first media
      type of its operation (PUT always needs a preflight the service never grants).
    - A client that disconnects in the middle of its body raises ClientGone where the
      body is read, so an upload is never stored cut short.
    - connexion's 400s say which values are accepted where they name an unknown one.
    """

    def __init__(self, app, operations, base_path=""):
        self.app = app
        self.operations = operations
        self.base_path = base_path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.exceptions import HTTPException

        routed = scope.get("extensions", {}).get("connexion_routing", {})
        operation = self.operations.get(routed.get("operation_id"))
        if operation is None or routed.get("api_base_path") != self.base_path:
            raise HTTPException(404, "no operation of this service has that path; "
                                     "see /openapi.json or /ui")
        headers = scope["headers"]
        if operation.media_types and not any(name == b"content-type" for name, _ in headers):
            if JSON in operation.media_types:
                raise Refused(415, "unsupported-media-type",
                              f"{operation.method} {operation.path} takes a JSON body: send it "
                              f"with Content-Type: {JSON}")
            scope = {**scope, "headers": [*headers, (b"content-type",
                                                     operation.media_types[0].encode())]}
        self._check_words(operation, scope)
        from connexion.exceptions import BadRequestProblem

        try:
            await self.app(scope, self._watched(receive), send)
        except BadRequestProblem as problem:
            raise BadRequestProblem(self._detail(operation, problem.detail or "")) from None

    @staticmethod
    def _check_words(operation, scope):
        """A filter word the spec does not list is a 400 in the command line's words
        (connexion's own check would say only that it is not in the enum)."""
        if not operation.vocabularies:
            return
        from urllib.parse import parse_qsl

        from cloudmesh.emr.api import vocabulary

        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                          keep_blank_values=True)
        for name, kind in operation.vocabularies:
            for value in (v for k, v in query if k == name):
                if value not in vocabulary.spellings(kind):
                    raise UsageError(
                        f"{name}: '{value}' is not a {kind}; use one of: "
                        f"{', '.join(vocabulary.words(kind))} (lower or upper case, one word "
                        f"per value; repeat {name} for several)")

    @staticmethod
    def _watched(receive):
        complete = False

        async def receiving():
            nonlocal complete
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                complete = True
            elif message["type"] == "http.disconnect" and not complete:
                raise ClientGone("the client disconnected before it had sent the whole "
                                 "request body; nothing was stored")
            return message

        return receiving

    @staticmethod
    def _detail(operation, detail):
        detail = detail.split("\n\n")[0]  # jsonschema adds the whole schema after a blank line
        if detail.startswith("Extra query"):
            names = ", ".join(operation.query) or "none"
            detail += f"; the query parameters of {operation.method} {operation.path}: {names}"
        elif detail.startswith("Extra formData") or "Additional properties" in detail:
            detail += f"; the fields of the request body: {', '.join(operation.fields)}"
        return detail


def one_of_detail(error, body):
    """What is wrong with a JSON ``body`` that fits none of the alternatives of a
    ``oneOf`` with a discriminator, in the words of the alternative it names (jsonschema
    says only that it fits none); None for any other error."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    name = (schema.get("discriminator") or {}).get("propertyName")
    if error.validator != "oneOf" or not name or not isinstance(body, dict):
        return None
    noun = schema.get("x-noun", "body")
    choices = schema["oneOf"]
    kinds = [(c.get("properties", {}).get(name, {}).get("enum") or [None])[0] for c in choices]
    given = body.get(name)
    if given not in kinds:
        shown = f"'{given}' is not" if name in body else "missing; it is"
        return f"{name}: {shown} one of {', '.join(map(str, kinds))}"
    index = kinds.index(given)
    fields = [f for f in choices[index].get("properties", {}) if f != name]
    extra = [f for f in body if f != name and f not in fields]
    if extra:
        takes = [k for k, c in zip(kinds, choices) if extra[0] in c.get("properties", {})]
        return (f"{extra[0]}: a {given} {noun} takes no {extra[0]}"
                + (f"; {extra[0]} is for type {' or '.join(takes)}" if takes else "")
                + f"; the fields of a {given} {noun}: {', '.join(fields)}")
    import jsonschema
    from connexion.json_schema import format_error_with_path

    errors = [e for e in error.context if list(e.relative_schema_path)[:1] == [index]]
    if not errors:
        return None
    best = jsonschema.exceptions.best_match(errors)
    return f"{best.message}{format_error_with_path(exception=best)}"


def _body_validators():
    """connexion's validators, with JSON bodies that say which field of a ``oneOf``
    alternative is wrong (see one_of_detail)."""
    from connexion.datastructures import MediaTypeDict
    from connexion.exceptions import BadRequestProblem
    from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator
    from jsonschema import ValidationError

    class OneOfBodyValidator(JSONRequestBodyValidator):
        def _validate(self, body):
            try:
                return super()._validate(body)
            except BadRequestProblem:
                try:
                    self._validator.validate(body)
                except ValidationError as error:
                    detail = one_of_detail(error, body)
                    if detail:
                        raise BadRequestProblem(detail=detail) from None
                raise

    return {"body": MediaTypeDict({**VALIDATOR_MAP["body"], "*/*json": OneOfBodyValidator})}


class TerminatedInput:
    """WSGI middleware: the request body ends where the ASGI server says it ends.

    Without a Content-Length (a chunked body) werkzeug reads nothing, unless the server
    marks its input as terminated, which an ASGI server's always is. Without this, a
    chunked upload would store an empty object.
    """

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        environ.setdefault("wsgi.input_terminated", True)
        return self.app(environ, start_response)


# ---- the app and the server ------------------------------------------------------------


def served_ttl(settings):
    """Seconds the served service shares a listing's answer: cloudmesh.emr.server.cache,
    1 unless set; 0 asks AWS on every request."""
    value = settings.get("emr", "server", "cache", default=SERVED_TTL)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds <= 3600 or isinstance(value, bool):
        raise UsageError(f"cloudmesh.emr.server.cache: '{value}' is not a number of seconds "
                         "from 0 to 3600 (0 asks AWS on every request)")
    return seconds


def create_app(cloud=None, token=None, settings=None, host="127.0.0.1", port=8080,
               answer_ttl=0):
    """The connexion app of the service for ``cloud`` on ``host``:``port``; its
    ``test_client(base_url="http://127.0.0.1:8080")`` serves tests.

    ``token``: the bearer token every operation requires; it is required when ``host``
    is not a loopback address, and a UsageError otherwise. Requests must name
    ``host``:``port``, localhost or a name of cloudmesh.emr.server.hosts as their Host.
    ``answer_ttl``: seconds a listing's answer is shared by the requests for it (0: each
    asks AWS; ``serve`` takes cloudmesh.emr.server.cache, see served_ttl).
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
    service = Service(cloud, settings, answer_ttl)
    audience = Audience.of(host, port, service.settings.server_hosts())
    spec = served_spec(token)
    app = connexion.FlaskApp(
        __name__,
        specification_dir=str(SPEC.parent),
        swagger_ui_options=SwaggerUIOptions(swagger_ui=True, swagger_ui_path="/ui",
                                            spec_path="/openapi.json"),
    )
    app.add_api(spec, strict_validation=True, validate_responses=False,  # see conform()
                validator_map=_body_validators(),
                security_map=_security_map(token) if token else None)
    from connexion.exceptions import (
        BadRequestProblem, NonConformingResponse, OAuthProblem, UnsupportedMediaTypeProblem,
    )
    from starlette.formparsers import MultiPartException

    app.add_error_handler(EmrError, _emr_error)
    app.add_error_handler(BadRequestProblem, _bad_request)
    app.add_error_handler(OAuthProblem, _unauthorized)
    app.add_error_handler(Unrecorded, _unrecorded)
    app.add_error_handler(ClientGone, _client_gone)
    app.add_error_handler(Refused, _refused)
    from starlette.exceptions import HTTPException

    app.add_error_handler(HTTPException, _http_error(spec_methods(spec)))
    app.add_error_handler(UnsupportedMediaTypeProblem, _unsupported)
    for unreadable in (UnicodeDecodeError, MultiPartException):
        app.add_error_handler(unreadable, _unreadable)
    app.add_error_handler(NonConformingResponse, _nonconforming)
    app.add_error_handler(Exception, _unexpected)
    app.add_middleware(AccessLog, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_middleware(HeadAsGet, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_middleware(RequestGuard, position=MiddlewarePosition.BEFORE_SWAGGER,
                       audience=audience, token=token)
    app.add_middleware(OperationGuard, position=MiddlewarePosition.BEFORE_SECURITY,
                       operations=spec_operations(spec))
    app.add_wsgi_middleware(TerminatedInput)
    app.app.extensions[EXTENSION] = service
    app.service = service
    return app


class Redacting(logging.Formatter):
    """A log line (traceback included) without the userinfo of any URL in it."""

    def format(self, record):
        from cloudmesh.emr.redaction import redact

        return redact(super().format(record))


def _log_to_stderr():
    """The access log and the service's own log, on stderr, each line with its time."""
    if not any(getattr(h, "cloudmesh", False) for h in LOG.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.cloudmesh = True
        handler.setFormatter(Redacting("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
        LOG.addHandler(handler)  # ACCESS is a child of LOG
    LOG.setLevel(logging.INFO)
    LOG.propagate = False  # one line per request, whatever else configured logging
    # connexion logs each problem it answers, unformatted: our own log says what failed
    logging.getLogger("connexion").setLevel(logging.CRITICAL)


def _listen(host, port):
    """A socket listening on (host, port), or one line that says why there is none.

    Bound here, before anything else starts, and handed to uvicorn: the service is
    reachable from the moment it says where it is.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"--host: cannot use '{host}' ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise EmrError(f"cannot listen on {host}:{port} ({error.strerror}); "
                       "pick another --port or --host") from None
    return sock


def serve(host="127.0.0.1", port=8080, cloud=None):
    """Serve in the foreground until Ctrl-C; return the exit code."""
    import warnings

    from cloudmesh.emr.config import Settings

    settings = Settings.load()
    sock = _listen(host, port)
    port = sock.getsockname()[1] or port  # the port it got, when asked for any (0)
    try:
        token = settings.server_token()
        if not token and not is_loopback(host):
            token = secrets.token_urlsafe(32)
            print(f"bearer token (shown once; send 'Authorization: Bearer <token>'): {token}",
                  file=sys.stderr, flush=True)
        with warnings.catch_warnings():  # connexion imports starlette's test client
            warnings.filterwarnings("ignore", message=".*starlette.testclient")
            app = create_app(cloud=cloud, token=token, settings=settings, host=host, port=port,
                             answer_ttl=served_ttl(settings))
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
        config = uvicorn.Config(app, host=host, port=port, access_log=False,
                                log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        try:
            server.run(sockets=[sock])
        except SystemExit as stop:  # uvicorn exits when it cannot start
            return 1 if stop.code else 0
        except KeyboardInterrupt:
            pass
        finally:
            app.service.database.close()
        return 0 if server.started else 1
    finally:
        sock.close()
