"""The emulator's EMR wire: moto's EMR responses, subclassed where EMR answers otherwise.

``EmulatorResponse`` answers from the emulator's model (``model.emulator_backends``)
and adds the operations moto lacks or answers wrongly; each is one method whose
docstring names the EMR rule. ``url_bases`` and ``url_paths`` are what moto's
server reads from a backend's URL module (``EmulatorBackend._url_module``) to route
EMR requests here.
"""

from moto.core.responses import ActionResult, EmptyResult, PaginatedResult
from moto.emr.exceptions import ValidationException
from moto.emr.responses import ElasticMapReduceResponse
from moto.emr.urls import url_bases  # noqa: F401  (the same hosts as moto's EMR)

from cloudmesh.emr.local import model, releases

POLICIES = ("AutoTerminationPolicy", "ManagedScalingPolicy")


class EmulatorResponse(ElasticMapReduceResponse):
    """EMR's answers, from the emulator's model."""

    @property
    def backend(self):
        return model.emulator_backends[self.current_account][self.region]

    def run_job_flow(self):
        """RunJobFlow: STARTING is timed from the moment the answer leaves.

        moto goes on after the cluster exists (applications, instance groups, EC2
        instances, which can take longer than a transition on first use); the engine
        restarts the cluster's clock now, so that a client always sees STARTING.
        """
        fleets = self._get_param("Instances.InstanceFleets") or []
        if fleets and self._get_param("Instances.InstanceGroups"):
            raise ValidationException(
                "Instance fleets and instance groups are mutually exclusive.")
        roles = [model.InstanceFleet(None, spec).role for spec in fleets]  # validates each
        if len(set(roles)) != len(roles):
            raise ValidationException("A cluster has at most one instance fleet of each type.")
        backend = self.backend
        known = set(backend.clusters)
        try:
            result = super().run_job_flow()
        except Exception:
            # EMR creates nothing for a refused request (e.g. a MASTER group of 2):
            # moto refuses a group after the cluster exists
            with backend.lock:
                for cluster_id in set(backend.clusters) - known:
                    cluster = dict.pop(backend.clusters, cluster_id)
                    for group_id in getattr(cluster, "instance_group_ids", []):
                        backend.instance_groups.pop(group_id, None)
                    backend.engine_forget_instances(cluster)
            raise
        with backend.lock:
            cluster = backend.clusters.get(result.result.get("JobFlowId"))
            if cluster is None:
                return result
            for spec in fleets:
                backend.add_instance_fleet(cluster.id, spec)
            backend.launch_missing(cluster)
            if not self._get_param("Applications"):
                self.default_applications(cluster)
            for kind in POLICIES:
                if self._get_param(kind):
                    cluster.policies[kind] = self._get_param(kind)
            if cluster.state == "STARTING":
                backend.engine_adopt(cluster)
        return result

    @staticmethod
    def default_applications(cluster):
        """EMR rule: without Applications, EMR installs its default applications, in
        the versions of the release (moto: Hadoop "0.18")."""
        cluster.applications = []
        cluster.add_applications([{"Name": name} for name in releases.default_applications()])

    def describe_release_label(self):
        """DescribeReleaseLabel (moto lacks it): from the release table."""
        return ActionResult(self.backend.describe_release_label(self._get_param("ReleaseLabel")))

    def list_release_labels(self):
        """ListReleaseLabels with EMR's Prefix and Application filters and paging."""
        filters = self._get_param("Filters") or {}
        labels = self.backend.list_release_labels(filters.get("Prefix"), filters.get("Application"))
        start = int(self._get_param("NextToken") or 0)
        size = int(self._get_param("MaxResults") or len(labels) or 1)
        page = labels[start:start + size]
        result = {"ReleaseLabels": page}
        if start + size < len(labels):
            result["NextToken"] = str(start + size)
        return ActionResult(result)

    def put_auto_termination_policy(self):
        """PutAutoTerminationPolicy (moto lacks it): kept with the cluster."""
        return self._put_policy("AutoTerminationPolicy")

    def get_auto_termination_policy(self):
        """GetAutoTerminationPolicy (moto lacks it)."""
        return self._get_policy("AutoTerminationPolicy")

    def remove_auto_termination_policy(self):
        """RemoveAutoTerminationPolicy (moto lacks it)."""
        return self._remove_policy("AutoTerminationPolicy")

    def put_managed_scaling_policy(self):
        """PutManagedScalingPolicy (moto lacks it): kept with the cluster."""
        return self._put_policy("ManagedScalingPolicy")

    def get_managed_scaling_policy(self):
        """GetManagedScalingPolicy (moto lacks it)."""
        return self._get_policy("ManagedScalingPolicy")

    def remove_managed_scaling_policy(self):
        """RemoveManagedScalingPolicy (moto lacks it)."""
        return self._remove_policy("ManagedScalingPolicy")

    def _put_policy(self, kind):
        self.backend.put_cluster_policy(self._get_param("ClusterId"), kind, self._get_param(kind))
        return EmptyResult()

    def _get_policy(self, kind):
        policy = self.backend.get_cluster_policy(self._get_param("ClusterId"), kind)
        return ActionResult({kind: policy} if policy else {})

    def _remove_policy(self, kind):
        self.backend.remove_cluster_policy(self._get_param("ClusterId"), kind)
        return EmptyResult()

    def add_instance_groups(self):
        """EMR rule: AddInstanceGroups answers the new groups' ids (moto: an empty answer)."""
        cluster_id = self._get_param("JobFlowId")
        groups = self.backend.add_instance_groups(cluster_id,
                                                  self._get_param("InstanceGroups", []))
        cluster = self.backend.describe_cluster(cluster_id)
        for group, spec in zip(groups, self._get_param("InstanceGroups", [])):
            self.backend.launch(cluster, group, int(spec.get("InstanceCount") or 0))
        return ActionResult({"JobFlowId": cluster_id, "ClusterArn": cluster.arn,
                             "InstanceGroupIds": [group.id for group in groups]})

    def list_instances(self):
        """EMR rule: ListInstances honours its InstanceStates and fleet filters (moto
        ignores them)."""
        instances = self.backend.list_instances(
            self._get_param("ClusterId"),
            instance_group_id=self._get_param("InstanceGroupId"),
            instance_group_types=self._get_param("InstanceGroupTypes"),
            instance_fleet_id=self._get_param("InstanceFleetId"),
            instance_fleet_type=self._get_param("InstanceFleetType"),
        )
        states = self._get_param("InstanceStates") or []
        if states:
            instances = [i for i in instances if i.status["State"] in states]
        return PaginatedResult({"Instances": instances})

    def list_instance_fleets(self):
        """ListInstanceFleets (moto lacks it)."""
        fleets = self.backend.list_instance_fleets(self._get_param("ClusterId"))
        return PaginatedResult({"InstanceFleets": fleets})

    def add_instance_fleet(self):
        """AddInstanceFleet (moto lacks it): the new fleet's id."""
        cluster_id = self._get_param("ClusterId")
        fleet = self.backend.add_instance_fleet(cluster_id, self._get_param("InstanceFleet"))
        cluster = self.backend.describe_cluster(cluster_id)
        return ActionResult({"ClusterId": cluster_id, "InstanceFleetId": fleet.id,
                             "ClusterArn": cluster.arn})

    def modify_instance_fleet(self):
        """ModifyInstanceFleet (moto lacks it): the fleet resizes (see the model)."""
        self.backend.modify_instance_fleet(self._get_param("ClusterId"),
                                           self._get_param("InstanceFleet"))
        return EmptyResult()

    def cancel_steps(self):
        """CancelSteps (moto lacks it): PENDING steps are cancelled, RUNNING ones stopped
        (EMR 5.28 and later), each answered in CancelStepsInfoList."""
        infos = self.backend.cancel_steps(
            self._get_param("ClusterId"),
            self._get_param("StepIds", []) or [],
            self._get_param("StepCancellationOption"),
        )
        return ActionResult({"CancelStepsInfoList": infos})


url_paths = {"{0}/$": EmulatorResponse.dispatch}
