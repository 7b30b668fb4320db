"""The emulator's EMR model: moto's EMR backend, subclassed where EMR behaves otherwise.

moto builds each service as a model (a backend holding state, one per account and
region, in a ``BackendDict``) and responses (the wire). This module is the model
of the emulator: ``EmulatorBackend`` is a subclass of moto's
``ElasticMapReduceBackend`` and its clusters, steps, instance groups and instances
are subclasses of moto's. Every place where EMR differs from moto's test double is
one method here, and its docstring names the EMR rule it follows. What moves
states over time (STARTING -> ... -> WAITING, steps running) is the lifecycle
engine (``engine.py``); the operations moto lacks or answers wrongly on the wire
are in ``responses.py``.

``register(engine)`` makes moto's server route EMR to this model: moto's server
looks a service's backends up as ``moto.<service>.<service>_backends`` (see
``moto.backends.get_backend``), and a backend's URL paths come from its
``_url_module`` (here ``responses.py``, whose handler is our response class).
Only the daemon imports this module.
"""

import contextlib
import importlib.metadata

from moto.core.base_backend import BackendDict
from moto.core.utils import utcnow
from moto.emr import models as moto_models
from moto.emr.exceptions import InvalidCluster, InvalidRequestException, ValidationException

DEFAULT_LOG_URI = "s3://cloudmesh-emr-local-logs/"
ENDED_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
NOT_MODIFIABLE = "A job flow that is shutting down, terminated, or finished may not be modified."


def _spark_version():
    try:
        return importlib.metadata.version("pyspark")
    except importlib.metadata.PackageNotFoundError:
        return None


class Clusters(dict):
    """The backend's clusters by id; an unknown id is moto's InvalidCluster.

    EMR rule: an unknown cluster id is ``InvalidRequestException`` ("Cluster id
    'j-X' is not valid.") in every operation (ListSteps, ListInstances, DescribeStep,
    AddJobFlowSteps...); moto indexes a plain dict there and answers HTTP 500.
    """

    def __missing__(self, cluster_id):
        raise InvalidCluster(cluster_id)


class EmulatedStep(moto_models.Step):
    """A step as EMR keeps it."""

    def __init__(self, cluster_id, **spec):
        super().__init__(state="PENDING", **spec)
        self.local_cluster = cluster_id  # named in the engine's log
        self.failure_details = None
        self.last_state_change_reason = None

    def start(self):
        """EMR rule: a new step is PENDING until the cluster starts it (moto starts the first)."""

    @property
    def status(self):
        """EMR rule: StepStatus holds FailureDetails of a failed step, no empty reason."""
        message = self.last_state_change_reason
        return {
            "State": self.state,
            "StateChangeReason": {"Message": message} if message else {},
            "FailureDetails": self.failure_details,
            "Timeline": {
                "CreationDateTime": self.creation_date_time,
                "StartDateTime": self.start_date_time,
                "EndDateTime": self.end_date_time,
            },
        }


class EmulatedGroup(moto_models.InstanceGroup):
    """An instance group as EMR keeps it."""

    def __init__(self, *args, **kwargs):
        """EMR rule: a new group is PROVISIONING, not ready (moto: RUNNING and ready)."""
        super().__init__(*args, **kwargs)
        self.state = "PROVISIONING"
        self.instance_state = "PROVISIONING"
        self.ready_date_time = None
        self.state_change_reason = None

    @property
    def status(self):
        """EMR rule: a group's reason is CLUSTER_TERMINATED once its cluster ended, else none."""
        message = self.state_change_reason
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


class EmulatedInstance(moto_models.Instance):
    """An EMR instance: an EC2 instance of the cluster, described as EMR does."""

    def __init__(self, ec2_instance, instance_group, **kwargs):
        """EMR rule: an instance keeps its DNS names and addresses after it ended.

        moto reads them from the EC2 instance, which loses its public name once
        terminated, and then its serializer drops MasterPublicDnsName and the
        required Instances of DescribeJobFlows. They are kept from the start.
        """
        super().__init__(ec2_instance, instance_group, **kwargs)
        self.kept = {
            "public_dns_name": ec2_instance.public_dns_name,
            "public_ip_address": ec2_instance.public_ip,
            "private_ip_address": ec2_instance.private_ip,
            "private_dns_name": ec2_instance.private_dns_name,
        }

    @property
    def public_dns_name(self):
        return self.kept["public_dns_name"]

    @property
    def public_ip_address(self):
        return self.kept["public_ip_address"]

    @property
    def private_ip_address(self):
        return self.kept["private_ip_address"]

    @property
    def private_dns_name(self):
        return self.kept["private_dns_name"]

    @property
    def status(self):
        """EMR rule: an instance has its own state words (moto gives it its group's)."""
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


class EmulatedCluster(moto_models.Cluster):
    """A cluster as EMR keeps it; the engine moves its state."""

    def __init__(self, emr_backend, **kwargs):
        super().__init__(emr_backend, **kwargs)
        emr_backend.engine_adopt(self)

    def start_cluster(self):
        """EMR rule: a new cluster is STARTING, without a ReadyDateTime."""
        self.state = "STARTING"
        self.start_datetime = utcnow()

    def run_bootstrap_actions(self):
        """EMR rule: bootstrapping takes time; the engine does it (moto: WAITING at once)."""

    def terminate(self):
        """EMR rule: TERMINATING, then TERMINATED once running steps stopped (moto: at once)."""
        self.emr_backend.engine.terminate(self)

    def add_steps(self, steps):
        """EMR rules for AddJobFlowSteps.

        New steps are PENDING until the engine starts them (moto makes the first one
        RUNNING and the cluster RUNNING); a cluster that is shutting down or ended
        takes no step; with StepConcurrencyLevel > 1 only ActionOnFailure CONTINUE
        is allowed.
        """
        if getattr(self, "state", None) in ENDED_STATES:
            raise ValidationException(NOT_MODIFIABLE)
        level = int(getattr(self, "step_concurrency_level", 1) or 1)
        added = []
        for spec in steps:
            step = EmulatedStep(self.id, **spec)
            if level > 1 and step.action_on_failure != "CONTINUE":
                raise ValidationException(
                    f"ActionOnFailure {step.action_on_failure} is not valid for a cluster with "
                    f"StepConcurrencyLevel {level}; use CONTINUE"
                )
            added.append(step)
        self.steps.extend(added)
        return added

    def add_applications(self, applications):
        """EMR rule: an application without a version gets the release's version.

        moto keeps the request's key case wrong for its default (Hadoop without a
        name); Spark gets the version of the pyspark that runs the steps.
        """
        spark = _spark_version()
        for app in applications:
            name = app.get("name") or app.get("Name") or None
            version = app.get("version") or app.get("Version") or None
            if name and name.lower() == "spark" and not version:
                version = spark
            self.applications.append(
                moto_models.Application(
                    name=name,
                    version=version,
                    args=app.get("args") or app.get("Args") or [],
                    additional_info=app.get("additional_info") or app.get("AdditionalInfo") or {},
                )
            )

    @property
    def status(self):
        """EMR rule: ClusterStatus holds the reason's Code (USER_REQUEST, STEP_FAILURE...)."""
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


class EmulatorBackend(moto_models.ElasticMapReduceBackend):
    """EMR of one account and region, with EMR's rules; see the module's docstring."""

    engine = None  # the lifecycle engine, set by register()

    def __init__(self, region_name, account_id):
        super().__init__(region_name, account_id)
        self.clusters = Clusters()

    @property
    def _url_module(self):
        """moto's server takes a backend's URL paths from here: our responses."""
        from cloudmesh.emr.local import responses

        return responses

    @property
    def lock(self):
        engine = type(self).engine
        return engine.lock if engine is not None else contextlib.nullcontext()

    def engine_adopt(self, cluster):
        if self.engine is not None:
            self.engine.adopt(cluster)

    def reset(self):
        """moto's reset (POST /moto-api/reset) also forgets the engine's runs of this backend."""
        with self.lock:
            if self.engine is not None:
                self.engine.forget(self.clusters.values())
            super().reset()

    # ---- operations -------------------------------------------------------------------

    def run_job_flow(self, **kwargs):
        """RunJobFlow: EMR's cluster (see EmulatedCluster), under the engine's lock.

        EMR keeps no logs without LogUri; the emulator keeps step logs in its own
        bucket then, so that describe shows where they are.
        """
        with self.lock:
            if not kwargs.get("log_uri"):
                kwargs["log_uri"] = DEFAULT_LOG_URI
            attrs = kwargs["instance_attrs"]
            (
                attrs["emr_managed_master_security_group"],
                attrs["emr_managed_slave_security_group"],
                attrs["service_access_security_group"],
            ) = self._manage_security_groups(**attrs)
            return EmulatedCluster(self, **kwargs)

    def add_instance_groups(self, cluster_id, instance_groups):
        """AddInstanceGroups: EMR's groups (see EmulatedGroup), under the engine's lock."""
        with self.lock:
            cluster = self.clusters[cluster_id]
            added = []
            for spec in instance_groups:
                group = EmulatedGroup(cluster_id=cluster_id, **spec)
                self.instance_groups[group.id] = group
                cluster.add_instance_group(group)
                added.append(group)
            return added

    def run_instances(self, cluster_id, instances, instance_group):
        """The EC2 instances of a group, as EMR instances that keep their names."""
        cluster = self.clusters[cluster_id]
        instances["is_instance_type_default"] = not instances.get("instance_type")
        response = self.ec2_backend.run_instances(
            moto_models.EXAMPLE_AMI_ID, instances["instance_count"], None, [], **instances
        )
        for ec2_instance in response.instances:
            cluster.add_instance(EmulatedInstance(ec2_instance, instance_group))

    def add_job_flow_steps(self, job_flow_id, steps):
        """AddJobFlowSteps under the engine's lock (see EmulatedCluster.add_steps)."""
        with self.lock:
            return super().add_job_flow_steps(job_flow_id, steps)

    def terminate_job_flows(self, job_flow_ids):
        """TerminateJobFlows under the engine's lock (see EmulatedCluster.terminate)."""
        with self.lock:
            return super().terminate_job_flows(job_flow_ids)

    def describe_step(self, cluster_id, step_id):
        """EMR rule: an unknown step id is InvalidRequestException (moto: an empty Step)."""
        for step in self.clusters[cluster_id].steps:
            if step.id == step_id:
                return step
        raise InvalidRequestException(f"Step id '{step_id}' is not valid.")

    def modify_cluster(self, cluster_id, step_concurrency_level):
        """EMR rule: ModifyCluster refuses an ended cluster and a level outside 1..256."""
        with self.lock:
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
            return super().modify_cluster(cluster_id, level)

    def list_supported_instance_types(self, release_label):
        """EMR rule: an unknown release label is ValidationException (moto: HTTP 500)."""
        try:
            return super().list_supported_instance_types(release_label)
        except (FileNotFoundError, OSError, ValueError):
            raise ValidationException(f"The release label {release_label} is not valid.") from None

    def cancel_steps(self, cluster_id, step_ids, option):
        """CancelSteps (moto lacks it): see Engine.cancel_steps for EMR's rules."""
        cluster = self.describe_cluster(cluster_id)
        return self.engine.cancel_steps(cluster, step_ids, option or "SEND_INTERRUPT")


emulator_backends = BackendDict(EmulatorBackend, "emr")


def register(engine):
    """Make moto's server answer EMR from ``emulator_backends``, moved by ``engine``.

    moto's server finds a service's backends as ``moto.emr.emr_backends``
    (``moto.backends.get_backend``); moto's own EMR CloudFormation models read
    ``moto.emr.models.emr_backends``. Both name ours from here on.
    """
    import moto.emr

    EmulatorBackend.engine = engine
    moto.emr.emr_backends = emulator_backends
    moto_models.emr_backends = emulator_backends


def backends():
    """Every EmulatorBackend that exists now (a copy: requests may add more meanwhile)."""
    return [
        backend
        for regions in list(emulator_backends.values())
        for backend in list(regions.values())
    ]
