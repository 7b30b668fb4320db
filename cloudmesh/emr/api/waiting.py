"""Waiting for clusters and steps, on botocore's waiter machinery with waiter models of our own.

botocore's EMR waiters do not fit: ClusterRunning cannot wait for WAITING alone, and
StepComplete has no acceptor for INTERRUPTED, so a step interrupted by a lost node would be
waited for until the timeout. The models below are botocore waiter configurations
(version 2), run by ``botocore.waiter.create_waiter_with_client``: botocore polls, matches
the acceptors and gives up after MaxAttempts. Nothing here prints; each answer goes to a
callback, so the caller shows progress as it likes.
"""

import math
import uuid
from dataclasses import dataclass

ENDED = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
STEP_FAILED = ("FAILED", "CANCELLED", "INTERRUPTED")


def _state(expected, state, argument="Cluster.Status.State"):
    return {"matcher": "path", "argument": argument, "expected": expected, "state": state}


def _step(expected, state):
    return _state(expected, state, "Step.Status.State")


# the waiter models (botocore's waiters-2 format); delay and attempts are set per wait
MODELS = {
    "version": 2,
    "waiters": {
        # --until=running: RUNNING or WAITING; a cluster that ran its steps and ended by
        # itself (auto-terminate) has been running, so that counts too
        "ClusterRunning": {
            "operation": "DescribeCluster", "delay": 30, "maxAttempts": 240,
            "acceptors": [
                _state("RUNNING", "success"),
                _state("WAITING", "success"),
                _state("ALL_STEPS_COMPLETED", "success",
                       "Cluster.Status.StateChangeReason.Code"),
                *[_state(state, "failure") for state in ENDED],
            ],
        },
        "ClusterWaiting": {
            "operation": "DescribeCluster", "delay": 30, "maxAttempts": 240,
            "acceptors": [
                _state("WAITING", "success"),
                *[_state(state, "failure") for state in ENDED],
            ],
        },
        "ClusterTerminated": {
            "operation": "DescribeCluster", "delay": 30, "maxAttempts": 240,
            "acceptors": [
                _state("TERMINATED", "success"),
                _state("TERMINATED_WITH_ERRORS", "failure"),
            ],
        },
        # StepComplete of botocore, with INTERRUPTED as the failure it is
        "StepEnded": {
            "operation": "DescribeStep", "delay": 30, "maxAttempts": 240,
            "acceptors": [
                _step("COMPLETED", "success"),
                *[_step(state, "failure") for state in STEP_FAILED],
            ],
        },
    },
}

# --until word -> waiter name
UNTIL = {"running": "ClusterRunning", "waiting": "ClusterWaiting",
         "terminated": "ClusterTerminated"}


@dataclass
class Outcome:
    """How a wait ended: ``success``, ``failure`` (a failure state was reached), ``timeout``
    or ``error`` (the call itself failed); ``response`` is the last answer."""

    result: str
    response: dict


def attempts(delay, timeout):
    """Polls within ``timeout`` seconds at one every ``delay``: the first one at once."""
    return max(1, math.ceil(timeout / delay)) + 1


def wait(client, waiter_name, delay, timeout, on_answer=None, **params):
    """Run waiter ``waiter_name`` of MODELS with ``client``; return its Outcome.

    ``on_answer(response)`` is called with every answer as it arrives (botocore's
    after-call event), so the caller can show progress.
    """
    from botocore.exceptions import WaiterError
    from botocore.waiter import WaiterModel, create_waiter_with_client

    model = WaiterModel(MODELS)
    waiter = create_waiter_with_client(waiter_name, model, client)
    operation = model.get_waiter(waiter_name).operation
    last = {}

    def answered(parsed=None, **_):
        last["response"] = parsed
        if on_answer is not None and parsed is not None:
            on_answer(parsed)

    event = f"after-call.{client.meta.service_model.service_id.hyphenize()}.{operation}"
    unique = f"cloudmesh-emr-wait-{uuid.uuid4().hex}"
    client.meta.events.register(event, answered, unique_id=unique)
    try:
        waiter.wait(WaiterConfig={"Delay": delay, "MaxAttempts": attempts(delay, timeout)},
                    **params)
        return Outcome("success", last.get("response") or {})
    except WaiterError as error:
        response = error.last_response or last.get("response") or {}
        if "Max attempts exceeded" in str(error.kwargs.get("reason", "")):
            return Outcome("timeout", response)
        if "terminal failure state" in str(error.kwargs.get("reason", "")):
            return Outcome("failure", response)
        return Outcome("error", response)
    finally:
        client.meta.events.unregister(event, unique_id=unique)
