"""Provider: one method per operation; calls EMR and S3 through boto3, records, returns.

Every method returns plain records in AWS's own shapes (boto3 response items, with
datetimes timezone-aware in UTC) and records them in the database. It never prints:
warnings go to ``self.warnings``, and a database failure after a successful AWS call
goes to ``self.database_error`` so the caller can show the AWS result first.
Both the command line and the REST service call these methods.
"""

import datetime
import os
import re
import sys
import uuid
from contextlib import contextmanager

from cloudmesh.emr.api import vocabulary
from cloudmesh.emr.config import Settings
from cloudmesh.emr.durations import shown
from cloudmesh.emr.errors import (
    AwsError, Conflict, DatabaseError, EmrError, NotFound, NotOffered, UsageError, shorten,
    undecodable,
)
from cloudmesh.emr.redaction import mask, redact_url, userinfo

CLUSTER_ID = re.compile(r"^j-[A-Za-z0-9]{1,64}$")
RELEASE_LABEL = re.compile(r"^emr-\d+\.\d+\.\d+(-[A-Za-z0-9-]+)?$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
COMMAND_RUNNER = "command-runner.jar"
MASTER_HOME = "/home/hadoop/"
# Spark needs one core for the node manager and at least one for work
MIN_VCPU = 2

COUNT = re.compile(r"^\s*\d+\s*$")

# the tag every cluster `start` creates carries: a fresh UUID, or the caller's idempotency key
REQUEST_TAG = "cloudmesh:request"
IDEMPOTENCY_KEY = re.compile(r"^[\w .:/=+\-@]{1,128}$")  # what an EMR tag value may hold
ACTIVE_CLUSTER = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"]
# how far back (seconds) "created since the call began" reaches: clocks of client and AWS differ
CLOCK_SKEW = 300
BACKOFF_BASE = 1.0  # seconds; botocore's standard mode uses the same base and ceiling
MAX_BACKOFF = 20.0
# error codes of a throttle or a failure on AWS's side: the call may or may not have acted
MAYBE_ACTED = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "RequestThrottled",
    "InternalError", "InternalFailure", "InternalServerError", "ServiceUnavailable",
    "ServiceUnavailableException", "RequestTimeout", "RequestTimeoutException",
}
STEP_ID = re.compile(r"^s-[A-Za-z0-9]{1,64}$")
JAVA_CLASS = re.compile(r"^[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*$")
S3_URI = re.compile(r"s3[an]?://([^/\s]+)/?(\S*)")
# a step log and its rotated parts: stderr.gz, stderr.1.gz, stderr.2026-11-23-10.gz, stderr
LOG_PART = re.compile(r"(?P<name>[a-z]+)(?:\.(?P<part>(?!gz$)[\w-]+))?(?:\.gz)?")
# a container log: <container-id>/stderr.gz (on some releases <node>/<container-id>/...)
CONTAINER_LOG = re.compile(r"(?:[^/]+/)*container_[\w]+/(?P<name>stderr|stdout)(?:\.gz)?")
BOOTSTRAP_ACTION = re.compile(r"bootstrap action (\d+)")
INSTANCE_ID = re.compile(r"\bi-[0-9a-f]{8,17}\b")
LOG_BYTES = 4 * 1024 * 1024  # of each log, the last 4 MiB are read for a diagnosis
LOG_DELAY = 10 * 60  # EMR copies step logs to S3 every few minutes: after 10, they are late
MOST_APPLICATIONS = 3  # YARN applications of one step whose container logs are read
BOOTSTRAP_STDERR_LINES = 10
GROUP_ID = re.compile(r"^[a-z]{1,3}-[A-Za-z0-9]{1,64}$")  # ig-... (moto's: i-...)
ENDED_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")

# waiting: seconds between polls on AWS and on the emulator, and the longest wait
WAIT_DELAY, WAIT_DELAY_LOCAL, WAIT_TIMEOUT = 30, 1, 2 * 3600

# metrics: what `metrics` reads from CloudWatch, and how
METRICS_NAMESPACE = "AWS/ElasticMapReduce"
METRICS = ("IsIdle", "AppsRunning", "AppsPending", "ContainerPending",
           "YARNMemoryAvailablePercentage", "CoreNodesRunning", "TaskNodesRunning",
           "HDFSUtilization")
METRICS_PERIOD = 300
METRICS_SINCE = "3h"

# doctor: the on-demand standard-instance vCPU quota (Service Quotas), and the roles
# `aws emr create-default-roles` makes: (name, trusted services, managed policy)
QUOTA_CODE = "L-1216C47A"
KEY_NAME = re.compile(r"^[\x20-\x7e]{1,255}$")  # EC2: ASCII, up to 255 characters
SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{1,17}$")
EC2_DEFAULT_ROLE = "EMR_EC2_DefaultRole"
MISSING_ROLE = ("NoSuchEntity", "NoSuchEntityException")  # IAM: no such role or profile
UNKNOWN_RELEASE = ("ValidationException", "InvalidRequestException")  # EMR: no such label
MANAGED = "arn:aws:iam::aws:policy/service-role/"
DEFAULT_ROLES = (
    ("EMR_DefaultRole", ("elasticmapreduce.amazonaws.com",), MANAGED + "AmazonElasticMapReduceRole"),
    (EC2_DEFAULT_ROLE, ("ec2.amazonaws.com",), MANAGED + "AmazonElasticMapReduceforEC2Role"),
    ("EMR_AutoScaling_DefaultRole",
     ("elasticmapreduce.amazonaws.com", "application-autoscaling.amazonaws.com"),
     MANAGED + "AmazonElasticMapReduceforAutoScalingRole"),
)

# botocore error codes that mean "your credentials or rights are the problem"
DENIED = {
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "InvalidClientTokenId",
    "UnrecognizedClientException", "InvalidSignatureException", "SignatureDoesNotMatch",
    "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId",
}
# an XML error body where botocore expected JSON (a proxy, an emulator's IAM check)
XML_FIELD = {name: re.compile(rf"<{name}>([^<]*)</{name}>") for name in ("Code", "Message")}


def error_of(error):
    """(code, message) of a botocore ClientError, read out of an XML body if need be.

    An answer of HTTP 403 counts as AccessDenied whatever its body says.
    """
    details = error.response.get("Error", {})
    code = str(details.get("Code") or "Unknown")
    message = " ".join(str(details.get("Message") or "").split())
    if message.startswith("<"):
        found = {name: pattern.search(message) for name, pattern in XML_FIELD.items()}
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", code)
        code = found["Code"].group(1) if found["Code"] else code
        message = (found["Message"].group(1) if found["Message"]
                   else f"the endpoint answered HTTP {status}")
    if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
        code = code if code in DENIED else "AccessDenied"
    return code, message


def answer_lost(error):
    """Whether a call that raised ``error`` may have acted all the same: its answer was
    lost (connection reset or closed, read timeout), AWS throttled it, or failed inside."""
    import botocore.exceptions as bx

    if isinstance(error, (bx.ConnectionError, bx.HTTPClientError)):
        return True
    if isinstance(error, bx.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(error.response.get("Error", {}).get("Code") or "")
        return status >= 500 or code in MAYBE_ACTED
    return False


def utc(value):
    """Records with every datetime turned into a timezone-aware UTC datetime."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is datetime.timezone.utc:  # as utc_timestamp parses them
            return value
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc)
    if isinstance(value, dict):
        return {key: utc(item) for key, item in value.items() if key != "ResponseMetadata"}
    if isinstance(value, list):
        return [utc(item) for item in value]
    return value


def utc_in_place(value):
    """``utc`` of records this process made (a listing's parsed answers), converted where
    they are instead of copied: a listing of 5,000 clusters holds one set of records."""
    if isinstance(value, dict):
        value.pop("ResponseMetadata", None)
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return utc(value)
    for key, item in items:
        if isinstance(item, datetime.datetime):
            if item.tzinfo is not datetime.timezone.utc:
                value[key] = utc(item)
        elif isinstance(item, (dict, list)):
            utc_in_place(item)
    return value


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def created(record):
    timeline = (record.get("Status") or {}).get("Timeline") or {}
    return timeline.get("CreationDateTime") or datetime.datetime.min.replace(
        tzinfo=datetime.timezone.utc
    )


def newest_first(records):
    return sorted(records, key=created, reverse=True)


def check_cluster_id(cluster_id):
    if not isinstance(cluster_id, str) or not CLUSTER_ID.match(cluster_id):
        raise UsageError(
            f"'{shorten(cluster_id)}' is not a cluster id; cluster ids look like j-2AXXXXXXGAPLF "
            "(see 'cms emr list clusters')"
        )
    return cluster_id


def check_text(field, value):
    """``value`` if it is valid Unicode text, else UsageError naming ``field``: bytes that
    were not UTF-8 (surrogate-escaped in argv) or a lone surrogate (a JSON escape) would
    reach AWS as something else, or not at all, and no database could store them."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for item in values:
        if isinstance(item, str) and undecodable(item):
            raise UsageError(
                f"{field}: '{shorten(item)}' is not valid text (it holds bytes that are not "
                "UTF-8, or a lone surrogate); give it in UTF-8"
            )
    return value


def check_bucket(bucket, key):
    check_text("BUCKET", bucket)
    check_text("BUCKETNAME", key)
    if not isinstance(bucket, str) or not BUCKET.match(bucket) or ".." in bucket:
        raise UsageError(
            f"'{shorten(bucket)}' is not a valid S3 bucket name: 3 to 63 lowercase letters, "
            "digits, dots and hyphens, starting and ending with a letter or digit"
        )
    if not isinstance(key, str) or not key.strip() or len(key.encode()) > 1024:
        raise UsageError(f"'{shorten(key)}' is not a valid S3 object name (1 to 1024 bytes)")
    return f"s3://{bucket}/{key}"


def utc_timestamp(value):
    """botocore's timestamp parser, answering in UTC.

    botocore's own gives each timestamp a new dateutil ``tzlocal()`` (about 25 us and
    half a kilobyte each: a listing of 5,000 clusters parses 10,000 of them), which
    ``utc`` then converts again. The same instant, straight in UTC; what is not an epoch
    number (the ISO-8601 text of XML answers) goes through botocore's parser."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
        except (OverflowError, OSError, ValueError):
            pass
    from botocore.utils import parse_timestamp

    return utc(parse_timestamp(value))


_LOADER = []


def botocore_session():
    """A botocore session whose loader of service models is the process's one: models
    are read once however many Providers are made (the REST service makes one per
    request), while credentials and settings are each session's own. Its answers'
    timestamps are parsed in UTC (utc_timestamp)."""
    import botocore.session

    session = botocore.session.get_session()
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=utc_timestamp)
    if _LOADER:
        session.register_component("data_loader", _LOADER[0])
    else:
        _LOADER.append(session.get_component("data_loader"))
    return session


def upload_failed():
    """boto3's S3UploadFailedError when boto3 is loaded (an upload ran), else nothing:
    the except clause that names it is evaluated only when an error goes by."""
    exceptions = sys.modules.get("boto3.exceptions")
    return exceptions.S3UploadFailedError if exceptions else ()


class Provider:
    """EMR and S3 for one cloud (a cloudmesh.yaml profile, or boto3's own chain)."""

    def __init__(self, cloud=None, settings=None, database=None, clients=None):
        """``database`` and ``clients`` (a dict) may be shared by many Providers of one
        cloud, as the REST service does with one Provider per request."""
        self.settings = settings or Settings.load()
        self.cloud = self.settings.cloud(cloud)
        self.settings.mongo()  # a bad database setting is bad input: say so before calling AWS
        self.settings.credentials(self.cloud)  # so is a half-set or misspelt credentials block
        self._database = database
        self._owns_database = database is None
        self._session = None  # botocore's, made with the first client
        self._clients = {} if clients is None else clients
        self._endpoint = None
        self.warnings = []
        self.database_error = None
        self.journaled = 0  # records the database could not take, kept in the journal
        self.journal_error = None
        self.retry_mode = "standard"  # sync: adaptive, so a busy account is not throttled

    # ---- plumbing -------------------------------------------------------------------

    @property
    def database(self):
        if self._database is None:
            from cloudmesh.emr.database import Database

            self._database = Database(self.settings)
        return self._database

    def close(self):
        """Close the database client this Provider made (a shared one stays open)."""
        if self._owns_database and self._database is not None:
            self._database.close()

    def client(self, service, region=None, once=False):
        """The botocore client of ``service`` (in ``region`` when given: the Price List API
        answers from us-east-1 only), made once. S3's comes through boto3, whose
        transfer manager uploads; the others straight from botocore, so a command that
        never transfers a file does not import boto3 and s3transfer.

        ``once``: a client that never re-sends a call (botocore's retries off), for the
        calls that create (RunJobFlow, AddJobFlowSteps): ``_create`` alone re-sends those,
        after looking for what a lost call made."""
        key = service if region is None else f"{service}@{region}"
        key = f"{key} once" if once else key
        if key not in self._clients:
            from botocore.config import Config

            session_options, self._endpoint = self.settings.boto_options(self.cloud)
            if region is not None:
                session_options = {**session_options, "region_name": region}
            control = sys.modules.get("cloudmesh.emr.local.control")
            if control is not None:  # a lost daemon.json rebuilt, or a stale one removed
                self.warnings.extend(control.take_warnings())
            config = Config(
                retries={"mode": self.retry_mode,  # total_max_attempts counts the first try too
                         "total_max_attempts": 1 if once else self.settings.retry_attempts()},
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path"} if self._endpoint else None,
            )
            with self._aws(f"connect to {service}"):
                if self._session is None:
                    self._session = botocore_session()
                if service == "s3":
                    import boto3

                    make = boto3.session.Session(botocore_session=self._session).client
                    # boto3 adds its own data folder to the loader each time, and the
                    # loader is the process's: keep each folder once (the REST service
                    # makes a Provider per request)
                    paths = self._session.get_component("data_loader").search_paths
                    paths[:] = list(dict.fromkeys(paths))
                else:
                    make = self._session.create_client
                client = make(service, endpoint_url=self._endpoint, config=config,
                              **session_options)
            self._check_endpoint(client.meta.endpoint_url)
            self._clients[key] = client
        return self._clients[key]

    def _create(self, send, find):
        """``send()`` a call that creates something, at most once per attempt, never blindly.

        When its answer is lost (a timeout, a reset connection, a throttle or a 5xx: AWS
        may have acted), ``find(began)`` looks for what the call would have made, and its
        answer is returned if it exists; otherwise the call is sent again, after a backoff
        like botocore's standard mode, up to the configured number of attempts.
        """
        import random
        import time

        attempts = self.settings.retry_attempts()
        began = now()
        for attempt in range(1, attempts + 1):
            try:
                return send()
            except Exception as error:  # noqa: BLE001  what is not a lost answer goes on up
                if not answer_lost(error):
                    raise
                found = find(began)
                if found is not None:
                    return found
                if attempt == attempts:
                    raise
                time.sleep(random.uniform(0, min(MAX_BACKOFF, BACKOFF_BASE * 2 ** (attempt - 1))))
        raise AssertionError("unreachable")

    def _check_endpoint(self, url):
        """Refuse an endpoint with credentials in it from wherever boto3 took it
        (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_<SERVICE>, the AWS config file)."""
        if userinfo(url):
            where = next((name for name in sorted(os.environ)
                          if name.startswith("AWS_ENDPOINT_URL") and userinfo(os.environ[name])),
                         "the AWS config file")
            raise UsageError(f"the endpoint {redact_url(url)} from {where} holds a user or "
                             "password: put credentials under credentials:, not in the endpoint")

    @property
    def region(self):
        return self.client("emr").meta.region_name

    @contextmanager
    def _aws(self, what):
        """Turn botocore's exceptions into our errors, each with what to do about it."""
        import botocore.exceptions as bx
        from botocore.parsers import ResponseParserError

        try:
            yield
        except EmrError:
            raise
        except upload_failed() as error:  # the transfer manager wraps AWS's answer
            cause = error.__context__
            if isinstance(cause, bx.ClientError):
                raise self._client_error(cause, what) from None
            raise AwsError(f"cannot {what}: {error}") from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError):
            where = self.settings.path or "~/.cloudmesh/cloudmesh.yaml"
            raise EmrError(
                f"no AWS credentials for cloud '{self.cloud}': put EC2_ACCESS_ID and "
                f"EC2_SECRET_KEY under cloudmesh.cloud.{self.cloud}.credentials in {where}, "
                "or set up the AWS CLI ('aws configure' or AWS_PROFILE)"
            ) from None
        except bx.NoRegionError:
            raise EmrError(
                f"no AWS region for cloud '{self.cloud}': set cloudmesh.cloud.{self.cloud}"
                ".credentials.region in cloudmesh.yaml, or AWS_DEFAULT_REGION"
            ) from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as error:
            raise AwsError(f"cannot {what}: {error}") from None
        except bx.ClientError as error:
            raise self._client_error(error, what) from None
        except bx.BotoCoreError as error:
            raise AwsError(f"cannot {what}: {error}") from None
        except ResponseParserError:  # not a BotoCoreError: an answer botocore cannot read
            raise AwsError(f"cannot {what}: the endpoint's answer could not be read "
                           "(not the XML or JSON of AWS)") from None
        except NotImplementedError:  # an emulator (moto in this process) without the operation
            raise AwsError(f"cannot {what}: the endpoint does not implement it") from None

    def _client_error(self, error, what):
        code, message = error_of(error)
        if code in DENIED:
            return AwsError(
                f"AWS refused to {what} for cloud '{self.cloud}' ({code}: {message}); "
                "check the credentials and the IAM permissions"
            )
        if code in ("NoSuchBucket", "404", "NotFound", "NoSuchKey"):
            return NotFound(f"cannot {what}: {message or code}")
        if code == "InvalidRequestException" and "not valid" in message:
            return NotFound(f"cannot {what}: {message} (see 'cms emr list clusters')")
        if code == "ValidationException" and "may not be modified" in message:
            # the cluster began to end after we looked: what the state check says, late
            return Conflict(f"cannot {what}: {message} (start a new one with "
                            "'cms emr start NAME')")
        return AwsError(f"cannot {what}: {code}: {message}")

    def _record(self, kind, records, cluster=None):
        """Record in the database; when it cannot take them, the database journals them
        (``self.journaled`` counts those, ``self.journal_error`` says why) and only a
        journal that cannot be written either is ``self.database_error``.

        ``records`` are the ones the caller returns: secret properties are masked here
        first, in place, so neither the database, the journal nor any output sees them."""
        from cloudmesh.emr.database import Journaled

        from cloudmesh.emr.api import history

        mask(records)
        try:
            written = self.database.record(self.cloud, kind, records, cluster=cluster)
            changes = history.events(kind, written or [], cluster, now())
            if changes:  # each state change, as an event (kind event)
                self.database.record(self.cloud, "event", changes, cluster=cluster)
        except Journaled as journaled:
            self.journaled += journaled.count
            self.journal_error = journaled
        except DatabaseError as error:
            self.database_error = error
        finally:  # the embedded server's state file rebuilt or removed: say so
            take = getattr(self._database, "take_warnings", None)
            self.warnings.extend(take() if take else [])

    def _action(self, action, target, cluster=None, request=None, response=None, error=None):
        record = {
            "Id": uuid.uuid4().hex,
            "Action": action,
            "Target": target,
            "ClusterId": cluster,
            "Cloud": self.cloud,
            "Request": request or {},
            "Response": utc(response or {}),
            "Time": now(),
        }
        if error is not None:
            record["Error"] = {"Type": type(error).__name__, "Message": error.message}
        if self.warnings:
            record["Warnings"] = list(self.warnings)
        self._record("action", [record], cluster=cluster)
        return record

    def _ask(self, action, target, what, call, cluster=None, request=None):
        """Make the AWS call that does ``action`` and return its answer. When AWS says no,
        the refusal is recorded as the action's ``Error`` before the error goes on up."""
        try:
            with self._aws(what):
                return call()
        except EmrError as error:
            self._action(action, target, cluster=cluster, request=request, error=error)
            raise

    def _pages(self, operation, key, what, **kwargs):
        emr = self.client("emr")
        with self._aws(what):
            pages = emr.get_paginator(operation).paginate(**kwargs)
            return [item for page in pages for item in page.get(key, [])]

    # ---- list and describe ------------------------------------------------------------

    def list_clusters(self, status=None, created_after=None, created_before=None):
        """Every cluster (newest first) in the states ``status`` names, created after and
        before the points in time given (datetimes, or words durations.moment reads)."""
        states = vocabulary.translate("cluster status", status)
        query = {"ClusterStates": states} if states else {}
        after = self._moment(created_after, "--created-after")
        before = self._moment(created_before, "--created-before")
        if after and before and after >= before:
            raise UsageError(f"--created-after ({after.isoformat()}) must be before "
                             f"--created-before ({before.isoformat()})")
        if after:
            query["CreatedAfter"] = after
        if before:
            query["CreatedBefore"] = before
        clusters = self._pages("list_clusters", "Clusters", "list clusters", **query)
        if states:  # some endpoints ignore the filter: check it here too
            clusters = [c for c in clusters if c["Status"]["State"] in states]
        clusters = utc_in_place(clusters)
        if after:
            clusters = [c for c in clusters if created(c) >= after]
        if before:
            clusters = [c for c in clusters if created(c) <= before]
        clusters = newest_first(clusters)
        self._record("cluster", clusters)
        return clusters

    @staticmethod
    def _moment(value, option):
        if value is None or isinstance(value, datetime.datetime):
            return utc(value)
        from cloudmesh.emr import durations

        return durations.moment(value, option)

    def _group_types(self, cluster_id, instances):
        """Instance group (or fleet) id -> MASTER/CORE/TASK for the cluster's instances."""
        roles = {}
        if any(i.get("InstanceGroupId") for i in instances):
            for group in self._pages("list_instance_groups", "InstanceGroups",
                                     f"list the instance groups of {cluster_id}",
                                     ClusterId=cluster_id):
                roles[group["Id"]] = group.get("InstanceGroupType")
        if any(i.get("InstanceFleetId") for i in instances):
            for fleet in self._pages("list_instance_fleets", "InstanceFleets",
                                     f"list the instance fleets of {cluster_id}",
                                     ClusterId=cluster_id):
                roles[fleet["Id"]] = fleet.get("InstanceFleetType")
        return roles

    def _type_filter(self, cluster_id, groups):
        """The server-side filter on MASTER/CORE/TASK: InstanceGroupTypes for a cluster of
        instance groups; for one of instance fleets InstanceFleetType, which takes a single
        type (several are then filtered here alone)."""
        if self._describe(cluster_id).get("InstanceCollectionType") == "INSTANCE_FLEET":
            return {"InstanceFleetType": groups[0]} if len(groups) == 1 else {}
        return {"InstanceGroupTypes": groups}

    def list_instances(self, cluster_id, status=None, types=None):
        check_cluster_id(cluster_id)
        states = vocabulary.translate("instance status", status)
        groups = vocabulary.translate("instance type", types)
        query = {"ClusterId": cluster_id}
        if states:
            query["InstanceStates"] = states
        if groups:
            query.update(self._type_filter(cluster_id, groups))
        instances = self._pages("list_instances", "Instances",
                                f"list the instances of {cluster_id}", **query)
        roles = self._group_types(cluster_id, instances)
        for instance in instances:
            group = instance.get("InstanceGroupId") or instance.get("InstanceFleetId")
            instance["InstanceGroupType"] = roles.get(group)
            instance["ClusterId"] = cluster_id
        if states:
            instances = [i for i in instances if i["Status"]["State"] in states]
        if groups:
            instances = [i for i in instances if i["InstanceGroupType"] in groups]
        instances = newest_first(utc(instances))
        self._record("instance", instances, cluster=cluster_id)
        return instances

    def list_steps(self, cluster_id, state=None):
        check_cluster_id(cluster_id)
        states = vocabulary.translate("step state", state)
        query = {"ClusterId": cluster_id, **({"StepStates": states} if states else {})}
        steps = self._pages("list_steps", "Steps", f"list the steps of {cluster_id}", **query)
        if states:
            steps = [s for s in steps if s["Status"]["State"] in states]
        for step in steps:
            step["ClusterId"] = cluster_id
        steps = newest_first(utc(steps))
        self._record("step", steps, cluster=cluster_id)
        return self.attach_diagnoses(cluster_id, steps)

    def _describe(self, cluster_id):
        check_cluster_id(cluster_id)
        emr = self.client("emr")
        with self._aws(f"describe cluster {cluster_id}"):
            return utc(emr.describe_cluster(ClusterId=cluster_id)["Cluster"])

    def describe(self, cluster_id):
        """The cluster with its instance groups (or fleets) and the region it runs in."""
        cluster = self._describe(cluster_id)
        if cluster.get("InstanceCollectionType") == "INSTANCE_FLEET":
            cluster["InstanceFleets"] = utc(self._pages(
                "list_instance_fleets", "InstanceFleets",
                f"list the instance fleets of {cluster_id}", ClusterId=cluster_id))
        else:
            cluster["InstanceGroups"] = utc(self._pages(
                "list_instance_groups", "InstanceGroups",
                f"list the instance groups of {cluster_id}", ClusterId=cluster_id))
        cluster["Region"] = self.region
        self._record("cluster", [cluster])
        return cluster

    # ---- start and stop ---------------------------------------------------------------

    def _check_instance_types(self, release, wanted):
        """Refuse types the release does not support or that have a single vCPU."""
        import botocore.exceptions as bx

        emr = self.client("emr")
        supported = {}
        with self._aws(f"list the instance types {release} supports"):
            try:
                marker = None
                while True:
                    page = emr.list_supported_instance_types(
                        ReleaseLabel=release, **({"Marker": marker} if marker else {})
                    )
                    for item in page.get("SupportedInstanceTypes", []):
                        supported[item["Type"]] = item
                    marker = page.get("Marker")
                    if not marker:
                        break
            except bx.ClientError as error:
                code, message = error_of(error)
                if code in DENIED:
                    self.warnings.append(
                        f"cannot check instance types ({code}); starting without the check"
                    )
                    return
                if code in ("ValidationException", "InvalidRequestException"):
                    raise NotOffered(
                        f"--release: '{shorten(release)}' is not a release label EMR knows in "
                        f"{self.region}: {message or code}"
                    ) from None
                raise
        for option, name in wanted:
            item = supported.get(name)
            if item is None:
                family = name.split(".")[0]
                similar = sorted((t for t in supported if t.startswith(family + ".")),
                                 key=lambda t: (int(supported[t].get("VCPU") or 0), t))[:6]
                hint = f"; {family} types it supports: {', '.join(similar)}" if similar else ""
                raise NotOffered(f"{option}: {name} is not supported by {release} in "
                                 f"{self.region}{hint}")
            if int(item.get("VCPU") or 0) < MIN_VCPU:
                raise UsageError(
                    f"{option}: {name} has {item.get('VCPU')} vCPU; Spark needs at least "
                    f"{MIN_VCPU} (one for the node manager, one for work): try m5.xlarge"
                )

    # the options of start besides NAME, as keyword arguments (see jobflow.build)
    START_OPTIONS = ("master", "node", "count", "release", "task", "task_count", "spot", "bid",
                     "auto_terminate", "idle_timeout", "scaling", "loguri", "key", "subnet",
                     "zone", "bootstrap", "tags", "ttl", "max_cost", "no_check")

    @staticmethod
    def _check_options(options):
        """The options of start (and doctor) that can be checked without AWS."""
        for key in ("key", "subnet", "loguri", "zone"):
            if options.get(key) is not None:
                check_text(f"--{key}", options[key])
        release = options.get("release")
        if release is not None and not RELEASE_LABEL.match(str(release)):
            raise UsageError(f"--release: '{shorten(release)}' is not a release label like "
                             "emr-7.12.0")
        for option in ("master", "node", "task"):
            value = options.get(option)
            if value is not None and not INSTANCE_TYPE.match(str(value)):
                raise UsageError(f"--{option}: '{shorten(value)}' is not an instance type like "
                                 "m5.xlarge")
        count = options.get("count")
        if count is not None and (isinstance(count, bool) or not COUNT.match(str(count))
                                  or int(count) < 1):
            raise UsageError(f"--count: '{shorten(count)}' is not a whole number of at least 1 "
                             "(1 master plus COUNT-1 core nodes)")

    def start(self, name, config=None, idempotency_key=None, **options):
        """Create a Spark cluster with run_job_flow; return the action record.

        ``config`` is a document in RunJobFlow's shape (a ``--config`` file); ``name`` and
        ``options`` (START_OPTIONS) go over it, cloudmesh.yaml's defaults fill the rest.

        The cluster is tagged ``cloudmesh:request`` with ``idempotency_key`` (or a fresh
        UUID). While a cluster with that key is active, a second start with the same key
        creates nothing and returns an action naming that cluster (with a warning).
        """
        from cloudmesh.emr.api import jobflow

        self.warnings = []
        if name is not None:
            check_text("NAME", name)
        if idempotency_key is not None:
            check_text("--idempotency-key", idempotency_key)
            if not IDEMPOTENCY_KEY.match(str(idempotency_key)):
                raise UsageError(
                    f"--idempotency-key: '{shorten(idempotency_key)}' must be 1 to 128 letters, "
                    "digits, spaces or _ . : / = + - @ (it becomes an EMR tag value)"
                )
        unknown = set(options) - set(self.START_OPTIONS)
        if unknown:
            raise TypeError(f"start() got unknown options {sorted(unknown)}")
        self._check_options(options)
        request, wanted = jobflow.build(name, self.settings, config=config, **options)
        release = request["ReleaseLabel"]
        if not RELEASE_LABEL.match(str(release)):
            where = "--release" if options.get("release") else "ReleaseLabel"
            raise UsageError(f"{where}: '{shorten(release)}' is not a release label like "
                             "emr-7.12.0")
        for where, value in wanted:
            if not INSTANCE_TYPE.match(str(value)):
                raise UsageError(f"{where}: '{shorten(value)}' is not an instance type like "
                                 "m5.xlarge")
        groups = request["Instances"].get("InstanceGroups") or []
        if groups and not any(g.get("InstanceRole") == "CORE" for g in groups):
            self.warnings.append(
                "--count=1: the cluster has no core nodes; Spark runs on the master alone"
            )
        if request.get("AutoTerminationPolicy") and jobflow.auto_termination(release) is False:
            request.pop("AutoTerminationPolicy")
            self.warnings.append(f"{release} has no auto-termination (emr-5.30.0, emr-6.1.0 "
                                 "and later have it): the cluster has no idle timeout; end "
                                 "it with 'cms emr stop', or use --ttl and 'cms emr reap'")
        if not options.get("no_check"):
            self._preflight(request, wanted, "--release" if options.get("release")
                            else "ReleaseLabel")

        name = request["Name"]
        token = str(idempotency_key) if idempotency_key is not None else uuid.uuid4().hex
        request["Tags"] = [tag for tag in request.get("Tags") or []
                           if tag.get("Key") != REQUEST_TAG] + [{"Key": REQUEST_TAG,
                                                                 "Value": token}]
        asked = {**jobflow.summary(request), "RunJobFlow": self._redacted(request),
                 "Request": token,
                 **({"IdempotencyKey": token} if idempotency_key is not None else {})}
        if idempotency_key is not None:
            existing = self._tagged_cluster(token)
            if existing is not None:
                self.warnings.append(
                    f"cluster {existing['Id']} ({shorten(existing.get('Name'), 60)}, "
                    f"{existing['Status']['State']}) already carries idempotency key "
                    f"'{shorten(token, 60)}': nothing started"
                )
                return self._action("start", existing["Id"], cluster=existing["Id"],
                                    request=asked,
                                    response={"JobFlowId": existing["Id"],
                                              "ClusterArn": existing.get("ClusterArn"),
                                              "Existing": True})
        once = self.client("emr", once=True)
        answer = self._ask(
            "start", name, f"start cluster {name}",
            lambda: self._create(lambda: once.run_job_flow(**request),
                                 lambda began: self._lost_cluster(token, name, began)),
            request=asked)
        cluster_id = answer["JobFlowId"]
        return self._action("start", cluster_id, cluster=cluster_id, response=answer,
                            request=asked)

    @staticmethod
    def _redacted(request):
        """The request as it may be stored or shown: configuration properties that hold
        secrets are masked."""
        import copy

        from cloudmesh.emr.api import jobflow

        request = copy.deepcopy(request)
        if request.get("Configurations"):
            request["Configurations"] = jobflow.redact_configurations(request["Configurations"])
        for group in (request.get("Instances") or {}).get("InstanceGroups") or []:
            if group.get("Configurations"):
                group["Configurations"] = jobflow.redact_configurations(group["Configurations"])
        return request

    def _tagged(self, summaries, token):
        """The first cluster of ``summaries`` whose cloudmesh:request tag is ``token``."""
        emr = self.client("emr")
        for summary in summaries:
            cluster = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"]
            tags = {tag.get("Key"): tag.get("Value") for tag in cluster.get("Tags") or []}
            if tags.get(REQUEST_TAG) == token:
                return cluster
        return None

    def _tagged_cluster(self, token):
        """The active cluster that carries request ``token``, or None."""
        with self._aws("look for a cluster with that idempotency key"):
            summaries = self._pages("list_clusters", "Clusters", "list active clusters",
                                    ClusterStates=ACTIVE_CLUSTER)
            return self._tagged(newest_first(utc(summaries)), token)

    def _lost_cluster(self, token, name, began):
        """What a RunJobFlow whose answer was lost made: an active cluster named ``name``,
        created since ``began``, carrying ``token``; as RunJobFlow's answer, or None."""
        import datetime as dt

        since = began - dt.timedelta(seconds=CLOCK_SKEW)
        summaries = self._pages("list_clusters", "Clusters", "look for the cluster just started",
                                ClusterStates=ACTIVE_CLUSTER, CreatedAfter=since)
        cluster = self._tagged([c for c in summaries if c.get("Name") == name], token)
        if cluster is None:
            return None
        return {"JobFlowId": cluster["Id"], "ClusterArn": cluster.get("ClusterArn"),
                "Recovered": True}

    def stop(self, cluster_ids):
        """Terminate each cluster; return one action record per cluster.

        A cluster that cannot stop (unknown, termination-protected) gets an action
        with an ``Error``; the others still stop.
        """
        self.warnings = []
        for cluster_id in cluster_ids:
            check_cluster_id(cluster_id)
        emr = self.client("emr")
        actions = []
        for cluster_id in dict.fromkeys(cluster_ids):  # each once, in the order given
            try:
                cluster = self._describe(cluster_id)
                before = cluster["Status"]["State"]
                if cluster.get("TerminationProtected"):
                    raise Conflict(
                        f"cluster {cluster_id} ({cluster.get('Name')}) is termination-protected: "
                        f"turn it off first (aws emr modify-cluster-attributes --cluster-id "
                        f"{cluster_id} --no-termination-protected)"
                    )
                with self._aws(f"stop cluster {cluster_id}"):
                    answer = emr.terminate_job_flows(JobFlowIds=[cluster_id])
                actions.append(self._action(
                    "stop", cluster_id, cluster=cluster_id, request={"ClusterId": cluster_id},
                    response={**answer, "Name": cluster.get("Name"), "PreviousState": before},
                ))
            except EmrError as error:
                actions.append(self._action(
                    "stop", cluster_id, cluster=cluster_id, request={"ClusterId": cluster_id},
                    error=error,
                ))
        return actions

    # ---- S3 and steps -------------------------------------------------------------------

    def upload(self, filename, bucket, key, progress=None):
        """Send a local file to s3://bucket/key with boto3's transfer manager."""
        if "\0" in str(filename):
            raise UsageError(f"FILE: '{shorten(filename)}' holds a NUL character; no file is "
                             "named so")
        path = os.path.abspath(os.path.expanduser(str(filename)))
        if not os.path.isfile(path):
            raise UsageError(f"'{shorten(filename)}' is not a file; upload takes a regular file")
        if not os.access(path, os.R_OK):
            raise UsageError(f"'{shorten(filename)}' is not readable")
        return self._put(bucket, key, {"File": path, "Size": os.path.getsize(path)},
                         lambda s3, config: s3.upload_file(path, bucket, key, Config=config,
                                                           Callback=progress))

    def upload_stream(self, stream, bucket, key, name=None):
        """Send the bytes of a readable binary stream to s3://bucket/key (the REST upload)."""
        return self._put(bucket, key, {"File": name},
                         lambda s3, config: s3.upload_fileobj(stream, bucket, key, Config=config))

    def _put(self, bucket, key, request, send):
        self.warnings = []
        url = check_bucket(bucket, key)
        s3 = self.client("s3")
        with self._aws(f"find bucket {bucket}"):
            import botocore.exceptions as bx

            try:
                s3.head_bucket(Bucket=bucket)
            except bx.ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code in ("404", "NoSuchBucket", "NotFound"):
                    raise NotFound(
                        f"bucket '{shorten(bucket)}' does not exist: create it first "
                        f"(aws s3 mb s3://{bucket}), or name another"
                    ) from None
                raise
        from boto3.s3.transfer import TransferConfig

        def send_and_look():
            send(s3, TransferConfig())
            return s3.head_object(Bucket=bucket, Key=key)

        request = {**request, "Bucket": bucket, "Key": key}
        head = self._ask("upload", url, f"upload to {url}", send_and_look, request=request)
        return self._action("upload", url, request=request,
                            response={"ETag": head.get("ETag"),
                                      "ContentLength": head.get("ContentLength")})

    def _add_step(self, action, cluster_id, name, args, on_failure="CONTINUE", jar=COMMAND_RUNNER,
                  idempotency_key=None):
        check_cluster_id(cluster_id)
        cluster = self._describe(cluster_id)
        state = cluster["Status"]["State"]
        if state not in ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"):
            raise Conflict(
                f"cluster {cluster_id} is {state} and takes no more steps; "
                "start a new one with 'cms emr start NAME'"
            )
        step = {"Name": name, "ActionOnFailure": on_failure,
                "HadoopJarStep": {"Jar": jar, "Args": args}}
        asked = dict(step)
        if idempotency_key is not None:
            asked["IdempotencyKey"] = check_text("Idempotency-Key", str(idempotency_key))
            earlier = self._keyed_step(action, cluster_id, asked["IdempotencyKey"])
            if earlier is not None:
                self.warnings.append(
                    f"step {earlier['Target']} was added with idempotency key "
                    f"'{shorten(asked['IdempotencyKey'], 60)}': nothing added")
                return earlier
        once = self.client("emr", once=True)
        before = self._recent_steps(cluster_id)
        answer = self._ask(
            action, cluster_id, f"add a step to {cluster_id}",
            lambda: self._create(
                lambda: once.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step]),
                lambda began: self._lost_step(cluster_id, step, before, began)),
            cluster=cluster_id, request=asked)
        step_id = answer["StepIds"][0]
        return self._action(action, step_id, cluster=cluster_id, request=asked, response=answer)

    def _recent_steps(self, cluster_id):
        """The ids of the cluster's newest steps (ListSteps' first page), before adding one."""
        with self._aws(f"list the steps of {cluster_id}"):
            page = self.client("emr").list_steps(ClusterId=cluster_id)
        return {step["Id"] for step in page.get("Steps", [])}

    def _lost_step(self, cluster_id, step, before, began):
        """What an AddJobFlowSteps whose answer was lost added: a step not there before,
        created since ``began``, with the same name, jar and arguments; or None."""
        import datetime as dt

        since = began - dt.timedelta(seconds=CLOCK_SKEW)
        page = self.client("emr").list_steps(ClusterId=cluster_id)
        for found in page.get("Steps", []):
            config = found.get("Config") or {}
            if (found["Id"] not in before and found.get("Name") == step["Name"]
                    and config.get("Jar") == step["HadoopJarStep"]["Jar"]
                    and list(config.get("Args") or []) == step["HadoopJarStep"]["Args"]
                    and utc(created(found)) >= since):
                return {"StepIds": [found["Id"]], "Recovered": True}
        return None

    def _keyed_step(self, action, cluster_id, key):
        """The action that added a step to ``cluster_id`` with idempotency ``key``, as the
        database holds it (steps carry no tags), or None."""
        try:
            found = self.database.find(self.cloud, "action", {
                "Action": action, "ClusterId": cluster_id, "Request.IdempotencyKey": key,
                "Error": {"$exists": False}, "Response.StepIds": {"$exists": True}})
        except DatabaseError as error:
            raise DatabaseError(f"cannot check the idempotency key: {error.message}") from None
        if not found:
            return None
        record = {k: v for k, v in found[0].items() if k not in ("_id", "cm")}
        return record

    def copy(self, cluster_id, bucket, key, idempotency_key=None):
        """A step that copies s3://bucket/key into /home/hadoop/ on the master node."""
        self.warnings = []
        url = check_bucket(bucket, key)
        return self._add_step("copy", cluster_id, f"copy {url}",
                              ["aws", "s3", "cp", url, MASTER_HOME],
                              idempotency_key=idempotency_key)

    def run(self, cluster_id, bucket, key, args=None, main_class=None, name=None,
            on_failure=None, idempotency_key=None):
        """A step that runs s3://bucket/key with spark-submit and the given arguments.

        A key ending in ``.jar`` is a Spark application jar: ``--class MAIN`` when
        ``main_class`` is given, else spark-submit reads the jar's own Main-Class.
        """
        self.warnings = []
        url = check_bucket(bucket, key)
        args = check_text("ARGS", [str(arg) for arg in (args or [])])
        program = key.rstrip("/").rsplit("/", 1)[-1]
        command = ["spark-submit"]
        if main_class is not None:
            if not key.lower().endswith(".jar"):
                raise UsageError(f"--class is for a Spark application jar; {program} is not a .jar")
            if not JAVA_CLASS.match(str(main_class)):
                raise UsageError(f"--class: '{shown(main_class)}' is not a Java class name "
                                 "like com.example.WordCount")
            command += ["--class", str(main_class)]
        on_failure = vocabulary.one_word("--on-failure", vocabulary.ON_FAILURE, on_failure,
                                         "continue")
        return self._add_step("run", cluster_id, step_name(name, program),
                              [*command, url, *args], on_failure=on_failure,
                              idempotency_key=idempotency_key)

    def stream(self, cluster_id, mapper, reducer, inputs, output, name=None, on_failure=None,
               idempotency_key=None):
        """A Hadoop streaming step (command-runner.jar hadoop-streaming), as boto's
        StreamingStep made it: the mapper and reducer are shipped with -files."""
        self.warnings = []
        for option, value in (("--mapper", mapper), ("--reducer", reducer), ("--output", output)):
            check_s3_uri(option, value)
        inputs = [check_s3_uri("--input", value) for value in (inputs or [])]
        if not inputs:
            raise UsageError("--input: give at least one s3:// input")
        if mapper.rsplit("/", 1)[-1] == reducer.rsplit("/", 1)[-1] and mapper != reducer:
            raise UsageError("--mapper and --reducer have the same file name; -files would "
                             "ship only one of them: rename one")
        on_failure = vocabulary.one_word("--on-failure", vocabulary.ON_FAILURE, on_failure,
                                         "continue")
        files = ",".join(dict.fromkeys((mapper, reducer)))
        args = ["hadoop-streaming", "-files", files,
                "-mapper", mapper.rsplit("/", 1)[-1], "-reducer", reducer.rsplit("/", 1)[-1]]
        for uri in inputs:
            args += ["-input", uri]
        args += ["-output", output]
        default = f"stream {mapper.rsplit('/', 1)[-1]} {reducer.rsplit('/', 1)[-1]}"
        return self._add_step("stream", cluster_id, step_name(name, default), args,
                              on_failure=on_failure, idempotency_key=idempotency_key)

    def cancel(self, cluster_id, step_ids):
        """CancelSteps (SEND_INTERRUPT) for each step; one action record per step.

        A step that already ended, or that EMR would not cancel, is reported in its
        action's ``Response`` (Status FAILED and the reason), not raised, so the other
        steps are still cancelled.
        """
        self.warnings = []
        check_cluster_id(cluster_id)
        for step_id in step_ids:
            check_step_id(step_id)
        step_ids = list(dict.fromkeys(step_ids))
        emr = self.client("emr")
        states = {}
        for step_id in step_ids:
            states[step_id] = self.describe_step(cluster_id, step_id)["Status"]["State"]
        live = [s for s in step_ids if states[s] not in vocabulary.STEP_ENDED]
        answers = {}
        if live:
            request = {"ClusterId": cluster_id, "StepIds": live,
                       "StepCancellationOption": "SEND_INTERRUPT"}
            answer = self._ask("cancel", cluster_id, f"cancel steps of {cluster_id}",
                               lambda: emr.cancel_steps(**request), cluster=cluster_id,
                               request=request)
            answers = {info.get("StepId"): info for info in answer.get("CancelStepsInfoList", [])}
        actions = []
        for step_id in step_ids:
            before = states[step_id]
            if step_id in answers:
                info = answers[step_id]
                response = {"StepId": step_id, "Status": info.get("Status", "SUBMITTED"),
                            "Reason": info.get("Reason") or "", "PreviousState": before}
            elif before in vocabulary.STEP_ENDED:
                response = {"StepId": step_id, "Status": "FAILED", "PreviousState": before,
                            "Reason": f"the step already ended ({before}); nothing to cancel"}
            else:
                response = {"StepId": step_id, "Status": "SUBMITTED", "PreviousState": before,
                            "Reason": ""}
            actions.append(self._action("cancel", step_id, cluster=cluster_id,
                                        request={"ClusterId": cluster_id, "StepId": step_id,
                                                 "StepCancellationOption": "SEND_INTERRUPT"},
                                        response=response))
        return actions

    # ---- step logs and diagnosis ------------------------------------------------------

    def describe_step(self, cluster_id, step_id):
        check_cluster_id(cluster_id)
        check_step_id(step_id)
        emr = self.client("emr")
        with self._aws(f"describe step {step_id} of {cluster_id}"):
            step = utc(emr.describe_step(ClusterId=cluster_id, StepId=step_id).get("Step"))
        if not step or not step.get("Status"):  # some endpoints answer {} for an unknown step
            raise NotFound(f"cluster {cluster_id} has no step {step_id} "
                           f"(see 'cms emr list steps {cluster_id}')")
        step["ClusterId"] = cluster_id
        return step

    def _log_root(self, cluster):
        """(bucket, prefix) of the cluster's logs: <LogUri>/<cluster-id>/."""
        uri = cluster.get("LogUri")
        where = split_s3_uri(uri or "")
        if not where:
            raise NotFound(
                f"cluster {cluster['Id']} keeps no logs: it was started without a LogUri. "
                "Start clusters with --loguri=s3://BUCKET/logs/, or set "
                "cloudmesh.emr.default.loguri in cloudmesh.yaml so every new cluster gets one"
            )
        bucket, prefix = where
        prefix = prefix.strip("/")
        return bucket, (f"{prefix}/" if prefix else "") + f"{cluster['Id']}/"

    def _read_logs(self, bucket, keys, most=LOG_BYTES):
        """The decompressed text of the S3 objects ``keys`` (gzip or not), joined in order;
        of a long log only its last ``most`` bytes are kept."""
        import gzip
        import zlib

        s3 = self.client("s3")
        parts = []
        for key in keys:
            with self._aws(f"read s3://{bucket}/{key}"):
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            if body[:2] == b"\x1f\x8b":
                try:
                    body = gzip.decompress(body)
                except (OSError, EOFError, zlib.error):
                    self.warnings.append(f"s3://{bucket}/{key} is not a whole gzip file; "
                                         "showing what could be read")
                    body = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body)
            parts.append(body)
        data = b"".join(parts)
        if most and len(data) > most:
            data = data[-most:]
            data = data[data.find(b"\n") + 1:]
        return data.decode("utf-8", errors="replace")

    def _list_keys(self, bucket, prefix):
        s3 = self.client("s3")
        with self._aws(f"list s3://{bucket}/{prefix}"):
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def _step_log_keys(self, bucket, base, name):
        """The keys of log ``name`` under ``base``: rotated parts first, in order, then
        the current one (``stderr.1.gz``, ``stderr.2.gz``, ``stderr.gz``)."""
        found = []
        for key in self._list_keys(bucket, base):
            match = LOG_PART.fullmatch(key[len(base):])
            if match and match.group("name") == name:
                found.append(key)
        return sorted(found, key=log_part_order)

    def logs(self, cluster_id, step_id, file="stderr", tail=None):
        """The text of a step's log FILE from the cluster's LogUri, decompressed.

        No LogUri, or no log yet: EmrError (exit 1) that says why and what to do.
        """
        self.warnings = []
        file = (file or "stderr").strip().lower()
        if file not in vocabulary.STEP_LOG_FILES:
            raise UsageError(f"--file: '{shown(file)}' is not one of: "
                             f"{', '.join(vocabulary.STEP_LOG_FILES)}")
        tail = check_tail(tail)
        cluster = self._describe(cluster_id)
        step = self.describe_step(cluster_id, step_id)
        request = {"ClusterId": cluster_id, "StepId": step_id, "File": file,
                   **({"Tail": tail} if tail is not None else {})}
        try:
            bucket, root = self._log_root(cluster)
            base = f"{root}steps/{step_id}/"
            keys = self._step_log_keys(bucket, base, file)
            if not keys:
                raise self._no_log_yet(step, f"s3://{bucket}/{base}{file}.gz")
            text = self._read_logs(bucket, keys, most=None)
        except EmrError as error:
            self._action("logs", step_id, cluster=cluster_id, request=request, error=error)
            raise
        if tail is not None:
            lines = text.splitlines()
            text = "\n".join(lines[-tail:] if tail else [])
        self._action("logs", step_id, cluster=cluster_id, request=request,
                     response={"Logs": [f"s3://{bucket}/{key}" for key in keys],
                               "Characters": len(text)})
        return text

    @staticmethod
    def _no_log_yet(step, where):
        state = step["Status"]["State"]
        ended = (step["Status"].get("Timeline") or {}).get("EndDateTime")
        if state not in vocabulary.STEP_ENDED:
            return NotFound(f"step {step['Id']} is {state}: EMR writes its logs to S3 "
                            f"({where}) every few minutes while it runs and after it ends; "
                            "try again in a few minutes")
        if ended is not None and now() - ended < datetime.timedelta(seconds=LOG_DELAY):
            return NotFound(f"no log at {where} yet: step {step['Id']} ended "
                            f"{int((now() - ended).total_seconds())} s ago, and EMR copies step "
                            "logs to S3 every few minutes; try again in about 5 minutes")
        return NotFound(f"no log at {where}: the step wrote none, or its logs were deleted")

    def _gather(self, cluster, step):
        """The logs of a step to diagnose: [diagnosis.Log], and whether S3 had them."""
        from cloudmesh.emr.api import diagnosis

        status = step["Status"]
        failure = status.get("FailureDetails") or {}
        reason = (status.get("StateChangeReason") or {}).get("Message") or ""
        found = [diagnosis.Log("status", "step state",
                               f"step state: {status['State']} {reason}".rstrip())]
        if failure:
            found.append(diagnosis.Log("failure", "FailureDetails", "\n".join(
                f"{key}: {failure[key]}" for key in ("Reason", "Message", "LogFile")
                if failure.get(key))))
        try:
            bucket, root = self._log_root(cluster)
        except EmrError:
            self.warnings.append(f"cluster {cluster['Id']} has no LogUri: diagnosed from "
                                 "FailureDetails alone")
            return found, False
        base = f"{root}steps/{step['Id']}/"
        complete = False
        for name in ("stderr", "stdout", "controller", "syslog"):
            keys = self._step_log_keys(bucket, base, name)
            if keys:
                complete = True
                found.append(diagnosis.Log(name, f"s3://{bucket}/{base}{name}.gz",
                                           self._read_logs(bucket, keys)))
        if not complete:
            self.warnings.append(str(self._no_log_yet(step, f"s3://{bucket}/{base}").message))
        named = " ".join(log.text for log in found if log.source in ("stderr", "controller",
                                                                      "syslog"))
        for application in diagnosis.applications(named)[:MOST_APPLICATIONS]:
            folder = f"{root}containers/{application}/"
            for key in sorted(self._list_keys(bucket, folder)):
                match = CONTAINER_LOG.fullmatch(key[len(folder):])
                if match:
                    found.append(diagnosis.Log(f"container-{match.group('name')}",
                                               f"s3://{bucket}/{key}",
                                               self._read_logs(bucket, [key])))
        return found, complete

    def _gather_cluster(self, cluster):
        """The logs of a cluster that ended with an error (a bootstrap action failed)."""
        from cloudmesh.emr.api import diagnosis

        status = cluster["Status"]
        reason = status.get("StateChangeReason") or {}
        line = f"cluster state: {status['State']} {reason.get('Code', '')}: {reason.get('Message', '')}"
        found = [diagnosis.Log("status", "cluster state", line)]
        action = BOOTSTRAP_ACTION.search(reason.get("Message") or "")
        instance = INSTANCE_ID.search(reason.get("Message") or "")
        details = {}
        if action:
            number = int(action.group(1))
            actions = self._pages("list_bootstrap_actions", "BootstrapActions",
                                  f"list the bootstrap actions of {cluster['Id']}",
                                  ClusterId=cluster["Id"])
            if 0 < number <= len(actions):
                details = {"Number": number, "Name": actions[number - 1].get("Name"),
                           "ScriptPath": actions[number - 1].get("ScriptPath"),
                           "Args": actions[number - 1].get("Args") or []}
            else:
                details = {"Number": number}
        complete = False
        if action:
            try:
                bucket, root = self._log_root(cluster)
            except EmrError:
                bucket = None
            if bucket:
                folder = f"{root}node/{instance.group(0) + '/' if instance else ''}"
                pattern = re.compile(rf"(?:[^/]+/)?bootstrap-actions/{details['Number']}/"
                                     r"(stderr|controller|stdout)(?:\.gz)?")
                for key in sorted(self._list_keys(bucket, folder)):
                    match = pattern.fullmatch(key[len(folder):])
                    if match:
                        complete = True
                        text = self._read_logs(bucket, [key])
                        found.append(diagnosis.Log("bootstrap", f"s3://{bucket}/{key}", text))
                        if match.group(1) == "stderr":
                            details["Stderr"] = text.splitlines()[-BOOTSTRAP_STDERR_LINES:]
                        code = diagnosis.exit_code(text)
                        if code is not None:
                            details["ExitCode"] = code
        return found, complete, details

    def diagnose(self, cluster_id, step_id=None):
        """Why a step failed (or every failed step of the cluster, and the cluster itself
        when it ended with an error): a list of diagnosis records, each recorded in the
        database (kind ``diagnosis``, keyed by the step or cluster id)."""
        from cloudmesh.emr.api import diagnosis

        self.warnings = []
        check_cluster_id(cluster_id)
        cluster = self._describe(cluster_id)
        if step_id is not None:
            steps = [self.describe_step(cluster_id, step_id)]
        else:
            steps = self.list_steps(cluster_id, state=["failed", "interrupted"])
            steps = sorted(steps, key=created)
        results = []
        for step in steps:
            state = step["Status"]["State"]
            record = {"Id": step["Id"], "StepId": step["Id"], "ClusterId": cluster_id,
                      "Name": step.get("Name"), "State": state,
                      "FailureDetails": step["Status"].get("FailureDetails") or {},
                      "Time": now()}
            if state not in vocabulary.STEP_NOT_OK:
                record.update(Class="no-failure", Title="Step did not fail",
                              Line=f"step {step['Id']} is {state}", Hint=(
                                  "Nothing to diagnose: the step has not failed."
                                  if state == "COMPLETED" else
                                  f"Wait for it: cms emr wait {cluster_id} {step['Id']}"),
                              Excerpt=[])
                results.append(record)
                continue
            logs, complete = self._gather(cluster, step)
            record.update(diagnosis.diagnose(logs))
            record["Logs"] = [log.name for log in logs]
            record["Complete"] = complete
            results.append(record)
        if step_id is None and cluster["Status"]["State"] == "TERMINATED_WITH_ERRORS":
            logs, complete, details = self._gather_cluster(cluster)
            record = {"Id": cluster_id, "StepId": None, "ClusterId": cluster_id,
                      "Name": cluster.get("Name"), "State": cluster["Status"]["State"],
                      "FailureDetails": cluster["Status"].get("StateChangeReason") or {},
                      "Time": now(), **diagnosis.diagnose(logs)}
            if details:
                record["BootstrapAction"] = details
                record["Hint"] = diagnosis.bootstrap_hint(record["Hint"], details)
            record["Logs"] = [log.name for log in logs]
            record["Complete"] = complete
            results.append(record)
        self._record("diagnosis", [r for r in results if r["Class"] != "no-failure"],
                     cluster=cluster_id)
        return results

    def stored_diagnosis(self, cluster_id, step_id):
        """The recorded diagnosis of a step (read from the database only), or None."""
        check_cluster_id(cluster_id)
        check_step_id(step_id)
        try:
            found = self.database.find(self.cloud, "diagnosis",
                                       {"cm.id": step_id, "cm.cluster": cluster_id})
        except DatabaseError as error:
            self.database_error = error
            return None
        for document in found:
            document.pop("_id", None)
            document.pop("cm", None)
            return document
        return None

    def diagnosis(self, cluster_id, step_id):
        """The diagnosis of a step: the stored one when it was made from the step's logs,
        else a new one (which reads S3 and is stored)."""
        stored = self.stored_diagnosis(cluster_id, step_id)
        if stored and stored.get("Complete"):
            stored["Stored"] = True
            return stored
        return self.diagnose(cluster_id, step_id)[0]

    def attach_diagnoses(self, cluster_id, steps):
        """Each failed step of ``steps`` with its stored diagnosis under ``Diagnosis``."""
        failed = [step for step in steps if step["Status"]["State"] in vocabulary.STEP_NOT_OK]
        if not failed:
            return steps
        try:
            found = self.database.find(self.cloud, "diagnosis", {"cm.cluster": cluster_id})
        except DatabaseError as error:
            self.database_error = error
            return steps
        by_step = {}
        for document in found:
            document.pop("_id", None)
            document.pop("cm", None)
            by_step[document.get("StepId")] = document
        for step in failed:
            if step["Id"] in by_step:
                step["Diagnosis"] = by_step[step["Id"]]
        return steps


    # ---- waiting --------------------------------------------------------------------------

    def wait_defaults(self):
        """(delay, timeout) in seconds: 1 s on the emulator, 30 s on AWS; two hours."""
        from cloudmesh.emr.config import LOCAL

        return (WAIT_DELAY_LOCAL if self.cloud == LOCAL else WAIT_DELAY), WAIT_TIMEOUT

    def _wait_times(self, delay, timeout):
        from cloudmesh.emr import durations

        default_delay, default_timeout = self.wait_defaults()
        delay = default_delay if delay is None else durations.seconds(delay, "--delay")
        timeout = default_timeout if timeout is None else durations.seconds(timeout, "--timeout")
        if delay <= 0:
            raise UsageError(f"--delay: {delay} must be more than 0 seconds")
        return delay, timeout

    def wait_cluster(self, cluster_id, until="running", delay=None, timeout=None,
                     progress=None):
        """Wait until the cluster is RUNNING or WAITING (``until`` running), WAITING or
        TERMINATED; return its description. ``progress(id, state, reason)`` hears each
        answer. An EmrError (exit 1) when it ended instead, or on timeout."""
        from cloudmesh.emr import durations
        from cloudmesh.emr.api import waiting

        self.warnings = []
        check_cluster_id(cluster_id)
        word = str(until or "running").strip().lower()
        if word not in waiting.UNTIL:
            raise UsageError(f"--until: '{shown(until)}' is not a state to wait "
                             f"for; use one of: {', '.join(waiting.UNTIL)}")
        delay, timeout = self._wait_times(delay, timeout)

        def heard(response):
            cluster = response.get("Cluster")
            if cluster and progress is not None:
                status = cluster.get("Status") or {}
                progress(cluster_id, status.get("State"),
                         (status.get("StateChangeReason") or {}).get("Message"))

        emr = self.client("emr")
        with self._aws(f"wait for cluster {cluster_id}"):
            outcome = waiting.wait(emr, waiting.UNTIL[word], delay, timeout, heard,
                                   ClusterId=cluster_id)
        if outcome.result == "error":
            raise self._waiter_error(outcome.response, f"wait for cluster {cluster_id}")
        cluster = utc(outcome.response.get("Cluster") or {})
        if cluster:
            self._record("cluster", [cluster])
        status = cluster.get("Status") or {}
        state = status.get("State")
        reason = (status.get("StateChangeReason") or {}).get("Message")
        if outcome.result == "timeout":
            raise AwsError(f"cluster {cluster_id} is still {state} after "
                           f"{durations.human(timeout)}")
        if outcome.result == "failure":
            raise AwsError(f"cluster {cluster_id} ended {state}" +
                           (f": {reason}" if reason else ""))
        return cluster

    def _waiter_error(self, response, what):
        import botocore.exceptions as bx

        return self._client_error(bx.ClientError(response, "Describe"), what)

    def wait_steps(self, cluster_id, step_ids, delay=None, timeout=None, progress=None):
        """Wait until every step has ended; return the final step records, in the order
        given. ``progress(id, state, reason)`` hears each answer; an EmrError on timeout."""
        import time

        from cloudmesh.emr import durations
        from cloudmesh.emr.api import waiting

        self.warnings = []
        check_cluster_id(cluster_id)
        for step_id in step_ids:
            check_step_id(step_id)
        delay, timeout = self._wait_times(delay, timeout)
        deadline = time.monotonic() + timeout
        emr = self.client("emr")
        steps = []
        for step_id in dict.fromkeys(step_ids):
            def heard(response, step_id=step_id):
                step = response.get("Step")
                if step and progress is not None:
                    status = step.get("Status") or {}
                    failure = status.get("FailureDetails") or {}
                    progress(step_id, status.get("State"), failure.get("Message") or
                             (status.get("StateChangeReason") or {}).get("Message"))

            left = max(deadline - time.monotonic(), 0)
            with self._aws(f"wait for step {step_id}"):
                outcome = waiting.wait(emr, "StepEnded", delay, left, heard,
                                       ClusterId=cluster_id, StepId=step_id)
            if outcome.result == "error":
                raise self._waiter_error(outcome.response, f"wait for step {step_id}")
            step = utc(outcome.response.get("Step") or {})
            step["ClusterId"] = cluster_id
            self._record("step", [step], cluster=cluster_id)
            if outcome.result == "timeout":
                raise AwsError(f"step {step_id} is still {step['Status']['State']} after "
                               f"{durations.human(timeout)}")
            steps.append(step)
        return steps

    # ---- changing a running cluster ---------------------------------------------------------

    def _active(self, cluster_id, what):
        cluster = self._describe(cluster_id)
        state = cluster["Status"]["State"]
        if state in ENDED_STATES:
            raise Conflict(f"cannot {what}: cluster {cluster_id} is {state}")
        return cluster

    def modify(self, cluster_id, concurrency=None, idle_timeout=None, scaling=None):
        """Change the step concurrency (1..256), the idle timeout (a duration, or off) and
        the managed scaling limits (MIN:MAX, or off) of a cluster; return the action."""
        from cloudmesh.emr.api import jobflow

        self.warnings = []
        check_cluster_id(cluster_id)
        if concurrency is None and idle_timeout is None and scaling is None:
            raise UsageError("modify needs at least one of --concurrency, --idle-timeout, "
                             "--scaling")
        calls = []
        request = {"ClusterId": cluster_id}
        if concurrency is not None:
            level = jobflow.whole(concurrency, "--concurrency", jobflow.STEP_CONCURRENCY_MIN,
                                  jobflow.STEP_CONCURRENCY_MAX)
            request["StepConcurrencyLevel"] = level
            calls.append(("modify_cluster", {"StepConcurrencyLevel": level}))
        if idle_timeout is not None:
            if str(idle_timeout).strip().lower() in jobflow.OFF:
                request["AutoTerminationPolicy"] = None
                calls.append(("remove_auto_termination_policy", {}))
            else:
                policy = jobflow.idle_policy(idle_timeout)
                request["AutoTerminationPolicy"] = policy
                calls.append(("put_auto_termination_policy", {"AutoTerminationPolicy": policy}))
        if scaling is not None:
            if str(scaling).strip().lower() in jobflow.OFF:
                request["ManagedScalingPolicy"] = None
                calls.append(("remove_managed_scaling_policy", {}))
            else:
                policy = jobflow.scaling_policy(scaling)
                request["ManagedScalingPolicy"] = policy
                calls.append(("put_managed_scaling_policy", {"ManagedScalingPolicy": policy}))
        self._active(cluster_id, f"modify cluster {cluster_id}")
        emr = self.client("emr")
        answers = {}
        for method, params in calls:
            answer = self._ask("modify", cluster_id, f"modify cluster {cluster_id}",
                               lambda: getattr(emr, method)(ClusterId=cluster_id, **params),
                               cluster=cluster_id, request=request)
            answers.update({k: v for k, v in answer.items() if k != "ResponseMetadata"})
        return self._action("modify", cluster_id, cluster=cluster_id, request=request,
                            response=answers)

    def protect(self, cluster_id, on):
        """Turn termination protection on or off; return the action."""
        self.warnings = []
        check_cluster_id(cluster_id)
        self._active(cluster_id, f"change the protection of {cluster_id}")
        request = {"ClusterId": cluster_id, "TerminationProtected": bool(on)}
        emr = self.client("emr")
        answer = self._ask("protect", cluster_id, f"change the protection of {cluster_id}",
                           lambda: emr.set_termination_protection(
                               JobFlowIds=[cluster_id], TerminationProtected=bool(on)),
                           cluster=cluster_id, request=request)
        return self._action("protect", cluster_id, cluster=cluster_id, request=request,
                            response=answer)

    def list_groups(self, cluster_id):
        """The cluster's instance groups (or fleets), master first."""
        check_cluster_id(cluster_id)
        cluster = self._describe(cluster_id)
        if cluster.get("InstanceCollectionType") == "INSTANCE_FLEET":
            groups = self._pages("list_instance_fleets", "InstanceFleets",
                                 f"list the instance fleets of {cluster_id}",
                                 ClusterId=cluster_id)
        else:
            groups = self._pages("list_instance_groups", "InstanceGroups",
                                 f"list the instance groups of {cluster_id}",
                                 ClusterId=cluster_id)
        order = {"MASTER": 0, "CORE": 1, "TASK": 2}
        groups = utc(groups)
        for group in groups:
            group["ClusterId"] = cluster_id
        groups.sort(key=lambda g: order.get(g.get("InstanceGroupType") or
                                            g.get("InstanceFleetType"), 3))
        self._record("group", groups, cluster=cluster_id)
        return groups

    def add_task(self, cluster_id, node=None, count=None, spot=False, bid=None):
        """Add a TASK instance group (on demand, or spot); return the action, whose
        Target is the new group's id."""
        from cloudmesh.emr.api import jobflow

        self.warnings = []
        check_cluster_id(cluster_id)
        node = node or self.settings.emr_default("node")
        if not INSTANCE_TYPE.match(str(node)):
            raise UsageError(f"--node: '{node}' is not an instance type like m5.xlarge")
        count = jobflow.whole(1 if count is None else count, "--count", minimum=1)
        group = jobflow.task_group(node, count, spot=bool(spot), bid=bid)
        jobflow.validate({"JobFlowId": cluster_id, "InstanceGroups": [group]},
                         "AddInstanceGroups", "add task")
        cluster = self._active(cluster_id, f"add a task group to {cluster_id}")
        if cluster.get("InstanceCollectionType") == "INSTANCE_FLEET":
            raise UsageError(f"cluster {cluster_id} uses instance fleets; add task capacity "
                             "to its task fleet instead")
        self._check_instance_types(cluster.get("ReleaseLabel"), [("--node", node)])
        emr = self.client("emr")
        answer = self._ask("add task", cluster_id, f"add a task group to {cluster_id}",
                           lambda: emr.add_instance_groups(JobFlowId=cluster_id,
                                                           InstanceGroups=[group]),
                           cluster=cluster_id, request=group)
        ids = answer.get("InstanceGroupIds") or []
        return self._action("add task", ids[0] if ids else cluster_id, cluster=cluster_id,
                            request=group, response=answer)

    def resize(self, cluster_id, group_id, count):
        """Set the instance count of a CORE or TASK group; return the action."""
        from cloudmesh.emr.api import jobflow

        self.warnings = []
        check_cluster_id(cluster_id)
        if not isinstance(group_id, str) or not GROUP_ID.match(group_id):
            raise UsageError(f"'{group_id}' is not an instance group id; ids look like "
                             f"ig-2AXXXXXXGAPLF (see 'cms emr list groups {cluster_id}')")
        count = jobflow.whole(count, "COUNT", minimum=0)
        self._active(cluster_id, f"resize a group of {cluster_id}")
        groups = {g["Id"]: g for g in self._pages(
            "list_instance_groups", "InstanceGroups",
            f"list the instance groups of {cluster_id}", ClusterId=cluster_id)}
        group = groups.get(group_id)
        if group is None:
            raise NotFound(f"cluster {cluster_id} has no instance group {group_id}; its "
                           f"groups: {', '.join(groups) or 'none'}")
        if group.get("InstanceGroupType") == "MASTER":
            raise UsageError(f"{group_id} is the MASTER group, which cannot be resized; "
                             "resize a CORE or TASK group")
        request = {"ClusterId": cluster_id, "InstanceGroupId": group_id, "InstanceCount": count,
                   "PreviousCount": group.get("RequestedInstanceCount")}
        emr = self.client("emr")
        answer = self._ask("resize", group_id, f"resize {group_id}",
                           lambda: emr.modify_instance_groups(
                               ClusterId=cluster_id,
                               InstanceGroups=[{"InstanceGroupId": group_id,
                                                "InstanceCount": count}]),
                           cluster=cluster_id, request=request)
        return self._action("resize", group_id, cluster=cluster_id, request=request,
                            response=answer)

    # ---- the cluster as a config file --------------------------------------------------------

    def cluster_config(self, cluster_id):
        """The cluster as a RunJobFlow document that ``start --config`` accepts and that
        recreates it: release, applications, groups, bootstrap actions, configurations,
        tags, log URI and policies; no ids or state; secret properties masked."""
        import botocore.exceptions as bx

        from cloudmesh.emr.api import jobflow

        cluster = self.describe(cluster_id)
        bootstrap = self._pages("list_bootstrap_actions", "BootstrapActions",
                                f"list the bootstrap actions of {cluster_id}",
                                ClusterId=cluster_id)
        emr = self.client("emr")
        policies = {}
        for key, method in (("AutoTerminationPolicy", "get_auto_termination_policy"),
                            ("ManagedScalingPolicy", "get_managed_scaling_policy")):
            with self._aws(f"read the {key} of {cluster_id}"):
                try:
                    policies[key] = getattr(emr, method)(ClusterId=cluster_id).get(key)
                except bx.ClientError as error:
                    code, message = error_of(error)
                    if code in DENIED:
                        raise
                    self.warnings.append(f"cannot read the {key} of {cluster_id} ({code}); "
                                         "the config leaves it out")
                except NotImplementedError:  # an emulator without the operation (moto's)
                    self.warnings.append(f"the endpoint cannot read the {key} of "
                                         f"{cluster_id}; the config leaves it out")
        return jobflow.document(cluster, bootstrap, policies.get("AutoTerminationPolicy"),
                                policies.get("ManagedScalingPolicy"),
                                redact=jobflow.redact_configurations)

    # ---- metrics ------------------------------------------------------------------------------

    def metrics(self, cluster_id, since=None):
        """The cluster's CloudWatch metrics (AWS/ElasticMapReduce, dimension JobFlowId) over
        ``since`` (a duration, default 3h) in 5-minute periods: one record per metric with
        its data points (oldest first) and its latest, minimum and maximum values."""
        import datetime as dt

        from cloudmesh.emr import durations

        self.warnings = []
        check_cluster_id(cluster_id)
        span = durations.seconds(since if since is not None else METRICS_SINCE, "--since",
                                 minimum=METRICS_PERIOD)
        end = now()
        start = end - dt.timedelta(seconds=span)
        self._describe(cluster_id)  # an unknown cluster is NotFound, not an empty answer
        queries = [{"Id": f"m{i}", "Label": name, "ReturnData": True,
                    "MetricStat": {"Metric": {"Namespace": METRICS_NAMESPACE, "MetricName": name,
                                              "Dimensions": [{"Name": "JobFlowId",
                                                              "Value": cluster_id}]},
                                   "Period": METRICS_PERIOD, "Stat": "Average"}}
                   for i, name in enumerate(METRICS)]
        cloudwatch = self.client("cloudwatch")
        found = {name: {} for name in METRICS}
        with self._aws(f"read the metrics of {cluster_id}"):
            pages = cloudwatch.get_paginator("get_metric_data").paginate(
                MetricDataQueries=queries, StartTime=start, EndTime=end,
                ScanBy="TimestampAscending")
            for page in pages:
                for result in page.get("MetricDataResults", []):
                    name = METRICS[int(result["Id"][1:])]
                    for stamp, value in zip(result.get("Timestamps", []),
                                            result.get("Values", [])):
                        found[name][utc(stamp)] = value
        records = []
        for name in METRICS:
            points = [{"Timestamp": stamp, "Value": value}
                      for stamp, value in sorted(found[name].items())]
            values = [p["Value"] for p in points]
            records.append({
                "Id": f"{cluster_id}/{name}", "ClusterId": cluster_id, "Metric": name,
                "Namespace": METRICS_NAMESPACE, "Period": METRICS_PERIOD,
                "StartTime": start, "EndTime": end,
                "Latest": values[-1] if values else None,
                "Minimum": min(values) if values else None,
                "Maximum": max(values) if values else None,
                "Datapoints": points,
            })
        self._record("metric", records, cluster=cluster_id)
        return records

    # ---- history, cached listings, sync -------------------------------------------------

    def history(self, cluster_id):
        """The cluster's timeline from the recorded events (oldest first), read from the
        database alone: it lasts after EMR has stopped listing the cluster."""
        check_cluster_id(cluster_id)
        try:
            found = self.database.find(self.cloud, "event", {"cm.cluster": cluster_id})
        finally:
            take = getattr(self._database, "take_warnings", None)
            self.warnings.extend(take() if take else [])
        found = [{k: v for k, v in doc.items() if k not in ("_id", "cm")} for doc in found]
        if not found:
            raise NotFound(f"no history of {cluster_id} in the database for cloud "
                           f"'{self.cloud}' (list or describe it first)")
        return sorted(found, key=lambda e: (utc(e["Seen"]), e["Kind"] != "cluster"))

    def cached_clusters(self, status=None):
        """The clusters as last recorded, without asking AWS; a WARNING says how old."""
        states = vocabulary.translate("cluster status", status)
        self.cached_age = None
        found = self.database.find(self.cloud, "cluster")
        clusters = [doc for doc in found if not states or doc["Status"]["State"] in states]
        if found:
            oldest = min(utc(doc["cm"]["modified"]) for doc in found if doc.get("cm"))
            age = int((now() - oldest).total_seconds())
            self.cached_age = age
            from cloudmesh.emr import durations

            self.warnings.append(f"from the database, not AWS: the oldest record was "
                                 f"written {durations.human(age)} ago; 'cms emr sync' "
                                 "refreshes it")
        else:
            self.warnings.append("from the database, not AWS: it holds no cluster yet; "
                                 "'cms emr sync' fills it")
        return newest_first([{k: v for k, v in doc.items() if k not in ("_id", "cm")}
                             for doc in clusters])

    def sync(self):
        """Refresh the records cheaply: the active clusters by state filter, the ended ones
        created since the last sync (all the first time), with adaptive retries."""
        self.retry_mode = "adaptive"
        self.warnings = []
        found = self.database.find(self.cloud, "sync", {"Id": "clusters"})
        last = utc(found[0]["Time"]) if found else None
        began = now()
        held = [doc["Id"] for doc in self.database.find(self.cloud, "cluster")
                if doc["Status"]["State"] not in ENDED_STATES]
        active = self.list_clusters(status=["active"])
        ended = self.list_clusters(status=["TERMINATED", "TERMINATED_WITH_ERRORS"],
                                   created_after=last) if last else \
            self.list_clusters(status=["TERMINATED", "TERMINATED_WITH_ERRORS"])
        listed = {c["Id"] for c in active + ended}
        for cluster_id in held:  # active at the last sync, ended before it: describe it
            if cluster_id not in listed:
                try:
                    ended.append(self.describe(cluster_id))
                except NotFound:
                    pass
        self._record("sync", [{"Id": "clusters", "Time": began, "Active": len(active),
                               "Ended": len(ended)}])
        return {"Active": len(active), "Ended": len(ended), "Since": last, "Time": began}

    # ---- cost --------------------------------------------------------------------------

    def cost(self, cluster_ids=None, status=None):
        """What the clusters cost: per cluster its groups (or fleets), each type's hourly
        price (EC2 on-demand or spot, plus EMR's), dollars per hour now and dollars so far,
        and the total (see api/cost.py). Without ids: the clusters in ``status`` (active)."""
        from cloudmesh.emr.api import cost

        self.warnings = []
        if cluster_ids:
            for cluster_id in cluster_ids:
                check_cluster_id(cluster_id)
            clusters = [self._describe(cluster_id) for cluster_id in dict.fromkeys(cluster_ids)]
        else:
            clusters = self.list_clusters(status=status or ["active"])
            self.warnings = []
        prices = _Prices(self)
        estimates = []
        for cluster in clusters:
            cluster_id = cluster["Id"]
            groups = self.list_groups(cluster_id)
            instances = utc(self._pages("list_instances", "Instances",
                                        f"list the instances of {cluster_id}",
                                        ClusterId=cluster_id))
            zone = cluster.get("Ec2InstanceAttributes", {}).get("Ec2AvailabilityZone")

            def price_of(instance_type, market, zone=zone):
                return prices.price(instance_type, market, zone)

            estimates.append(cost.estimate(cluster, groups, instances, price_of, now()))
        self.warnings.extend(prices.warnings())
        for estimate in estimates:
            if estimate["Unpriced"]:
                self.warnings.append(f"{estimate['Id']}: no price known for "
                                     f"{', '.join(estimate['Unpriced'])} in {self.region}; "
                                     "those instances are not counted")
        return cost.total(estimates, now())

    # ---- doctor ------------------------------------------------------------------------

    # (check, method, fast): the fast ones also run before every start (unless --no-check),
    # where the first that fails stops the start with its error, before RunJobFlow
    DOCTOR_CHECKS = (
        ("credentials", "_doctor_credentials", False),
        ("service role", "_doctor_service_role", True),
        ("instance profile", "_doctor_instance_profile", True),
        ("release", "_doctor_release", True),
        ("instance types", "_doctor_types", True),
        ("key pair", "_doctor_key", False),
        ("subnet", "_doctor_subnet", False),
        ("log bucket", "_doctor_bucket", False),
        ("vCPU quota", "_doctor_quota", False),
    )

    def doctor(self, config=None, fix=False, fast=False, **options):
        """Check what a launch with these options needs, before it costs a failed launch:
        one record per check with Status OK, WARN or FAIL, what was found and the fix.
        ``fix`` first creates EMR's default roles and instance profile (as
        ``aws emr create-default-roles`` does) when they are missing; nothing else.
        ``fast``: only the checks ``start`` makes too."""
        from cloudmesh.emr.api import jobflow

        self.warnings = []
        build = {k: v for k, v in options.items() if k in self.START_OPTIONS and k != "no_check"}
        self._check_options(build)
        if build.get("loguri") is not None:
            check_s3_uri("--loguri", build["loguri"])
        for key, pattern, example in (("key", KEY_NAME, "my-key"), ("subnet", SUBNET_ID,
                                                                    "subnet-0123456789abcdef0")):
            if build.get(key) is not None and not pattern.match(str(build[key])):
                raise UsageError(f"--{key}: '{shorten(build[key])}' is not a "
                                 f"{'key pair name' if key == 'key' else 'subnet id'} like "
                                 f"{example}")
        request, wanted = jobflow.build("doctor", self.settings, config=config, **build)
        results = []
        if fix:
            results.extend(self._create_default_roles(request))
        plan = self._plan(request, wanted, "--release" if build.get("release") else
                          "ReleaseLabel")
        results.extend(record for record, _, _ in self._checks(plan, fast=fast))
        return results

    @staticmethod
    def _plan(request, wanted, release_option):
        """What the checks read: the RunJobFlow request, the instance types asked (option,
        type), and the option that named the release (for a start's error)."""
        return {"request": request, "wanted": list(dict.fromkeys(wanted)),
                "release option": release_option}

    def _checks(self, plan, fast=False):
        """Run DOCTOR_CHECKS (with ``fast``, the fast ones): [(record, error, made)], where
        ``error`` is what a start raises for a FAIL and ``made`` is False for a check the
        endpoint cannot answer (an operation it does not implement)."""
        done = []
        for check, method, quick in self.DOCTOR_CHECKS:
            if fast and not quick:
                continue
            error, made = None, True
            try:
                status, detail, remedy, *raised = getattr(self, method)(plan)
                error = raised[0] if raised else None
            except EmrError as failure:  # the check could not be made
                made = "does not implement" not in failure.message
                status, detail = ("FAIL" if made else "WARN"), failure.message
                remedy = "see the message" if made else ""
                # before a start, an endpoint that could not be reached or read is a warning
                # (RunJobFlow comes next, with its own care for lost answers); anything
                # else (no credentials, no region) stops the start
                error = failure if made and not isinstance(failure, AwsError) else None
            else:
                if status == "FAIL" and error is None:
                    error = EmrError(f"{check}: {detail}" + (f"; fix: {remedy}" if remedy
                                                             else ""))
            done.append(({"Id": check, "Check": check, "Status": status, "Detail": detail,
                          "Fix": remedy or "", "Time": now()}, error, made))
        return done

    def _preflight(self, request, wanted, release_option):
        """doctor's fast checks (roles, release, instance types) before a start: the first
        that fails raises its error, so no cluster is made; one that could not be made (AWS
        denied the read, the endpoint could not be reached or read) is a warning; one the
        endpoint does not implement is skipped."""
        for record, error, made in self._checks(self._plan(request, wanted, release_option),
                                                fast=True):
            if error is not None:
                raise error
            if record["Status"] != "OK" and made:
                detail = record["Detail"]
                self.warnings.append(detail if "not checked" in detail or
                                     "without the check" in detail
                                     else f"{detail}; {record['Check']} not checked")

    def _aws_code(self, call):
        """(answer, None) or (None, botocore error code) of a call whose refusal is an answer."""
        import botocore.exceptions as bx

        try:
            return call(), None
        except bx.ClientError as error:
            return None, error_of(error)[0]

    def _doctor_credentials(self, plan):
        sts = self.client("sts")
        with self._aws("ask STS who the credentials are"):
            who = sts.get_caller_identity()
        return "OK", f"account {who['Account']}", ""

    def _doctor_role(self, what, name, default, found, code):
        """What the read of a role or instance profile says: (status, detail, fix, error).
        Missing is a FAIL whose error (a start's) names it and the fix; a read AWS denies
        is a WARN (a start goes on without the check)."""
        if found is None and code in DENIED:
            return "WARN", f"cannot read the IAM {what} {name} ({code}): not checked", \
                "allow iam:GetRole and iam:GetInstanceProfile to check it", None
        if found is None and code not in MISSING_ROLE:  # a throttle, an endpoint's 5xx
            return "WARN", f"cannot read the IAM {what} {name} ({code}): not checked", "", None
        if found is None:
            fix = ("cms emr doctor --fix (or: aws emr create-default-roles)" if name == default
                   else f"create the {what} {name}, or use {default} (cms emr doctor --fix "
                   "makes it)")
            return "FAIL", f"the {what} {name} does not exist ({code})", fix, Conflict(
                f"the {what} {name} does not exist in this account: {fix}; nothing started")
        return "OK", f"{name} exists", "", None

    def _doctor_service_role(self, plan):
        name = plan["request"].get("ServiceRole") or "EMR_DefaultRole"
        iam = self.client("iam")
        with self._aws(f"read the IAM role {name}"):
            found, code = self._aws_code(lambda: iam.get_role(RoleName=name))
        return self._doctor_role("service role", name, "EMR_DefaultRole", found, code)

    def _doctor_instance_profile(self, plan):
        name = plan["request"].get("JobFlowRole") or EC2_DEFAULT_ROLE
        iam = self.client("iam")
        with self._aws(f"read the IAM instance profile {name}"):
            found, code = self._aws_code(lambda: iam.get_instance_profile(InstanceProfileName=name))
        if found is not None and not found["InstanceProfile"].get("Roles"):
            remedy = (f"aws iam add-role-to-instance-profile --instance-profile-name {name} "
                      f"--role-name {name}")
            return "FAIL", f"the instance profile {name} holds no role", remedy, Conflict(
                f"the instance profile {name} holds no role: {remedy}; nothing started")
        return self._doctor_role("instance profile", name, EC2_DEFAULT_ROLE, found, code)

    def _doctor_release(self, plan):
        release = plan["request"]["ReleaseLabel"]
        option = plan["release option"]
        # asked once: an endpoint without the operation answers 500, which botocore would
        # retry for seconds; a lost answer is a warning (ListSupportedInstanceTypes, with
        # retries, still refuses an unknown release)
        emr = self.client("emr", once=True)
        try:
            with self._aws(f"describe the release {release}"):
                found, code = self._aws_code(
                    lambda: emr.describe_release_label(ReleaseLabel=release))
        except AwsError as error:
            if "does not implement" in error.message:
                raise
            return "WARN", f"{error.message}: not checked", "", None
        if found is None and code.isdigit():  # no AWS error at all: an emulator without it
            raise AwsError(f"cannot describe the release {release}: the endpoint does not "
                           f"implement it (HTTP {code})")
        if found is None and code in DENIED:
            return "WARN", f"cannot describe the release {release} ({code}): not checked", \
                "allow elasticmapreduce:DescribeReleaseLabel to check it", None
        if found is None and code not in UNKNOWN_RELEASE:  # not implemented, a 5xx
            return "WARN", f"cannot describe the release {release} ({code}): not checked", \
                "", None
        if found is None:
            return "FAIL", f"{release} is not a release EMR knows in {self.region} ({code})", \
                "pick one of 'aws emr list-release-labels'", NotOffered(
                    f"{option}: '{shorten(release)}' is not a release label EMR knows in "
                    f"{self.region} ({code}): pick one of 'aws emr list-release-labels'")
        names = {a.get("Name", "").lower() for a in found.get("Applications", [])}
        if "spark" not in names:
            return "FAIL", f"{release} does not include Spark", "pick a release with Spark", \
                UsageError(f"{option}: {release} does not include Spark: pick a release with "
                           "Spark (emr-7.x has it)")
        return "OK", f"{release} includes Spark", ""

    def _doctor_types(self, plan):
        release = plan["request"]["ReleaseLabel"]
        saved = self.warnings
        self.warnings = []
        try:
            self._check_instance_types(release, plan["wanted"])
        except UsageError as error:  # NotOffered (404) or a single vCPU (400), as raised
            return "FAIL", error.message, "pick a supported type with at least 2 vCPUs", error
        finally:
            said, self.warnings = self.warnings, saved
        if said:
            return "WARN", "; ".join(said), ""
        return "OK", ", ".join(sorted({t for _, t in plan["wanted"]})) + \
            f" supported by {release} in {self.region}", ""

    def _doctor_key(self, plan):
        key = plan["request"]["Instances"].get("Ec2KeyName")
        if not key:
            return "OK", "no key pair asked (no ssh to the master)", ""
        ec2 = self.client("ec2")
        with self._aws(f"read the key pair {key}"):
            found, code = self._aws_code(lambda: ec2.describe_key_pairs(KeyNames=[key]))
        if not found or not found.get("KeyPairs"):
            return "FAIL", f"the key pair {key} does not exist in {self.region} ({code})", \
                f"aws ec2 create-key-pair --key-name {key} (or pick one of " \
                "'aws ec2 describe-key-pairs')"
        return "OK", f"{key} exists", ""

    def _doctor_subnet(self, plan):
        subnet = plan["request"]["Instances"].get("Ec2SubnetId")
        if not subnet:
            return "OK", "no subnet asked (the default VPC)", ""
        ec2 = self.client("ec2")
        with self._aws(f"read the subnet {subnet}"):
            found, code = self._aws_code(lambda: ec2.describe_subnets(SubnetIds=[subnet]))
        if not found or not found.get("Subnets"):
            return "FAIL", f"the subnet {subnet} does not exist in {self.region} ({code})", \
                "pick one of 'aws ec2 describe-subnets'"
        return "OK", f"{subnet} in {found['Subnets'][0].get('AvailabilityZone')}", ""

    def _doctor_bucket(self, plan):
        uri = plan["request"].get("LogUri")
        if not uri:
            return "WARN", "no log bucket: step logs stay on the cluster and end with it", \
                "--loguri=s3://BUCKET/logs/"
        where = split_s3_uri(uri)
        if not where or not BUCKET.match(where[0]):
            return "FAIL", f"the log URI '{shown(uri)}' is not an S3 URI", \
                "--loguri=s3://BUCKET/logs/"
        bucket = where[0]
        s3 = self.client("s3")
        with self._aws(f"read the bucket {bucket}"):
            found, code = self._aws_code(lambda: s3.get_bucket_location(Bucket=bucket))
        if found is None:
            return "FAIL", f"the log bucket {bucket} cannot be read ({code})", \
                f"aws s3 mb s3://{bucket} --region {self.region}"
        where = found.get("LocationConstraint") or "us-east-1"
        where = "eu-west-1" if where == "EU" else where
        if where != self.region:
            return "FAIL", f"the log bucket {bucket} is in {where}, the cluster in {self.region}", \
                f"use a bucket in {self.region}"
        return "OK", f"{bucket} in {where}", ""

    def _doctor_quota(self, plan):
        from cloudmesh.emr.api import cost

        counts = {}
        for group in plan["request"]["Instances"].get("InstanceGroups") or []:
            counts[group["InstanceType"]] = counts.get(group["InstanceType"], 0) + \
                int(group.get("InstanceCount") or 0)
        vcpu = cost.table().get("vcpu", {})
        unknown = [t for t in counts if t not in vcpu]
        wanted = sum(vcpu.get(t, 0) * n for t, n in counts.items())
        quotas = self.client("service-quotas")
        with self._aws("read the on-demand standard-instance vCPU quota"):
            found, code = self._aws_code(lambda: quotas.get_service_quota(
                ServiceCode="ec2", QuotaCode=QUOTA_CODE))
        if found is None:
            return "WARN", f"cannot read the quota {QUOTA_CODE} ({code}); {wanted} vCPUs " \
                "asked", "check it in the Service Quotas console"
        limit = found["Quota"]["Value"]
        more = f" (and {', '.join(unknown)} not counted)" if unknown else ""
        if wanted > limit:
            return "FAIL", f"{wanted} vCPUs asked, the quota is {limit:g}{more}", \
                f"ask for more: aws service-quotas request-service-quota-increase " \
                f"--service-code ec2 --quota-code {QUOTA_CODE} --desired-value {wanted}"
        return "OK", f"{wanted} vCPUs asked of {limit:g}{more}", ""

    def _create_default_roles(self, request):
        """The roles and instance profile ``aws emr create-default-roles`` makes, where
        missing; one record per thing created or found."""
        iam = self.client("iam")
        done = []
        for name, principals, policy in DEFAULT_ROLES:
            with self._aws(f"read the IAM role {name}"):
                found, _ = self._aws_code(lambda name=name: iam.get_role(RoleName=name))
            if found is None:
                trust = {"Version": "2008-10-17", "Statement": [{
                    "Sid": "", "Effect": "Allow", "Action": "sts:AssumeRole",
                    "Principal": {"Service": principals if len(principals) > 1
                                  else principals[0]}}]}
                import json

                with self._aws(f"create the IAM role {name}"):
                    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
                    iam.attach_role_policy(RoleName=name, PolicyArn=policy)
                self._action("create-role", name, request={"RoleName": name, "PolicyArn": policy})
            done.append({"Id": f"fix {name}", "Check": f"fix role {name}", "Status": "OK",
                         "Detail": "created" if found is None else "exists", "Fix": "",
                         "Time": now()})
        profile = EC2_DEFAULT_ROLE
        with self._aws(f"read the IAM instance profile {profile}"):
            found, _ = self._aws_code(
                lambda: iam.get_instance_profile(InstanceProfileName=profile))
        if found is None:
            with self._aws(f"create the IAM instance profile {profile}"):
                iam.create_instance_profile(InstanceProfileName=profile)
                iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=profile)
            self._action("create-instance-profile", profile,
                         request={"InstanceProfileName": profile, "RoleName": profile})
        elif not found["InstanceProfile"].get("Roles"):
            with self._aws(f"add the role {profile} to its instance profile"):
                iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=profile)
        done.append({"Id": f"fix {profile} profile", "Check": "fix instance profile",
                     "Status": "OK", "Detail": "created" if found is None else "exists",
                     "Fix": "", "Time": now()})
        return done

    # ---- reap --------------------------------------------------------------------------

    def reap(self, dry_run=False, idle=None):
        """End every active cluster past its ``cloudmesh:expires`` tag, past its
        ``cloudmesh:max-cost`` by the cost estimate, or (with ``idle``, a duration) idle that
        long; never a termination-protected one. One record per active cluster: its
        Decision (reap, keep, protected, failed, or would-reap with ``dry_run``) and Reasons.
        Each reaping is recorded as a ``reap`` action with its reasons."""
        from cloudmesh.emr import durations
        from cloudmesh.emr.api import jobflow

        self.warnings = []
        idle_seconds = durations.seconds(idle, "--idle", minimum=60) if idle is not None else None
        clusters = [self._describe(c["Id"]) for c in self.list_clusters(status=["active"])]
        self.warnings = []
        moment = now()
        results = []
        for cluster in clusters:
            cluster_id = cluster["Id"]
            tags = {t["Key"]: t.get("Value") for t in cluster.get("Tags") or []}
            reasons = []
            expires = tags.get(jobflow.EXPIRES_TAG)
            if expires:
                try:
                    at = durations.moment(expires, jobflow.EXPIRES_TAG)
                except UsageError:
                    self.warnings.append(f"{cluster_id}: tag {jobflow.EXPIRES_TAG} "
                                         f"'{shown(expires)}' is not a time; ignored")
                else:
                    if moment >= at:
                        reasons.append(f"expired at {at.isoformat().replace('+00:00', 'Z')}")
            limit = tags.get(jobflow.MAX_COST_TAG)
            if limit:
                try:
                    most = float(limit)
                except ValueError:
                    self.warnings.append(f"{cluster_id}: tag {jobflow.MAX_COST_TAG} "
                                         f"'{shown(limit)}' is not an amount; ignored")
                else:
                    said = self.warnings
                    spent = self.cost([cluster_id])["DollarsSoFar"]
                    self.warnings = said + [w for w in self.warnings if w not in said]
                    if spent >= most:
                        reasons.append(f"cost ${spent:.2f} reached max-cost ${most:.2f}")
            if idle_seconds is not None:
                since = self._idle_since(cluster, idle_seconds, moment)
                if since is not None:
                    reasons.append(f"idle since {since.isoformat().replace('+00:00', 'Z')}")
            record = {"Id": cluster_id, "ClusterId": cluster_id, "Name": cluster.get("Name"),
                      "State": cluster["Status"]["State"], "Reasons": reasons, "Time": moment}
            if cluster.get("TerminationProtected"):
                record["Decision"] = "protected"
            elif not reasons:
                record["Decision"] = "keep"
            elif dry_run:
                record["Decision"] = "would-reap"
            else:
                record["Decision"] = self._reap_one(cluster_id, reasons)
            results.append(record)
        return results

    def _reap_one(self, cluster_id, reasons):
        emr = self.client("emr")
        request = {"JobFlowIds": [cluster_id], "Reasons": reasons}
        try:
            answer = self._ask("reap", cluster_id, f"terminate cluster {cluster_id}",
                               lambda: emr.terminate_job_flows(JobFlowIds=[cluster_id]),
                               cluster=cluster_id, request=request)
        except EmrError as error:
            self.warnings.append(f"{cluster_id}: {error.message}")
            return "failed"
        self._action("reap", cluster_id, cluster=cluster_id, request=request, response=answer)
        return "reap"

    def _idle_since(self, cluster, idle_seconds, moment):
        """When the cluster became idle, if it has been idle ``idle_seconds`` by ``moment``:
        CloudWatch's IsIdle (1 in every period of the span), else no step running or
        pending since the last one ended (or since it was ready)."""
        cluster_id = cluster["Id"]
        span_start = moment - datetime.timedelta(seconds=idle_seconds)
        try:
            cloudwatch = self.client("cloudwatch")
            with self._aws(f"read IsIdle of {cluster_id}"):
                points = cloudwatch.get_metric_statistics(
                    Namespace=METRICS_NAMESPACE, MetricName="IsIdle",
                    Dimensions=[{"Name": "JobFlowId", "Value": cluster_id}],
                    StartTime=span_start, EndTime=moment, Period=METRICS_PERIOD,
                    Statistics=["Minimum"]).get("Datapoints", [])
        except EmrError:
            points = []
        if points:
            points = sorted(points, key=lambda p: p["Timestamp"])
            covered = utc(points[0]["Timestamp"]) <= span_start + datetime.timedelta(
                seconds=METRICS_PERIOD)
            if covered and all(p["Minimum"] >= 1 for p in points):
                return span_start
            if not all(p["Minimum"] >= 1 for p in points):
                return None
        steps = self.list_steps(cluster_id)
        if any(step["Status"]["State"] in ("PENDING", "RUNNING", "CANCEL_PENDING")
               for step in steps):
            return None
        timeline = cluster["Status"].get("Timeline", {})
        ends = [utc(step["Status"].get("Timeline", {}).get("EndDateTime")) for step in steps]
        since = max([t for t in ends if t] + [utc(timeline.get("ReadyDateTime")) or
                                              utc(timeline.get("CreationDateTime"))])
        return since if (moment - since).total_seconds() >= idle_seconds else None

    def _cached_prices(self, ids):
        """Prices read from the Price List API within the last day: id -> record."""
        from cloudmesh.emr.api import cost

        try:
            found = self.database.find(self.cloud, "price", {"Id": {"$in": list(ids)}})
        except DatabaseError:
            return {}
        fresh = now() - datetime.timedelta(seconds=cost.PRICE_TTL)
        return {doc["Id"]: doc for doc in found if utc(doc.get("Fetched")) and
                utc(doc["Fetched"]) >= fresh}

    def price_list(self, instance_type, region):
        """{"ec2", "emr"} USD per instance-hour from the Price List API (None for a
        service it has no product of)."""
        from cloudmesh.emr.api import cost

        pricing = self.client("pricing", region=cost.PRICING_REGION)
        found = {}
        for service in cost.SERVICES:
            code, terms = cost.filters(service, instance_type, region)
            with self._aws(f"read the {code} price of {instance_type} in {region}"):
                pages = pricing.get_paginator("get_products").paginate(
                    ServiceCode=code, Filters=terms, FormatVersion="aws_v1")
                products = [item for page in pages for item in page.get("PriceList", [])]
            found[service] = cost.on_demand_usd(products, service)
        return found

    def spot_price(self, instance_type, zone, when=None):
        """EC2's spot price of ``instance_type`` (Linux) in ``zone`` at ``when``."""
        from cloudmesh.emr.api import cost

        ec2 = self.client("ec2")
        query = {"InstanceTypes": [instance_type], "ProductDescriptions": [cost.SPOT_PRODUCT]}
        if zone:
            query["Filters"] = [{"Name": "availability-zone", "Values": [zone]}]
        with self._aws(f"read the spot price history of {instance_type}"):
            pages = ec2.get_paginator("describe_spot_price_history").paginate(**query)
            history = [item for page in pages for item in page.get("SpotPriceHistory", [])]
        return cost.spot_price(history, when)




def step_name(name, default):
    if name is None:
        return default
    if not str(name).strip() or len(str(name)) > 256:
        raise UsageError("--name: a step name is 1 to 256 characters")
    return str(name)


def check_step_id(step_id):
    if not isinstance(step_id, str) or not STEP_ID.match(step_id):
        raise UsageError(f"'{shown(step_id)}' is not a step id; step ids look like "
                         "s-1EXAMPLESTEP (see 'cms emr list steps CLUSTERID')")
    return step_id


def split_s3_uri(uri):
    """(bucket, key) of an s3://, s3n:// or s3a:// URI, or None."""
    match = S3_URI.fullmatch(str(uri or ""))
    return (match.group(1), match.group(2) or "") if match else None


def check_s3_uri(option, value):
    where = split_s3_uri(value)
    if not where or not BUCKET.match(where[0]):
        raise UsageError(f"{option}: '{shown(value)}' is not an S3 URI like "
                         "s3://my-bucket/path/file")
    return value


def check_tail(tail):
    if tail is None:
        return None
    if isinstance(tail, bool) or not COUNT.match(str(tail)):
        raise UsageError(f"--tail: '{shown(tail)}' is not a whole number of lines")
    return int(tail)


def log_part_order(key):
    """Rotated parts (stderr.1.gz, stderr.2.gz, ...) in order, the current one last."""
    match = LOG_PART.fullmatch(key.rsplit("/", 1)[-1])
    part = match.group("part") if match else None
    if part is None:
        return (1, 0, "")
    return (0, int(part), "") if part.isdigit() else (0, 0, part)


class _Prices:
    """The prices of one `cost` run: each type asked once; the Price List API first (cached
    a day in the database), the shipped table when it cannot be asked."""

    def __init__(self, provider):
        self.provider = provider
        self.region = provider.region
        self.known = {}
        self.spots = {}
        self.fallback = None  # why the Price List API was not used
        self.spot_failure = None

    def price(self, instance_type, market, zone):
        from cloudmesh.emr.api import cost

        if instance_type not in self.known:
            self.known[instance_type] = self._on_demand(instance_type)
        base = self.known[instance_type]
        if base is None or market != "SPOT":
            return base
        key = (instance_type, zone)
        if key not in self.spots:
            try:
                self.spots[key] = self.provider.spot_price(instance_type, zone)
            except EmrError as error:
                self.spot_failure = error.message
                self.spots[key] = None
        spot = self.spots[key]
        if spot is None:  # no history: EMR's default bid is the on-demand price
            return {**base, "source": f"{base['source']} (no spot price found: on-demand)"}
        return {"ec2": spot, "emr": base["emr"], "source": f"spot {zone or ''}".strip()}

    def _on_demand(self, instance_type):
        from cloudmesh.emr.api import cost

        ident = f"{self.region}/{instance_type}"
        if self.fallback is None:
            cached = self.provider._cached_prices([ident]).get(ident)
            if cached:
                return {"ec2": cached["Ec2"], "emr": cached["Emr"], "source": "Price List API"}
            try:
                found = self.provider.price_list(instance_type, self.region)
            except EmrError as error:
                self.fallback = error.message
            else:
                if found.get("ec2") is not None and found.get("emr") is not None:
                    self.provider._record("price", [{
                        "Id": ident, "Region": self.region, "InstanceType": instance_type,
                        "Ec2": found["ec2"], "Emr": found["emr"], "Currency": "USD",
                        "Source": "Price List API", "Fetched": now()}])
                    return {"ec2": found["ec2"], "emr": found["emr"], "source": "Price List API"}
        shipped = cost.table_price(self.region, instance_type)
        if shipped is None:
            return None
        return {"ec2": shipped["ec2"], "emr": shipped["emr"],
                "source": f"table {cost.table_date()}"}

    def warnings(self):
        from cloudmesh.emr.api import cost

        said = []
        if self.fallback is not None:
            said.append(f"the AWS Price List API could not be asked ({self.fallback}); "
                        f"prices are from the table shipped with cloudmesh-emr, dated "
                        f"{cost.table_date()}")
        if self.spot_failure is not None:
            said.append(f"spot prices could not be read ({self.spot_failure}); spot "
                        "instances are counted at the on-demand price")
        return said

