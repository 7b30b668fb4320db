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
from cloudmesh.emr.errors import AwsError, Conflict, DatabaseError, EmrError, NotFound, UsageError

CLUSTER_ID = re.compile(r"^j-[A-Za-z0-9]{1,64}$")
RELEASE_LABEL = re.compile(r"^emr-\d+\.\d+\.\d+(-[A-Za-z0-9-]+)?$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
COMMAND_RUNNER = "command-runner.jar"
MASTER_HOME = "/home/hadoop/"
# Spark needs one core for the node manager and at least one for work
MIN_VCPU = 2

COUNT = re.compile(r"^\s*\d+\s*$")

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
            f"'{cluster_id}' is not a cluster id; cluster ids look like j-2AXXXXXXGAPLF "
            "(see 'cms emr list clusters')"
        )
    return cluster_id


def check_bucket(bucket, key):
    if not isinstance(bucket, str) or not BUCKET.match(bucket) or ".." in bucket:
        raise UsageError(
            f"'{bucket}' is not a valid S3 bucket name: 3 to 63 lowercase letters, "
            "digits, dots and hyphens, starting and ending with a letter or digit"
        )
    if not isinstance(key, str) or not key.strip() or len(key.encode()) > 1024:
        raise UsageError(f"'{key}' is not a valid S3 object name (1 to 1024 bytes)")
    return f"s3://{bucket}/{key}"


class Provider:
    """EMR and S3 for one cloud (a cloudmesh.yaml profile, or boto3's own chain)."""

    def __init__(self, cloud=None, settings=None, database=None, clients=None):
        """``database`` and ``clients`` (a dict) may be shared by many Providers of one
        cloud, as the REST service does with one Provider per request."""
        self.settings = settings or Settings.load()
        self.cloud = self.settings.cloud(cloud)
        self.settings.mongo()  # a bad database setting is bad input: say so before calling AWS
        self._database = database
        self._clients = {} if clients is None else clients
        self._endpoint = None
        self.warnings = []
        self.database_error = None

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
                self._clients[service] = session.client(
                    service, endpoint_url=self._endpoint, config=config
                )
        return self._clients[service]

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
        try:
            self.database.record(self.cloud, kind, records, cluster=cluster)
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
        return steps

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
                        f"--release: '{release}' is not a release label EMR knows in "
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
        if not isinstance(name, str) or not name.strip() or len(name) > 256:
            raise UsageError("the cluster NAME must be 1 to 256 characters")
        master = master or self.settings.emr_default("master")
        node = node or self.settings.emr_default("node")
        release = release or self.settings.emr_default("release")
        count = self.settings.emr_default("count") if count is None else count
        if isinstance(count, bool) or not COUNT.match(str(count)) or int(count) < 1:
            raise UsageError(f"--count: '{count}' is not a whole number of at least 1 "
                             "(1 master plus COUNT-1 core nodes)")
        count = int(count)
        if not RELEASE_LABEL.match(str(release)):
            raise UsageError(f"--release: '{release}' is not a release label like emr-7.12.0")
        for option, value in (("--master", master), ("--node", node)):
            if not INSTANCE_TYPE.match(str(value)):
                raise UsageError(f"{option}: '{value}' is not an instance type like m5.xlarge")
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
            raise UsageError(f"'{filename}' is not a file; upload takes a regular file")
        if not os.access(path, os.R_OK):
            raise UsageError(f"'{filename}' is not readable")
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
                        f"bucket '{bucket}' does not exist: create it first "
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

    def _add_step(self, action, cluster_id, name, args):
        check_cluster_id(cluster_id)
        cluster = self._describe(cluster_id)
        state = cluster["Status"]["State"]
        if state not in ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"):
            raise Conflict(
                f"cluster {cluster_id} is {state} and takes no more steps; "
                "start a new one with 'cms emr start NAME'"
            )
        step = {"Name": name, "ActionOnFailure": "CONTINUE",
                "HadoopJarStep": {"Jar": COMMAND_RUNNER, "Args": args}}
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

    def run(self, cluster_id, bucket, key, args=None):
        """A step that runs s3://bucket/key with spark-submit and the given arguments."""
        self.warnings = []
        url = check_bucket(bucket, key)
        args = [str(arg) for arg in (args or [])]
        return self._add_step("run", cluster_id, f"spark-submit {key.rsplit('/', 1)[-1]}",
                              ["spark-submit", url, *args])
