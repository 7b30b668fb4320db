"""Changes to moto's EMR that make it answer as EMR does; applied in the daemon only.

moto is a test double: its clusters are WAITING the moment they exist, its first
step is RUNNING forever, TerminateJobFlows ends a cluster at once, and a few
operations fail with HTTP 500 or are missing. The emulator keeps moto's wire
protocol and data model and changes only what is listed here, each with its
reason. ``install(engine)`` applies them once, in the daemon process, before the
server starts, and ``start_server`` starts moto's server so that a taken port is
reported; only the daemon imports this module (and steps.py, for DEFAULT_LOG_URI).
"""

import functools
import importlib.metadata

DEFAULT_LOG_URI = "s3://cloudmesh-emr-local-logs/"
ENDED_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
NOT_MODIFIABLE = "A job flow that is shutting down, terminated, or finished may not be modified."

_installed = False


def _spark_version():
    try:
        return importlib.metadata.version("pyspark")
    except importlib.metadata.PackageNotFoundError:
        return None


def install(engine):
    """Patch moto's EMR model and responses so that ``engine`` drives the lifecycle."""
    global _installed
    if _installed:
        return
    _installed = True

    from moto.core.responses import ActionResult, PaginatedResult
    from moto.emr import models, responses
    from moto.emr.exceptions import InvalidCluster, InvalidRequestException, ValidationException

    Backend = models.ElasticMapReduceBackend
    Cluster = models.Cluster
    Step = models.Step
    Response = responses.ElasticMapReduceResponse

    def locked(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with engine.lock:
                return function(*args, **kwargs)

        return wrapper

    # 1. An unknown cluster id: AWS answers InvalidRequestException ("Cluster id 'j-X'
    #    is not valid."); moto indexes a dict and fails with KeyError, an HTTP 500
    #    (ListSteps, ListInstances, DescribeStep, AddJobFlowSteps, ...). A dict that
    #    raises moto's own InvalidCluster for a missing key fixes every operation.
    class Clusters(dict):
        def __missing__(self, cluster_id):
            raise InvalidCluster(cluster_id)

    original_backend_init = Backend.__init__

    def backend_init(self, *args, **kwargs):
        original_backend_init(self, *args, **kwargs)
        self.clusters = Clusters(self.clusters)

    Backend.__init__ = backend_init

    # 2. New clusters start in STARTING; moto runs "bootstrap actions" inside the
    #    constructor and leaves the cluster WAITING (or TERMINATED) at once.
    #    The engine moves it from here. Run under the engine's lock.
    original_cluster_init = Cluster.__init__

    def cluster_init(self, *args, **kwargs):
        original_cluster_init(self, *args, **kwargs)
        engine.adopt(self)

    Cluster.__init__ = cluster_init
    Cluster.run_bootstrap_actions = lambda self: None

    # RunJobFlow goes on after the constructor (instances are launched in moto's EC2,
    # which can take longer than a transition on first use): STARTING is timed from
    # the moment the answer leaves, so a client always sees it.
    original_run_job_flow_response = Response.run_job_flow

    def run_job_flow_response(self):
        result = original_run_job_flow_response(self)
        with engine.lock:
            cluster = self.backend.clusters.get(result.result.get("JobFlowId"))
            if cluster is not None and cluster.state == "STARTING":
                engine.adopt(cluster)
        return result

    Response.run_job_flow = run_job_flow_response

    # 3. New steps are PENDING until the engine starts them (moto makes the first
    #    one RUNNING and the cluster RUNNING); steps cannot be added to a cluster
    #    that is shutting down; with StepConcurrencyLevel > 1 EMR refuses
    #    CANCEL_AND_WAIT and TERMINATE_CLUSTER.
    def add_steps(self, steps):
        if getattr(self, "state", None) in ENDED_STATES:
            raise ValidationException(NOT_MODIFIABLE)
        level = int(getattr(self, "step_concurrency_level", 1) or 1)
        added = []
        for spec in steps:
            step = Step(state="PENDING", **spec)
            step.local_cluster = self.id  # for the engine's log
            if level > 1 and step.action_on_failure != "CONTINUE":
                raise ValidationException(
                    f"ActionOnFailure {step.action_on_failure} is not valid for a cluster with "
                    f"StepConcurrencyLevel {level}; use CONTINUE"
                )
            added.append(step)
        self.steps.extend(added)
        return added

    Cluster.add_steps = add_steps
    Step.start = lambda self: None  # moto's constructor "starts" the first step

    # 4. TerminateJobFlows: TERMINATING, then TERMINATED once running steps have
    #    stopped (moto jumps to TERMINATED and leaves the steps as they were).
    Cluster.terminate = lambda self: engine.terminate(self)

    # 5. Status shapes as EMR fills them: the reason Code, FailureDetails of a failed
    #    step, instances with their own state (moto gives them their group's state,
    #    which uses different words).
    def cluster_status(self):
        reason = {}
        if getattr(self, "state_change_code", None):
            reason["Code"] = self.state_change_code
        if getattr(self, "last_state_change_reason", None):
            reason["Message"] = self.last_state_change_reason
        return {
            "State": self.state,
            "StateChangeReason": reason,
            "Timeline": {
                "CreationDateTime": self.creation_datetime,
                "ReadyDateTime": self.ready_datetime,
                "EndDateTime": self.end_datetime,
            },
        }

    def step_status(self):
        message = getattr(self, "last_state_change_reason", None)
        return {
            "State": self.state,
            "StateChangeReason": {"Message": message} if message else {},
            "FailureDetails": getattr(self, "failure_details", None),
            "Timeline": {
                "CreationDateTime": self.creation_date_time,
                "StartDateTime": self.start_date_time,
                "EndDateTime": self.end_date_time,
            },
        }

    def group_status(self):
        message = getattr(self, "state_change_reason", None)
        reason = {"Code": "CLUSTER_TERMINATED", "Message": message} if message else {}
        return {
            "State": self.state,
            "StateChangeReason": reason,
            "Timeline": {
                "CreationDateTime": self.creation_date_time,
                "ReadyDateTime": self.ready_date_time,
                "EndDateTime": self.end_date_time,
            },
        }

    def instance_status(self):
        group = self.instance_group
        state = getattr(group, "instance_state", "PROVISIONING")
        reason = {}
        if state == "TERMINATED":
            reason = {"Code": "CLUSTER_TERMINATED",
                      "Message": "Instance terminated with its cluster"}
        return {
            "State": state,
            "StateChangeReason": reason,
            "Timeline": {
                "CreationDateTime": group.creation_date_time,
                "ReadyDateTime": group.ready_date_time,
                "EndDateTime": group.end_date_time,
            },
        }

    Cluster.status = property(cluster_status)
    Step.status = property(step_status)
    models.InstanceGroup.status = property(group_status)
    models.Instance.status = property(instance_status)

    # 6. Instance groups start PROVISIONING, not RUNNING and ready (the engine
    #    moves them with their cluster).
    original_group_init = models.InstanceGroup.__init__

    def group_init(self, *args, **kwargs):
        original_group_init(self, *args, **kwargs)
        self.state = "PROVISIONING"
        self.instance_state = "PROVISIONING"
        self.ready_date_time = None

    models.InstanceGroup.__init__ = group_init

    # 7. Applications: moto's default (no Applications given) is a Hadoop entry in a
    #    key case that its own reader misses, so it has no name; Spark gets the
    #    version of the pyspark that runs the steps, which is what the user gets.
    def add_applications(self, applications):
        spark = _spark_version()
        for app in applications:
            name = app.get("name") or app.get("Name") or None
            version = app.get("version") or app.get("Version") or None
            if name and name.lower() == "spark" and not version:
                version = spark
            self.applications.append(
                models.Application(
                    name=name,
                    version=version,
                    args=app.get("args") or app.get("Args") or [],
                    additional_info=app.get("additional_info") or app.get("AdditionalInfo") or {},
                )
            )

    Cluster.add_applications = add_applications

    # 8. RunJobFlow without LogUri: the emulator keeps step logs in its own bucket
    #    (EMR would keep none), so that describe shows where they are.
    original_run_job_flow = Backend.run_job_flow

    def run_job_flow(self, **kwargs):
        if not kwargs.get("log_uri"):
            kwargs["log_uri"] = DEFAULT_LOG_URI
        return original_run_job_flow(self, **kwargs)

    Backend.run_job_flow = locked(run_job_flow)

    # 9. DescribeStep with an unknown step id: AWS answers InvalidRequestException;
    #    moto answers an empty Step.
    def describe_step(self, cluster_id, step_id):
        for step in self.clusters[cluster_id].steps:
            if step.id == step_id:
                return step
        raise InvalidRequestException(f"Step id '{step_id}' is not valid.")

    Backend.describe_step = describe_step

    # 10. ModifyCluster: EMR refuses an ended cluster and a level outside 1..256.
    original_modify_cluster = Backend.modify_cluster

    def modify_cluster(self, cluster_id, step_concurrency_level):
        cluster = self.clusters[cluster_id]
        if step_concurrency_level is None:
            return cluster
        if cluster.state in ENDED_STATES:
            raise ValidationException(NOT_MODIFIABLE)
        try:
            level = int(step_concurrency_level)
        except (TypeError, ValueError):
            level = 0
        if not 1 <= level <= 256:
            raise ValidationException("StepConcurrencyLevel must be between 1 and 256.")
        return original_modify_cluster(self, cluster_id, level)

    Backend.modify_cluster = locked(modify_cluster)

    # 11. Mutations take the engine's lock, so that a request and the engine never
    #     interleave on one cluster.
    Backend.add_job_flow_steps = locked(Backend.add_job_flow_steps)
    Backend.terminate_job_flows = locked(Backend.terminate_job_flows)
    Backend.add_instance_groups = locked(Backend.add_instance_groups)

    # 12. ListInstances ignores its InstanceStates filter in moto.
    def list_instances(self):
        instances = self.backend.list_instances(
            self._get_param("ClusterId"),
            instance_group_id=self._get_param("InstanceGroupId"),
            instance_group_types=self._get_param("InstanceGroupTypes"),
        )
        states = self._get_param("InstanceStates") or []
        if states:
            instances = [i for i in instances if i.status["State"] in states]
        return PaginatedResult({"Instances": instances})

    Response.list_instances = list_instances

    # 13. CancelSteps does not exist in moto: PENDING steps are cancelled, RUNNING
    #     ones stopped (EMR 5.28+), each answered in CancelStepsInfoList.
    def cancel_steps(self):
        cluster = self.backend.describe_cluster(self._get_param("ClusterId"))
        infos = engine.cancel_steps(
            cluster,
            self._get_param("StepIds", []) or [],
            self._get_param("StepCancellationOption") or "SEND_INTERRUPT",
        )
        return ActionResult({"CancelStepsInfoList": infos})

    Response.cancel_steps = cancel_steps

    # 15. ListSupportedInstanceTypes with a release label moto has no table for fails
    #     with FileNotFoundError, an HTTP 500; EMR answers ValidationException.
    original_supported = Backend.list_supported_instance_types

    def list_supported_instance_types(self, release_label):
        try:
            return original_supported(self, release_label)
        except (FileNotFoundError, OSError, ValueError):
            raise ValidationException(f"The release label {release_label} is not valid.") from None

    Backend.list_supported_instance_types = list_supported_instance_types


def start_server(host, port):
    """moto's ThreadedMotoServer on ``host:port``, started: (server, None) or (None, error).

    14. ThreadedMotoServer binds in its thread and its start() waits for an event
        that is never set when binding fails (port taken): the daemon would hang.
        The entry point is wrapped to report the error and release the wait.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    failure = []
    entry = server._server_entry

    def guarded_entry():
        try:
            entry()
        except BaseException as error:  # werkzeug exits (SystemExit) when the port is taken
            failure.append(error if str(error) not in ("", "1") else "the port is in use")
            server._server_ready_event.set()

    server._server_entry = guarded_entry
    server.start()
    if failure:
        return None, failure[0]
    return server, None
