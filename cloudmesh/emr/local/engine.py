"""The lifecycle engine: moves the emulator's EMR state over time as EMR would.

The model (``model.py``) holds clusters and steps as EMR describes them; time is
the engine's. It runs in a thread of the daemon and, every ``TICK`` seconds,
walks all clusters of all accounts and regions:

* cluster: STARTING -> BOOTSTRAPPING -> RUNNING -> WAITING, ``delay`` seconds per
  transition; RUNNING while a step runs, WAITING when idle; an auto-terminating
  cluster (KeepJobFlowAliveWhenNoSteps false) shuts down after its last step;
  TERMINATING -> TERMINATED (or TERMINATED_WITH_ERRORS after a TERMINATE_CLUSTER
  step failed) once its running steps have stopped;
* steps: PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED, in order, at most
  StepConcurrencyLevel at a time, with ActionOnFailure applied;
* instance groups and instances follow their cluster (the EC2 instances that moto
  launched for it are terminated with it); NormalizedInstanceHours grows.

Every change of state is logged (the daemon's log: ``cluster j-X: A -> B (reason)``,
``step s-X of j-Y: A -> B``), so what happened between two requests is on record.
Every change happens under ``lock``, which the model's mutating operations take
as well, so a request never sees half a transition.
"""

import logging
import math
import re
import threading
import time
from datetime import datetime, timezone

log = logging.getLogger(__name__)

TICK = 0.05  # seconds between two passes over the clusters

STARTING, BOOTSTRAPPING, RUNNING, WAITING = "STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"
TERMINATING, TERMINATED, TERMINATED_WITH_ERRORS = (
    "TERMINATING",
    "TERMINATED",
    "TERMINATED_WITH_ERRORS",
)
ACTIVE = (STARTING, BOOTSTRAPPING, RUNNING, WAITING, TERMINATING)
ENDED = (TERMINATED, TERMINATED_WITH_ERRORS)

PENDING, CANCEL_PENDING, COMPLETED, CANCELLED, FAILED = (
    "PENDING",
    "CANCEL_PENDING",
    "COMPLETED",
    "CANCELLED",
    "FAILED",
)
STEP_ACTIVE = (PENDING, RUNNING, CANCEL_PENDING)
STEP_ENDED = (COMPLETED, CANCELLED, FAILED, "INTERRUPTED")

# cluster state -> (instance group state, instance fleet state, instance state)
MEMBER_STATES = {
    STARTING: ("PROVISIONING", "PROVISIONING", "PROVISIONING"),
    BOOTSTRAPPING: ("BOOTSTRAPPING", "BOOTSTRAPPING", "BOOTSTRAPPING"),
    RUNNING: ("RUNNING", "RUNNING", "RUNNING"),
    WAITING: ("RUNNING", "RUNNING", "RUNNING"),
    TERMINATING: ("TERMINATING", "TERMINATING", "RUNNING"),
    TERMINATED: ("ENDED", "TERMINATED", "TERMINATED"),
    TERMINATED_WITH_ERRORS: ("ENDED", "TERMINATED", "TERMINATED"),
}

# the reasons EMR gives (StateChangeReason Code and Message)
USER_REQUEST = ("USER_REQUEST", "Terminated by user request")
STEPS_DONE = ("ALL_STEPS_COMPLETED", "Steps completed")
STEPS_DONE_WITH_ERRORS = ("ALL_STEPS_COMPLETED", "Steps completed with errors")
STEP_FAILURE = ("STEP_FAILURE", "Shut down as step failed")
BOOTSTRAP_MESSAGE = "Running bootstrap actions"
RUNNING_STEP_MESSAGE = "Running step"
READY_MESSAGE = "Cluster ready to run steps."
READY_AFTER_STEPS_MESSAGE = "Cluster ready after last step completed."

# EC2 size -> normalization factor of NormalizedInstanceHours
SIZE_FACTOR = {"nano": 0.25, "micro": 0.5, "small": 1, "medium": 2, "large": 4, "xlarge": 8}

TERMINATE_ACTIONS = ("TERMINATE_CLUSTER", "TERMINATE_JOB_FLOW")


def utcnow():
    """Now, as moto keeps times: naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def normalization_factor(instance_type):
    """How many normalized instance hours one hour of ``instance_type`` counts."""
    size = str(instance_type or "").rpartition(".")[2]
    if size in SIZE_FACTOR:
        return SIZE_FACTOR[size]
    match = re.fullmatch(r"(\d+)xlarge", size)
    return 8 * int(match.group(1)) if match else 0


class Engine:
    """Moves clusters and steps; starts step runs through ``launch``.

    ``launch(cluster, step, done)`` returns an object with ``start()``,
    ``cancel(kill=False)``, ``alive`` and ``join(timeout)``; the run calls
    ``done(run, result)`` once when it has ended, ``result`` having ``ok`` and
    ``failure`` (a FailureDetails dict or None).
    """

    def __init__(self, delay, launch, tick=TICK, time_scale=1.0, bootstrap=None):
        """``time_scale`` speeds up the policy clocks (idle timeout, metrics; see
        policies.py); ``bootstrap(cluster)`` returns the run of a cluster's bootstrap
        actions (start(), alive, failure) or None to skip them."""
        self.delay = float(delay)
        self.launch = launch
        self.time_scale = float(time_scale or 1.0)
        self.bootstrap = bootstrap
        self.bootstraps = {}  # cluster id -> its bootstrap run
        self.tick_seconds = tick
        self.lock = threading.RLock()
        self.runs = {}  # step id -> run
        self._stop = threading.Event()
        self._thread = None

    # ---- the thread --------------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="emr-lifecycle", daemon=True)
        self._thread.start()

    def stop(self, grace=10.0):
        """Stop moving state, stop every step process, wait for the runs to end."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        with self.lock:
            runs = list(self.runs.values())
            for run in runs:
                run.cancel()
            for bootstrap in self.bootstraps.values():
                bootstrap.cancel()
        deadline = time.monotonic() + grace
        for run in runs:
            run.join(max(0.0, deadline - time.monotonic()))
        for run in runs:
            if run.alive:
                run.cancel(kill=True)
                run.join(2.0)

    def _loop(self):
        while not self._stop.wait(self.tick_seconds):
            try:
                self.tick()
            except Exception:  # a defect: keep serving, say what happened
                log.exception("lifecycle engine pass failed")

    def tick(self):
        from cloudmesh.emr.local.model import backends

        with self.lock:
            now = time.monotonic()
            # copies: requests may add accounts, regions and clusters meanwhile
            for backend in backends():
                for cluster in list(backend.clusters.values()):
                    self.advance(cluster, now)

    def forget(self, clusters):
        """moto's reset: stop the step runs of ``clusters``; their results are dropped.

        Without the engine's lock (see EmulatorBackend.reset): a dict pop is atomic, and
        a run that ends meanwhile finds its cluster gone and settles nothing.
        """
        for cluster in clusters:
            bootstrap = self.bootstraps.pop(cluster.id, None)
            if bootstrap is not None:
                bootstrap.cancel()
            for step in list(cluster.steps):
                run = self.runs.pop(step.id, None)
                if run is not None:
                    run.cancel(kill=True)

    # ---- clusters ----------------------------------------------------------------

    def adopt(self, cluster):
        """A new cluster: STARTING, no ReadyDateTime yet (moto made it WAITING at once)."""
        cluster.state = STARTING
        cluster.ready_datetime = None
        cluster.state_change_code = None
        cluster.last_state_change_reason = None
        cluster.local_since = time.monotonic()
        cluster.local_final = TERMINATED
        cluster.local_ran_steps = False

    def adopt_ended(self, cluster):
        """A cluster restored from an earlier run of the emulator: ended, nothing to move."""
        cluster.local_since = time.monotonic()
        cluster.local_final = cluster.state
        cluster.local_ran_steps = bool(cluster.steps)
        self.sync_members(cluster)

    def enter(self, cluster, state, reason=(None, None)):
        if cluster.state != state:
            because = " ".join(str(part) for part in reason if part)
            log.info("cluster %s: %s -> %s%s", cluster.id, cluster.state, state,
                     f" ({because})" if because else "")
        cluster.state = state
        cluster.state_change_code, cluster.last_state_change_reason = reason
        cluster.local_since = time.monotonic()
        self.sync_members(cluster)

    def advance(self, cluster, now):
        if not hasattr(cluster, "local_since"):
            self.adopt(cluster)
        elapsed = now - cluster.local_since
        state = cluster.state
        if state == STARTING and elapsed >= self.delay:
            self.enter(cluster, BOOTSTRAPPING, (None, BOOTSTRAP_MESSAGE))
            self.start_bootstrap(cluster)
        elif state == BOOTSTRAPPING and elapsed >= self.delay:
            run = self.bootstraps.get(cluster.id)
            if run is not None and run.alive:
                pass  # EMR waits for every bootstrap action
            elif run is not None and run.failure:
                self.bootstraps.pop(cluster.id, None)
                self.begin_termination(cluster, run.failure, TERMINATED_WITH_ERRORS)
            else:
                self.bootstraps.pop(cluster.id, None)
                self.ready(cluster)
        elif state in (RUNNING, WAITING):
            self.schedule(cluster, elapsed)
            if cluster.state in (RUNNING, WAITING):
                from cloudmesh.emr.local import policies

                policies.every_pass(self, cluster, now)
        elif state == TERMINATING and elapsed >= self.delay:
            if not any(self.runs.get(step.id) for step in cluster.steps):
                self.finish_termination(cluster)
        self.sync_members(cluster)
        self.count_hours(cluster)

    def start_bootstrap(self, cluster):
        """BOOTSTRAPPING: the cluster's bootstrap actions run (see bootstrap.py)."""
        if self.bootstrap is None or not getattr(cluster, "bootstrap_actions", None):
            return
        run = self.bootstrap(cluster)
        if run is not None:
            self.bootstraps[cluster.id] = run
            run.start()

    def ready(self, cluster):
        """Bootstrapping done: RUNNING when steps wait, else WAITING (or shut down when
        KeepJobFlowAliveWhenNoSteps is false), as EMR goes."""
        cluster.ready_datetime = utcnow()
        if any(step.state == PENDING for step in cluster.steps):
            self.enter(cluster, RUNNING, (None, RUNNING_STEP_MESSAGE))
            self.schedule(cluster, 0.0)
        elif cluster.keep_job_flow_alive_when_no_steps:
            self.enter(cluster, WAITING, (None, READY_MESSAGE))
        else:
            self.begin_termination(cluster, STEPS_DONE)

    def schedule(self, cluster, elapsed):
        """Start what may start; RUNNING while steps run; WAITING or shut down when idle."""
        level = max(1, int(cluster.step_concurrency_level or 1))
        running = [s for s in cluster.steps if s.state in (RUNNING, CANCEL_PENDING)]
        for step in [s for s in cluster.steps if s.state == PENDING]:
            if len(running) >= level:
                break
            if not getattr(step, "local_noticed", False):
                step.local_noticed = True  # a new step is PENDING until the next pass
                continue
            self.start_step(cluster, step)
            running.append(step)
        if running:
            if cluster.state != RUNNING or cluster.last_state_change_reason != RUNNING_STEP_MESSAGE:
                self.enter(cluster, RUNNING, (None, RUNNING_STEP_MESSAGE))
            return
        if cluster.state == RUNNING and elapsed < self.delay:
            return
        if not cluster.keep_job_flow_alive_when_no_steps:
            failed = any(step.state == FAILED for step in cluster.steps)
            self.begin_termination(cluster, STEPS_DONE_WITH_ERRORS if failed else STEPS_DONE)
        elif cluster.state == RUNNING:
            message = READY_AFTER_STEPS_MESSAGE if cluster.local_ran_steps else READY_MESSAGE
            self.enter(cluster, WAITING, (None, message))

    def begin_termination(self, cluster, reason, final=TERMINATED):
        """TERMINATING: pending steps are cancelled, running ones stopped."""
        if cluster.state in (TERMINATING,) + ENDED:
            return
        cluster.local_final = final
        self.enter(cluster, TERMINATING, reason)
        for step in cluster.steps:
            if step.state == PENDING:
                self.end_step(step, CANCELLED, "Cancelled because the cluster terminated")
            elif step.state in (RUNNING, CANCEL_PENDING):
                self.stop_step(step, "Cancelled because the cluster terminated")

    def finish_termination(self, cluster):
        cluster.end_datetime = utcnow()
        reason = (cluster.state_change_code, cluster.last_state_change_reason)
        for step in cluster.steps:
            if step.state not in STEP_ENDED:
                self.end_step(step, CANCELLED, "Cancelled because the cluster terminated")
        self.enter(cluster, cluster.local_final, reason)
        self.end_instances(cluster)

    @staticmethod
    def end_instances(cluster):
        """Terminate the EC2 instances moto launched for the cluster (moto keeps them running)."""
        ids = [member.ec2_instance_id for member in getattr(cluster, "ec2_instances", [])]
        if not ids:
            return
        try:
            cluster.emr_backend.ec2_backend.terminate_instances(ids)
        except Exception as error:  # EMR's own view is right already; say what EC2 missed
            log.warning("cluster %s: cannot terminate its EC2 instances: %s", cluster.id, error)

    def terminate(self, cluster):
        """TerminateJobFlows: TERMINATING now, TERMINATED once its steps have stopped."""
        with self.lock:
            if not hasattr(cluster, "local_since"):
                self.adopt(cluster)
            self.begin_termination(cluster, USER_REQUEST)

    def sync_members(self, cluster):
        """Instance groups and instances take the state and times of their cluster."""
        group_state, fleet_state, instance_state = MEMBER_STATES.get(
            cluster.state, MEMBER_STATES[STARTING])
        ended = cluster.state in ENDED
        fleets = getattr(cluster, "instance_fleets", [])
        for member, state in [(g, group_state) for g in cluster.instance_groups] + [
                (f, fleet_state) for f in fleets]:
            if member.state == "RESIZING" and not ended and cluster.state != TERMINATING:
                # a resize: RESIZING for one delay, then instances come or go
                since = getattr(member, "local_resize_since", None)
                if since is None:
                    member.local_resize_since = time.monotonic()
                    continue
                if time.monotonic() - since < self.delay:
                    continue
                member.local_resize_since = None
                log.info("cluster %s: %s resized to %s instance(s)", cluster.id, member.id,
                         member.num_instances)
                cluster.emr_backend.reconcile(cluster, member)
            added = getattr(member, "local_added", None)
            if added is not None and not ended and cluster.state != TERMINATING:
                self.added_member(cluster, member, added)
                continue
            member.state = state
            member.instance_state = instance_state
            if added is not None:
                pass  # a group added later keeps its own ReadyDateTime
            elif member.ready_date_time is None or not cluster.ready_datetime:
                member.ready_date_time = cluster.ready_datetime
            member.end_date_time = cluster.end_datetime if ended else None
            member.state_change_reason = (
                f"Instance {'fleet' if member in fleets else 'group'} terminated with its cluster"
                if ended else None
            )

    def added_member(self, cluster, member, added):
        """A group added to a running cluster: PROVISIONING, BOOTSTRAPPING, then RUNNING,
        one delay each, with its own ReadyDateTime (never before its CreationDateTime)."""
        elapsed = time.monotonic() - added
        if elapsed < self.delay:
            state = "PROVISIONING"
        elif elapsed < 2 * self.delay:
            state = "BOOTSTRAPPING"
        else:
            state = "RUNNING"
        if member.state != state:
            log.info("cluster %s: %s %s -> %s", cluster.id, member.id, member.state, state)
        member.state = state
        member.instance_state = state
        if state == "RUNNING" and member.ready_date_time is None:
            member.ready_date_time = max(utcnow(), member.creation_date_time)
        member.end_date_time = None
        member.state_change_reason = None

    def count_hours(self, cluster):
        """NormalizedInstanceHours: whole hours since ready, times each node's factor."""
        if not cluster.ready_datetime:
            return
        end = cluster.end_datetime or utcnow()
        hours = max(1, math.ceil((end - cluster.ready_datetime).total_seconds() / 3600))
        members = cluster.members() if hasattr(cluster, "members") else cluster.instance_groups
        factor = sum(
            normalization_factor(member.instance_type) * int(member.num_instances or 0)
            for member in members
        )
        cluster.normalized_instance_hours = int(math.ceil(hours * factor))

    # ---- steps ----------------------------------------------------------------

    @staticmethod
    def note_step(step, state, message=None):
        if step.state != state:
            log.info("step %s of %s: %s -> %s%s", step.id, getattr(step, "local_cluster", "?"),
                     step.state, state, f" ({message})" if message else "")

    def start_step(self, cluster, step):
        self.note_step(step, RUNNING)
        step.state = RUNNING
        step.start_date_time = utcnow()
        step.last_state_change_reason = None
        cluster.local_ran_steps = True
        run = self.launch(cluster, step, self.step_done)
        self.runs[step.id] = run
        run.start()

    def end_step(self, step, state, message=None, failure=None):
        self.note_step(step, state, message or (failure or {}).get("Message"))
        step.state = state
        step.end_date_time = utcnow()
        step.last_state_change_reason = message
        step.failure_details = failure

    def stop_step(self, step, message, kill=False):
        self.note_step(step, CANCEL_PENDING, message)
        step.state = CANCEL_PENDING
        step.last_state_change_reason = message
        run = self.runs.get(step.id)
        if run is None:
            self.end_step(step, CANCELLED, message)
        else:
            run.cancel(kill=kill)

    def step_done(self, run, result):
        """A run ended (the process exited, or the copy finished): settle the step."""
        with self.lock:
            self.runs.pop(run.step_id, None)
            cluster, step = self.find(run.account, run.region, run.cluster_id, run.step_id)
            if step is None or step.state in STEP_ENDED:
                return
            if step.state == CANCEL_PENDING or run.cancelled:
                self.end_step(step, CANCELLED, step.last_state_change_reason)
            elif result.ok:
                self.end_step(step, COMPLETED)
            else:
                self.end_step(step, FAILED, failure=result.failure)
                self.apply_action_on_failure(cluster, step)

    def apply_action_on_failure(self, cluster, step):
        action = step.action_on_failure or "CONTINUE"
        if int(cluster.step_concurrency_level or 1) > 1 or action == "CONTINUE":
            return  # with concurrent steps EMR neither cancels nor terminates
        if action in TERMINATE_ACTIONS and not cluster.termination_protected:
            self.begin_termination(cluster, STEP_FAILURE, TERMINATED_WITH_ERRORS)
            return
        for other in cluster.steps:  # CANCEL_AND_WAIT, or TERMINATE_* on a protected cluster
            if other.state == PENDING:
                self.end_step(other, CANCELLED, f"Cancelled because step {step.id} failed")

    def cancel_steps(self, cluster, step_ids, option="SEND_INTERRUPT"):
        """CancelSteps: PENDING steps end at once, RUNNING ones are stopped."""
        infos = []
        with self.lock:
            steps = {step.id: step for step in cluster.steps}
            for step_id in step_ids:
                step = steps.get(step_id)
                info = {"StepId": step_id, "Status": "SUBMITTED"}
                if step is None:
                    info.update(Status="FAILED", Reason=f"Step id '{step_id}' is not valid.")
                elif step.state == PENDING:
                    self.end_step(step, CANCELLED, "Cancelled by user request")
                elif step.state == RUNNING:
                    self.stop_step(
                        step, "Cancelled by user request", kill=option == "TERMINATE_PROCESS"
                    )
                elif step.state != CANCEL_PENDING:
                    info.update(
                        Status="FAILED",
                        Reason=f"Step {step_id} is {step.state} and cannot be cancelled.",
                    )
                infos.append(info)
        return infos

    @staticmethod
    def find(account, region, cluster_id, step_id):
        from cloudmesh.emr.local.model import emulator_backends

        # plain dict reads: no backend is made (or moto's backend lock taken) for a run
        # whose backend a reset removed
        regions = dict.get(emulator_backends, account)
        backend = dict.get(regions, region) if regions is not None else None
        cluster = backend.clusters.get(cluster_id) if backend is not None else None
        if cluster is None:
            return None, None
        for step in cluster.steps:
            if step.id == step_id:
                return cluster, step
        return cluster, None
