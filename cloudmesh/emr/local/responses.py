"""The emulator's EMR wire: moto's EMR responses, subclassed where EMR answers otherwise.

``EmulatorResponse`` answers from the emulator's model (``model.emulator_backends``)
and adds the operations moto lacks or answers wrongly; each is one method whose
docstring names the EMR rule. ``url_bases`` and ``url_paths`` are what moto's
server reads from a backend's URL module (``EmulatorBackend._url_module``) to route
EMR requests here.
"""

from moto.core.responses import ActionResult, PaginatedResult
from moto.emr.responses import ElasticMapReduceResponse
from moto.emr.urls import url_bases  # noqa: F401  (the same hosts as moto's EMR)

from cloudmesh.emr.local import model


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
        result = super().run_job_flow()
        backend = self.backend
        with backend.lock:
            cluster = backend.clusters.get(result.result.get("JobFlowId"))
            if cluster is not None and cluster.state == "STARTING":
                backend.engine_adopt(cluster)
        return result

    def list_instances(self):
        """EMR rule: ListInstances honours its InstanceStates filter (moto ignores it)."""
        instances = self.backend.list_instances(
            self._get_param("ClusterId"),
            instance_group_id=self._get_param("InstanceGroupId"),
            instance_group_types=self._get_param("InstanceGroupTypes"),
        )
        states = self._get_param("InstanceStates") or []
        if states:
            instances = [i for i in instances if i.status["State"] in states]
        return PaginatedResult({"Instances": instances})

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
