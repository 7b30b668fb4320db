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

The subclasses keep the names of moto's classes (``model.Cluster`` is a
``moto.emr.models.Cluster``): moto's serializer finds some members through the class
name (a ``Step``'s StepConfig is its ``config``).

``register(engine)`` makes moto's server route EMR to this model: moto's server
looks a service's backends up as ``moto.<service>.<service>_backends`` (see
``moto.backends.get_backend``), and a backend's URL paths come from its
``_url_module`` (here ``responses.py``, whose handler is our response class).
Only the daemon imports this module.
"""

import contextlib
import importlib.metadata
import math

from moto.core.base_backend import BackendDict
from moto.core.utils import utcnow
from moto.emr import models as moto_models
from moto.emr.exceptions import InvalidCluster, InvalidRequestException, ValidationException
from moto.emr.utils import random_id

from cloudmesh.emr.local import releases

DEFAULT_LOG_URI = "s3://cloudmesh-emr-local-logs/"
ENDED_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
NOT_MODIFIABLE = "A job flow that is shutting down, terminated, or finished may not be modified."


def _spark_version():
    try:
        return importlib.metadata.version("pyspark")
    except importlib.metadata.PackageNotFoundError:
        return None


def invalid_release(label):
    return ValidationException(f"The specified release label {label} is not valid.")


class Clusters(dict):
    """The backend's clusters by id; an unknown id is moto's InvalidCluster.

    EMR rule: an unknown cluster id is ``InvalidRequestException`` ("Cluster id
    'j-X' is not valid.") in every operation (ListSteps, ListInstances, DescribeStep,
    AddJobFlowSteps...); moto indexes a plain dict there and answers HTTP 500.
    """

    def __missing__(self, cluster_id):
        raise InvalidCluster(cluster_id)


class Step(moto_models.Step):
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


class InstanceGroup(moto_models.InstanceGroup):
    """An instance group as EMR keeps it."""

    def __init__(self, *args, **kwargs):
        """EMR rules: a group id is ig-XXXX (moto: i-XXXX, an EC2 instance's prefix); a new
        group is PROVISIONING, not ready (moto: RUNNING and ready)."""
        kwargs.setdefault("instance_group_id", f"ig-{random_id()}")
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


class Instance(moto_models.Instance):
    """An EMR instance: an EC2 instance of the cluster, described as EMR does."""

    def __init__(self, ec2_instance, instance_group, fleet=None):
        """EMR rules: an instance id is ci-XXXX; an instance belongs to a group or a
        fleet; it keeps its DNS names and addresses after it ended.

        moto reads them from the EC2 instance, which loses its public name once
        terminated, and then its serializer drops MasterPublicDnsName and the
        required Instances of DescribeJobFlows. They are kept from the start.
        """
        super().__init__(ec2_instance, instance_group or fleet,
                         instance_fleet_id=fleet.id if fleet else None,
                         instance_id=f"ci-{random_id()}")
        self.fleet = fleet
        self.fleet_market = None  # of a fleet's instance: ON_DEMAND or SPOT capacity
        self.ended = None  # when the instance alone ended (a fleet shrank)
        self.kept = {
            "public_dns_name": ec2_instance.public_dns_name,
            "public_ip_address": ec2_instance.public_ip,
            "private_ip_address": ec2_instance.private_ip,
            "private_dns_name": ec2_instance.private_dns_name,
        }

    @property
    def instance_group_id(self):
        return None if self.fleet else self.instance_group.id

    @property
    def market(self):
        if self.fleet:
            return self.fleet_market or self.fleet.market
        return self.instance_group.market

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
        """EMR rule: an instance has its own state words (moto gives it its group's);
        one that ended alone (its fleet shrank) is TERMINATED with its own end time."""
        group = self.instance_group
        state = getattr(group, "instance_state", "PROVISIONING")
        end = group.end_date_time
        reason = {}
        if self.ended is not None:
            state, end = "TERMINATED", self.ended
            reason = {"Code": "INSTANCE_FAILURE", "Message": "Instance was terminated by a resize"}
        elif state == "TERMINATED":
            reason = {"Code": "CLUSTER_TERMINATED",
                      "Message": "Instance terminated with its cluster"}
        return {
            "State": state,
            "StateChangeReason": reason,
            "Timeline": {
                "CreationDateTime": group.creation_date_time,
                "ReadyDateTime": group.ready_date_time,
                "EndDateTime": end,
            },
        }


FLEET_ROLES = ("MASTER", "CORE", "TASK")


class InstanceFleet:
    """An instance fleet (moto has none): its target and provisioned capacities, the
    instance types it may use, and the state its instances share."""

    def __init__(self, cluster_id, spec):
        self.id = f"if-{random_id()}"
        self.cluster_id = cluster_id
        self.instance_fleet_type = spec.get("InstanceFleetType")
        if self.instance_fleet_type not in FLEET_ROLES:
            raise ValidationException(
                f"InstanceFleetType must be one of {', '.join(FLEET_ROLES)}, "
                f"not {self.instance_fleet_type}")
        self.role = self.instance_fleet_type
        self.name = spec.get("Name") or f"{self.role.title()} fleet"
        configs = spec.get("InstanceTypeConfigs") or []
        if not configs:
            raise ValidationException("An instance fleet needs at least one InstanceTypeConfig.")
        self.instance_type_specifications = [
            {
                "InstanceType": config.get("InstanceType"),
                "WeightedCapacity": int(config.get("WeightedCapacity") or 1),
                **({"BidPrice": config["BidPrice"]} if config.get("BidPrice") else {}),
                **({"BidPriceAsPercentageOfOnDemandPrice":
                    config["BidPriceAsPercentageOfOnDemandPrice"]}
                   if config.get("BidPriceAsPercentageOfOnDemandPrice") else {}),
            }
            for config in configs
        ]
        self.target_on_demand_capacity = int(spec.get("TargetOnDemandCapacity") or 0)
        self.target_spot_capacity = int(spec.get("TargetSpotCapacity") or 0)
        if self.role == "MASTER" and self.target_on_demand_capacity + self.target_spot_capacity not in (1, 3):
            raise ValidationException("The master instance fleet must have a target capacity of 1 "
                                      "(or 3 for high availability).")
        self.launch_specifications = spec.get("LaunchSpecifications")
        self.provisioned_on_demand_capacity = 0
        self.provisioned_spot_capacity = 0
        self.creation_date_time = utcnow()
        self.ready_date_time = None
        self.end_date_time = None
        self.state = "PROVISIONING"
        self.instance_state = "PROVISIONING"
        self.state_change_reason = None

    @property
    def market(self):
        return "SPOT" if self.target_spot_capacity and not self.target_on_demand_capacity \
            else "ON_DEMAND"

    def next_market(self, instances):
        """EMR rule: a fleet meets its on-demand target first, the rest is spot capacity."""
        on_demand = sum(self.weight for i in instances
                        if i.fleet is self and i.ended is None and i.market == "ON_DEMAND")
        return "ON_DEMAND" if on_demand < self.target_on_demand_capacity else "SPOT"

    @property
    def instance_type(self):
        """The type the emulator launches: the first of the fleet's InstanceTypeConfigs."""
        return self.instance_type_specifications[0]["InstanceType"]

    @property
    def weight(self):
        return max(1, self.instance_type_specifications[0]["WeightedCapacity"])

    @property
    def num_instances(self):
        """Instances that meet the target capacity, each counting its WeightedCapacity."""
        target = self.target_on_demand_capacity + self.target_spot_capacity
        return math.ceil(target / self.weight)

    @property
    def status(self):
        """EMR rule: a fleet's reason is CLUSTER_TERMINATED once its cluster ended."""
        message = self.state_change_reason
        return {
            "State": self.state,
            "StateChangeReason": {"Code": "CLUSTER_TERMINATED", "Message": message}
            if message else {},
            "Timeline": {
                "CreationDateTime": self.creation_date_time,
                "ReadyDateTime": self.ready_date_time,
                "EndDateTime": self.end_date_time,
            },
        }

    def provisioned(self, instances):
        """Provisioned capacities from the fleet's live instances, split by market."""
        live = [i for i in instances if i.fleet is self and i.ended is None]
        self.provisioned_spot_capacity = sum(self.weight for i in live if i.market == "SPOT")
        self.provisioned_on_demand_capacity = sum(self.weight for i in live
                                                  if i.market != "SPOT")


class Cluster(moto_models.Cluster):
    """A cluster as EMR keeps it; the engine moves its state."""

    def __init__(self, emr_backend, **kwargs):
        super().__init__(emr_backend, **kwargs)
        self.instance_collection_type = "INSTANCE_GROUP"
        self.instance_fleets = []
        self.policies = {}  # "AutoTerminationPolicy", "ManagedScalingPolicy": as put
        self.requested_subnet_ids = [self.ec2_subnet_id] if self.ec2_subnet_id else []
        self.place()
        self.set_release_details()
        emr_backend.engine_adopt(self)

    def place(self):
        """EMR rule: a cluster runs in one subnet and that subnet's zone.

        The subnet asked for (and its zone), else the default VPC's subnet of the zone
        asked for, else of the region's first zone (moto reports a zone, no subnet).
        """
        from moto.ec2.exceptions import InvalidSubnetIdError

        ec2 = self.emr_backend.ec2_backend
        if self.ec2_subnet_id:
            try:
                self.availability_zone = ec2.get_subnet(self.ec2_subnet_id).availability_zone
            except InvalidSubnetIdError:
                pass  # a subnet moto's EC2 does not hold: kept as asked
            return
        defaults = ec2.get_default_subnets()
        subnet = defaults.get(self.availability_zone) or (
            defaults[min(defaults)] if defaults else None)
        if subnet is not None:
            self.ec2_subnet_id = subnet.id
            self.availability_zone = subnet.availability_zone

    @property
    def ec2_instance_attributes(self):
        """EMR rule: Ec2InstanceAttributes name the subnet and zone, and what was requested."""
        attributes = moto_models.Ec2InstanceAttributes(self)
        attributes.requested_ec2_subnet_ids = self.requested_subnet_ids
        return attributes

    def members(self):
        """The cluster's instance groups and instance fleets."""
        return list(self.instance_groups) + list(self.instance_fleets)

    def member(self, role):
        """The group or fleet of ``role`` (MASTER, CORE), or None."""
        for owner in self.members():
            if owner.role == role:
                return owner
        return None

    @property
    def master_public_dns_name(self):
        """EMR rule: the master node's public DNS name, also once the cluster ended.

        moto reads it from its EC2 instance, which loses it when terminated (and then
        invents one in us-west-1 for clusters without instance groups).
        """
        master = self.member("MASTER")
        for instance in self.ec2_instances:
            if master is not None and instance.instance_group is master and instance.public_dns_name:
                return instance.public_dns_name
        return None

    @property
    def instance_count(self):
        """EMR rule: InstanceCount counts the instances of groups and fleets alike."""
        return sum(int(owner.num_instances or 0) for owner in self.members())

    @property
    def master_instance_type(self):
        """EMR rule: JobFlowInstancesDetail always has MasterInstanceType (moto: KeyError)."""
        master = self.member("MASTER")
        return master.instance_type if master else None

    @property
    def slave_instance_type(self):
        """EMR rule: SlaveInstanceType is the core type, or the master's on a one-node
        cluster (moto: KeyError, an HTTP 500)."""
        core = self.member("CORE")
        return core.instance_type if core else self.master_instance_type

    def set_release_details(self):
        """EMR rule: a cluster reports its release's OS release and Hadoop version.

        OSReleaseLabel is the Amazon Linux release of the release's AMI; HadoopVersion
        (DescribeJobFlows) is the release's Hadoop unless the request named one (moto
        reports nothing, or Hadoop "0.18" as an application).
        """
        entry = releases.get(self.release_label) or {}
        self.os_release_label = entry.get("os_release_label")
        if not self.hadoop_version:
            self.hadoop_version = releases.concise(
                releases.version_of(self.release_label, "Hadoop"))

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
            step = Step(self.id, **spec)
            if level > 1 and step.action_on_failure != "CONTINUE":
                raise ValidationException(
                    f"ActionOnFailure {step.action_on_failure} is not valid for a cluster with "
                    f"StepConcurrencyLevel {level}; use CONTINUE"
                )
            added.append(step)
        self.steps.extend(added)
        return added

    def add_applications(self, applications):
        """EMR rule: each application has the version its release ships.

        The versions come from the release table (concise: "3.5.6", as EMR shows
        them); for a release the table does not know, Spark is the pyspark that runs
        the steps and other applications have no version.
        """
        for app in applications:
            name = app.get("name") or app.get("Name") or None
            version = app.get("version") or app.get("Version") or None
            if name and not version:
                version = releases.concise(releases.version_of(self.release_label, name))
            if name and name.lower() == "spark" and not version:
                version = _spark_version()
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

    def engine_forget_instances(self, cluster):
        """The EC2 instances of a cluster that is not kept end at once."""
        ids = [instance.ec2_instance_id for instance in getattr(cluster, "ec2_instances", [])]
        if ids:
            try:
                self.ec2_backend.terminate_instances(ids)
            except Exception:  # EMR's view is right already
                pass

    def reset(self):
        """moto's reset (POST /moto-api/reset) also forgets the engine's runs of this backend.

        Not under the engine's lock: moto resets under its own backend lock, which the
        engine may be waiting for while it holds its own.
        """
        if self.engine is not None:
            self.engine.forget(list(self.clusters.values()))
        super().reset()

    # ---- operations -------------------------------------------------------------------

    def run_job_flow(self, **kwargs):
        """RunJobFlow: EMR's cluster (see Cluster), under the engine's lock.

        EMR keeps no logs without LogUri; the emulator keeps step logs in its own
        bucket then, so that describe shows where they are.
        """
        with self.lock:
            if kwargs.get("release_label"):
                self.check_release(kwargs["release_label"])
            if not kwargs.get("log_uri"):
                kwargs["log_uri"] = DEFAULT_LOG_URI
            attrs = kwargs["instance_attrs"]
            (
                attrs["emr_managed_master_security_group"],
                attrs["emr_managed_slave_security_group"],
                attrs["service_access_security_group"],
            ) = self._manage_security_groups(**attrs)
            known = set(self.clusters)
            try:
                return Cluster(self, **kwargs)
            except Exception:
                # EMR creates nothing for a refused request; moto's constructor has
                # registered the half-made cluster (and its groups) already
                for cluster_id in set(self.clusters) - known:
                    cluster = dict.pop(self.clusters, cluster_id)
                    for group_id in getattr(cluster, "instance_group_ids", []):
                        self.instance_groups.pop(group_id, None)
                raise

    def add_instance_groups(self, cluster_id, instance_groups):
        """AddInstanceGroups: EMR's groups (see InstanceGroup), under the engine's lock.

        EMR rules: no group is added to a cluster that is shutting down or ended, nor a
        group to a cluster of instance fleets; a group added to a cluster that is
        already up has its own clock (PROVISIONING, BOOTSTRAPPING, RUNNING: see
        Engine.added_member); the answer launches its instances (see responses.py).
        """
        import time

        with self.lock:
            cluster = self.clusters[cluster_id]
            # moto's Cluster constructor adds the groups of MasterInstanceType and
            # SlaveInstanceType before the cluster has a state or fleets
            if getattr(cluster, "state", None) in ENDED_STATES:
                raise ValidationException(NOT_MODIFIABLE)
            if getattr(cluster, "instance_fleets", None):
                raise ValidationException(
                    "Instance fleets and instance groups are mutually exclusive. The EMR "
                    "cluster specified in the request uses instance fleets.")
            added = []
            for spec in instance_groups:
                group = InstanceGroup(cluster_id=cluster_id, **spec)
                self.instance_groups[group.id] = group
                cluster.add_instance_group(group)
                added.append(group)
                if getattr(cluster, "ready_datetime", None) is not None:  # up already
                    group.local_added = time.monotonic()
            return added

    def modify_instance_groups(self, instance_groups):
        """ModifyInstanceGroups: EMR rules. The group takes its new count and is RESIZING
        until the engine has added or ended instances (see Engine.sync_members); the
        MASTER group cannot be resized; an ended cluster cannot be modified; a count
        below 0 is refused."""
        with self.lock:
            for spec in instance_groups:
                group_id = spec.get("instance_group_id")
                group = self.instance_groups.get(group_id)
                if group is None:
                    raise InvalidRequestException(f"Instance group id '{group_id}' is not valid.")
                cluster = self.clusters[group.cluster_id]
                if cluster.state in ENDED_STATES:
                    raise ValidationException(NOT_MODIFIABLE)
                if group.role == "MASTER":
                    raise ValidationException("The master instance group cannot be resized.")
                count = spec.get("instance_count")
                if count is None:
                    continue
                if int(count) < 0:
                    raise ValidationException("InstanceCount must not be negative.")
                group.num_instances = int(count)
                group.state = "RESIZING"

    def run_instances(self, cluster_id, instances, instance_group):
        """The EC2 instances of a group, as EMR instances that keep their names."""
        self.launch(self.clusters[cluster_id], instance_group, int(instances["instance_count"]))

    def launch(self, cluster, owner, count):
        """EMR rule: a group or fleet has its instances, EC2 instances of the cluster's
        subnet, each an EMR instance that keeps its names (see Instance)."""
        if count <= 0:
            return []
        fleet = owner if isinstance(owner, InstanceFleet) else None
        response = self.ec2_backend.run_instances(
            moto_models.EXAMPLE_AMI_ID, count, None, [],
            instance_type=owner.instance_type, is_instance_type_default=False,
            associate_public_ip=True, placement=cluster.availability_zone,
            **({"subnet_id": cluster.ec2_subnet_id} if self.known_subnet(cluster) else {}),
        )
        added = []
        for ec2_instance in response.instances:
            instance = Instance(ec2_instance, None if fleet else owner, fleet=fleet)
            if fleet:
                instance.fleet_market = fleet.next_market(cluster.ec2_instances)
            cluster.add_instance(instance)
            added.append(instance)
        if fleet:
            fleet.provisioned(cluster.ec2_instances)
        return added

    def known_subnet(self, cluster):
        """Whether EC2 holds the cluster's subnet (a subnet it does not is kept as asked)."""
        from moto.ec2.exceptions import InvalidSubnetIdError

        if not cluster.ec2_subnet_id:
            return False
        try:
            self.ec2_backend.get_subnet(cluster.ec2_subnet_id)
        except InvalidSubnetIdError:
            return False
        return True

    def launch_missing(self, cluster):
        """EMR rule: every group has instances, also a cluster described by
        MasterInstanceType/SlaveInstanceType/InstanceCount (moto launches none then)."""
        for group in cluster.instance_groups:
            if not any(i.instance_group is group for i in cluster.ec2_instances):
                self.launch(cluster, group, int(group.num_instances or 0))

    def reconcile(self, cluster, owner):
        """EMR rule: a resized fleet gets or ends instances until it meets its target."""
        live = [i for i in cluster.ec2_instances if i.instance_group is owner and i.ended is None]
        wanted = int(owner.num_instances or 0)
        if len(live) < wanted:
            self.launch(cluster, owner, wanted - len(live))
        for instance in live[wanted:]:
            instance.ended = utcnow()
            try:
                self.ec2_backend.terminate_instances([instance.ec2_instance_id])
            except Exception:  # EMR's view is right already
                pass
        if isinstance(owner, InstanceFleet):
            owner.provisioned(cluster.ec2_instances)

    # ---- instance fleets (moto has none) -------------------------------------------------

    def add_instance_fleet(self, cluster_id, spec, launch=True):
        """AddInstanceFleet / RunJobFlow's InstanceFleets: EMR rules.

        A cluster has instance groups or instance fleets, never both; one fleet per
        type; no fleet is added to a cluster that is shutting down or ended.
        """
        with self.lock:
            cluster = self.clusters[cluster_id]
            if cluster.state in ENDED_STATES:
                raise ValidationException(NOT_MODIFIABLE)
            if cluster.instance_groups:
                raise ValidationException(
                    "Instance fleets and instance groups are mutually exclusive. The EMR "
                    "cluster specified in the request uses instance groups.")
            fleet = InstanceFleet(cluster_id, spec)
            if cluster.member(fleet.role) is not None:
                raise ValidationException(
                    f"The cluster already has an instance fleet of type {fleet.role}.")
            cluster.instance_fleets.append(fleet)
            cluster.instance_collection_type = "INSTANCE_FLEET"
            if launch:
                self.launch(cluster, fleet, fleet.num_instances)
            if cluster.ready_datetime is not None and cluster.state not in ENDED_STATES:
                fleet.state = fleet.instance_state = "RUNNING"
                fleet.ready_date_time = utcnow()
            return fleet

    def list_instance_fleets(self, cluster_id):
        """ListInstanceFleets (moto lacks it): the cluster's fleets, oldest first."""
        return list(self.clusters[cluster_id].instance_fleets)

    def modify_instance_fleet(self, cluster_id, spec):
        """ModifyInstanceFleet (moto lacks it): EMR rules.

        The fleet takes its new target capacities and is RESIZING until the engine has
        added or ended instances to meet them; a master fleet cannot be resized; an
        ended cluster cannot be modified.
        """
        with self.lock:
            cluster = self.clusters[cluster_id]
            if cluster.state in ENDED_STATES:
                raise ValidationException(NOT_MODIFIABLE)
            fleet_id = spec.get("InstanceFleetId")
            fleet = next((f for f in cluster.instance_fleets if f.id == fleet_id), None)
            if fleet is None:
                raise InvalidRequestException(f"Instance fleet id '{fleet_id}' is not valid.")
            if fleet.role == "MASTER":
                raise ValidationException("The master instance fleet cannot be resized.")
            for key, attribute in (("TargetOnDemandCapacity", "target_on_demand_capacity"),
                                   ("TargetSpotCapacity", "target_spot_capacity")):
                if spec.get(key) is not None:
                    setattr(fleet, attribute, int(spec.get(key)))
            fleet.state = "RESIZING"
            return fleet

    def list_instances(self, cluster_id, instance_group_id=None, instance_group_types=None,
                       instance_fleet_id=None, instance_fleet_type=None):
        """ListInstances with EMR's fleet filters (InstanceFleetId, InstanceFleetType)."""
        found = sorted(self.clusters[cluster_id].ec2_instances, key=lambda i: i.id)
        if instance_group_id:
            found = [i for i in found if i.instance_group_id == instance_group_id]
        if instance_group_types:
            found = [i for i in found if not i.fleet and i.instance_group.role in instance_group_types]
        if instance_fleet_id:
            found = [i for i in found if i.instance_fleet_id == instance_fleet_id]
        if instance_fleet_type:
            found = [i for i in found if i.fleet and i.fleet.role == instance_fleet_type]
        return found

    def add_job_flow_steps(self, job_flow_id, steps):
        """AddJobFlowSteps under the engine's lock (see Cluster.add_steps)."""
        with self.lock:
            return super().add_job_flow_steps(job_flow_id, steps)

    def terminate_job_flows(self, job_flow_ids):
        """TerminateJobFlows under the engine's lock (see Cluster.terminate)."""
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

    # ---- release labels ----------------------------------------------------------------

    def check_release(self, release_label):
        """EMR rule: a release label EMR does not know is ValidationException.

        Known: a label of the emulator's release table, or one of moto's list of
        the labels EMR offers in this region (clusters of those run on the
        default release's Spark).
        """
        if releases.get(release_label) or release_label in super().list_release_labels():
            return release_label
        raise invalid_release(release_label)

    def list_release_labels(self, prefix=None, application=None):
        """ListReleaseLabels: the labels of the release table, newest first.

        Filters as EMR's: Prefix ("emr-7") and Application ("Spark@3.5": the
        releases whose Spark version starts with 3.5; the name alone matches any).
        """
        found = releases.labels()
        if prefix:
            found = [label for label in found if label.startswith(prefix)]
        if application:
            name, _, version = str(application).partition("@")
            found = [
                label for label in found
                if releases.version_of(label, name)
                and releases.concise(releases.version_of(label, name)).startswith(version)
            ]
        return found

    def describe_release_label(self, release_label):
        """DescribeReleaseLabel: the release's applications (lowercase names, concise
        versions, as EMR answers) and its Amazon Linux release; unknown: ValidationException.
        """
        entry = releases.get(release_label)
        if entry is None:
            raise invalid_release(release_label)
        return {
            "ReleaseLabel": release_label,
            "Applications": [
                {"Name": name.lower(), "Version": releases.concise(version)}
                for name, version in sorted(entry["applications"].items())
            ],
            "AvailableOSReleases": [{"Label": entry["os_release_label"]}],
        }

    def list_supported_instance_types(self, release_label):
        """EMR rule: the instance types of a known release; unknown: ValidationException.

        moto carries EMR's list of types for most labels; a label of the table that
        moto has no list for uses the list of the nearest label of its line.
        """
        self.check_release(release_label)
        for label in (release_label, releases.same_line(release_label)):
            try:
                return super().list_supported_instance_types(label)
            except (FileNotFoundError, OSError, ValueError, TypeError):
                continue
        raise invalid_release(release_label)

    # ---- policies (stored and answered; the engine acts on them) --------------------------

    def put_cluster_policy(self, cluster_id, kind, policy):
        """Put{AutoTermination,ManagedScaling}Policy: kept with the cluster (moto lacks them)."""
        with self.lock:
            self.describe_cluster(cluster_id).policies[kind] = policy

    def get_cluster_policy(self, cluster_id, kind):
        """Get{AutoTermination,ManagedScaling}Policy: the policy put, or None."""
        return self.describe_cluster(cluster_id).policies.get(kind)

    def remove_cluster_policy(self, cluster_id, kind):
        """Remove{AutoTermination,ManagedScaling}Policy: forget it; no policy is no error."""
        with self.lock:
            self.describe_cluster(cluster_id).policies.pop(kind, None)

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
