"""A pytest plugin that runs moto's own EMR tests against the emulator, as EMR would be met.

moto's tests, in server mode (TEST_SERVER_MODE=true), send their requests to
TEST_SERVER_MODE_ENDPOINT. Two things stand between them and an EMR-like service,
and this plugin bridges both, without changing a test:

* credentials: moto's tests sign with fake keys; the emulator answers only requests
  signed with its own. Every SigV4 signature is made with the emulator's pair
  (CONFORMANCE_ACCESS_KEY_ID / CONFORMANCE_SECRET_ACCESS_KEY), and moto's reset call
  (POST /moto-api/reset, which moto sends unsigned) is signed too;
* time: moto's clusters are WAITING the moment RunJobFlow answers, and TERMINATED the
  moment TerminateJobFlows does; EMR's (and the emulator's) take their time. After
  those two calls the plugin waits, through the same client, until every cluster named
  is in a settled state (not STARTING, BOOTSTRAPPING or TERMINATING), as a user of EMR
  waits with ``aws emr wait``.
"""

import os
import time

SETTLE_TIMEOUT = 60.0
UNSETTLED = ("STARTING", "BOOTSTRAPPING", "TERMINATING")
ENDED = ("TERMINATED", "TERMINATED_WITH_ERRORS")


def _credentials():
    from botocore.credentials import ReadOnlyCredentials

    return ReadOnlyCredentials(os.environ.get("CONFORMANCE_ACCESS_KEY_ID", "local"),
                               os.environ.get("CONFORMANCE_SECRET_ACCESS_KEY", "local"), None)


def sign_with_the_emulators_credentials():
    from botocore.auth import SigV4Auth

    original = SigV4Auth.add_auth
    if getattr(original, "conformance", False):
        return

    def add_auth(self, request):
        self.credentials = _credentials()
        return original(self, request)

    add_auth.conformance = True
    SigV4Auth.add_auth = add_auth


def signed_reset():
    """moto's reset call, signed (the emulator refuses unsigned requests)."""
    import requests
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from moto.core.models import ServerModeMockAWS

    def reset(self):
        if ServerModeMockAWS._RESET_IN_PROGRESS:
            return
        ServerModeMockAWS._RESET_IN_PROGRESS = True
        try:
            url = f"{self._test_server_mode_endpoint}/moto-api/reset"
            request = AWSRequest(method="POST", url=url, data=b"")
            SigV4Auth(_credentials(), "moto", "us-east-1").add_auth(request)
            answer = requests.post(url, data=b"", headers=dict(request.headers.items()),
                                   timeout=60)
            answer.raise_for_status()
        finally:
            ServerModeMockAWS._RESET_IN_PROGRESS = False

    ServerModeMockAWS.reset = reset


def settle_after_run_and_terminate():
    from botocore.client import BaseClient

    original = BaseClient._make_api_call
    if getattr(original, "conformance", False):
        return

    def make_api_call(self, operation_name, params):
        result = original(self, operation_name, params)
        if self.meta.service_model.service_name != "emr":
            return result
        if operation_name == "RunJobFlow":
            _settle(original, self, [result["JobFlowId"]], lambda s: s not in UNSETTLED)
        elif operation_name == "TerminateJobFlows":
            _settle(original, self, params.get("JobFlowIds") or [], lambda s: s in ENDED)
        return result

    make_api_call.conformance = True
    BaseClient._make_api_call = make_api_call


def _settle(call, client, cluster_ids, settled):
    deadline = time.monotonic() + SETTLE_TIMEOUT
    for cluster_id in cluster_ids:
        while time.monotonic() < deadline:
            try:
                state = call(client, "DescribeCluster",
                             {"ClusterId": cluster_id})["Cluster"]["Status"]["State"]
            except Exception:  # an unknown id: the test itself will say so
                break
            if settled(state):
                break
            time.sleep(0.1)


def pytest_configure(config):
    sign_with_the_emulators_credentials()
    signed_reset()
    settle_after_run_and_terminate()
