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
from cloudmesh.emr.errors import (
    AwsError, Conflict, DatabaseError, EmrError, NotFound, UsageError, shorten, undecodable,
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


def utc(value):
    """Records with every datetime turned into a timezone-aware UTC datetime."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc)
    if isinstance(value, dict):
        return {key: utc(item) for key, item in value.items() if key != "ResponseMetadata"}
    if isinstance(value, list):
        return [utc(item) for item in value]
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
        self._clients = {} if clients is None else clients
        self._endpoint = None
        self.warnings = []
        self.database_error = None
        self.journaled = 0  # records the database could not take, kept in the journal
        self.journal_error = None

    # ---- plumbing -------------------------------------------------------------------

    @property
    def database(self):
        if self._database is None:
            from cloudmesh.emr.database import Database

            self._database = Database(self.settings)
        return self._database

    def client(self, service):
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            session_options, self._endpoint = self.settings.boto_options(self.cloud)
            control = sys.modules.get("cloudmesh.emr.local.control")
            if control is not None:  # a lost daemon.json rebuilt, or a stale one removed
                self.warnings.extend(control.take_warnings())
            session = boto3.session.Session(**session_options)
            config = Config(
                retries={"mode": "standard", "max_attempts": 4},
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path"} if self._endpoint else None,
            )
            with self._aws(f"connect to {service}"):
                client = session.client(service, endpoint_url=self._endpoint, config=config)
            self._check_endpoint(client.meta.endpoint_url)
            self._clients[service] = client
        return self._clients[service]

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
        from boto3.exceptions import S3UploadFailedError

        try:
            yield
        except EmrError:
            raise
        except S3UploadFailedError as error:  # the transfer manager wraps AWS's answer
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
        return AwsError(f"cannot {what}: {code}: {message}")

    def _record(self, kind, records, cluster=None):
        """Record in the database; when it cannot take them, the database journals them
        (``self.journaled`` counts those, ``self.journal_error`` says why) and only a
        journal that cannot be written either is ``self.database_error``.

        ``records`` are the ones the caller returns: secret properties are masked here
        first, in place, so neither the database, the journal nor any output sees them."""
        from cloudmesh.emr.database import Journaled

        mask(records)
        try:
            self.database.record(self.cloud, kind, records, cluster=cluster)
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

    def list_clusters(self, status=None):
        states = vocabulary.translate("cluster status", status)
        query = {"ClusterStates": states} if states else {}
        clusters = self._pages("list_clusters", "Clusters", "list clusters", **query)
        if states:  # some endpoints ignore the filter: check it here too
            clusters = [c for c in clusters if c["Status"]["State"] in states]
        clusters = newest_first(utc(clusters))
        self._record("cluster", clusters)
        return clusters

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
                    raise UsageError(
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
                raise UsageError(f"{option}: {name} is not supported by {release} in "
                                 f"{self.region}{hint}")
            if int(item.get("VCPU") or 0) < MIN_VCPU:
                raise UsageError(
                    f"{option}: {name} has {item.get('VCPU')} vCPU; Spark needs at least "
                    f"{MIN_VCPU} (one for the node manager, one for work): try m5.xlarge"
                )

    def start(self, name, master=None, node=None, count=None, release=None):
        """Create a Spark cluster with run_job_flow; return the action record."""
        self.warnings = []
        check_text("NAME", name)
        if not isinstance(name, str) or not name.strip() or len(name) > 256:
            raise UsageError("the cluster NAME must be 1 to 256 characters")
        master = master or self.settings.emr_default("master")
        node = node or self.settings.emr_default("node")
        release = release or self.settings.emr_default("release")
        count = self.settings.emr_default("count") if count is None else count
        if isinstance(count, bool) or not COUNT.match(str(count)) or int(count) < 1:
            raise UsageError(f"--count: '{shorten(count)}' is not a whole number of at least 1 "
                             "(1 master plus COUNT-1 core nodes)")
        count = int(count)
        if not RELEASE_LABEL.match(str(release)):
            raise UsageError(f"--release: '{shorten(release)}' is not a release label like emr-7.12.0")
        for option, value in (("--master", master), ("--node", node)):
            if not INSTANCE_TYPE.match(str(value)):
                raise UsageError(f"{option}: '{shorten(value)}' is not an instance type like m5.xlarge")
        if count == 1:
            self.warnings.append(
                "--count=1: the cluster has no core nodes; Spark runs on the master alone"
            )
        wanted = [("--master", master)] + ([("--node", node)] if count > 1 else [])
        self._check_instance_types(release, wanted)

        groups = [{"Name": "Master", "InstanceRole": "MASTER", "Market": "ON_DEMAND",
                   "InstanceType": master, "InstanceCount": 1}]
        if count > 1:
            groups.append({"Name": "Core", "InstanceRole": "CORE", "Market": "ON_DEMAND",
                           "InstanceType": node, "InstanceCount": count - 1})
        request = {
            "Name": name,
            "ReleaseLabel": release,
            "Applications": [{"Name": "Spark"}, {"Name": "Hadoop"}],
            "Instances": {"InstanceGroups": groups, "KeepJobFlowAliveWhenNoSteps": True,
                          "TerminationProtected": False},
            "JobFlowRole": "EMR_EC2_DefaultRole",
            "ServiceRole": "EMR_DefaultRole",
            "VisibleToAllUsers": True,
        }
        log_uri = self.settings.emr_default("loguri")
        if log_uri:
            request["LogUri"] = log_uri
        asked = {"Name": name, "ReleaseLabel": release, "Master": master, "Node": node,
                 "Count": count, **({"LogUri": log_uri} if log_uri else {})}
        emr = self.client("emr")
        answer = self._ask("start", name, f"start cluster {name}",
                           lambda: emr.run_job_flow(**request), request=asked)
        cluster_id = answer["JobFlowId"]
        return self._action("start", cluster_id, cluster=cluster_id, response=answer,
                            request=asked)

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

    def _add_step(self, action, cluster_id, name, args, on_failure="CONTINUE", jar=COMMAND_RUNNER):
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
        emr = self.client("emr")
        answer = self._ask(action, cluster_id, f"add a step to {cluster_id}",
                           lambda: emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step]),
                           cluster=cluster_id, request=step)
        step_id = answer["StepIds"][0]
        return self._action(action, step_id, cluster=cluster_id, request=step, response=answer)

    def copy(self, cluster_id, bucket, key):
        """A step that copies s3://bucket/key into /home/hadoop/ on the master node."""
        self.warnings = []
        url = check_bucket(bucket, key)
        return self._add_step("copy", cluster_id, f"copy {url}",
                              ["aws", "s3", "cp", url, MASTER_HOME])

    def run(self, cluster_id, bucket, key, args=None, main_class=None, name=None,
            on_failure=None):
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
                              [*command, url, *args], on_failure=on_failure)

    def stream(self, cluster_id, mapper, reducer, inputs, output, name=None, on_failure=None):
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
                              on_failure=on_failure)

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


def step_name(name, default):
    if name is None:
        return default
    if not str(name).strip() or len(str(name)) > 256:
        raise UsageError("--name: a step name is 1 to 256 characters")
    return str(name)


def shown(value, most=60):
    text = " ".join(str(value).split())
    return text if len(text) <= most else text[: most - 3] + "..."


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
