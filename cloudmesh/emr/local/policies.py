"""What the engine does for a cluster's policies and its watchers, once per pass.

* Auto-termination policy: a WAITING cluster idle for IdleTimeout seconds shuts down
  (a termination-protected one stays, as protection wins over auto-termination).
* Managed scaling policy: CORE and TASK capacity between MinimumCapacityUnits and
  MaximumCapacityUnits instances: up to the maximum while steps are pending or
  running, down to the minimum when idle (task groups shrink first); each change is a
  resize (RESIZING, then instances come or go).
* CloudWatch: the metrics of the AWS/ElasticMapReduce namespace, computed from what
  the engine knows, put into the emulated CloudWatch for every live cluster.

``time_scale`` speeds the policy clocks up (a test's 60 s idle timeout after 60 /
time_scale seconds; metrics every 60 / time_scale seconds); the cluster's own state
changes keep the engine's delay. Timestamps of metrics are real time.
"""

import logging
import time

log = logging.getLogger(__name__)

NAMESPACE = "AWS/ElasticMapReduce"
METRICS_EVERY = 60.0  # seconds (emulated) between two puts of a cluster's metrics
IDLE_REASON = ("ALL_STEPS_COMPLETED",
               "Cluster was terminated by its auto-termination policy after {idle} idle")
SCALED_ROLES = ("CORE", "TASK")


def idle_timeout(engine, cluster, now):
    """Shut the cluster down when it has been WAITING for its policy's IdleTimeout."""
    from cloudmesh.emr.durations import human

    policy = getattr(cluster, "policies", {}).get("AutoTerminationPolicy") or {}
    timeout = policy.get("IdleTimeout")
    if cluster.state != "WAITING" or not timeout or cluster.termination_protected:
        return False
    idle = (now - cluster.local_since) * engine.time_scale
    if idle < float(timeout):
        return False
    code, message = IDLE_REASON
    engine.begin_termination(cluster, (code, message.format(idle=human(int(timeout)))))
    return True


def _limits(cluster):
    policy = getattr(cluster, "policies", {}).get("ManagedScalingPolicy") or {}
    limits = policy.get("ComputeLimits") or {}
    if limits.get("UnitType", "Instances") != "Instances":
        return None
    try:
        return int(limits["MinimumCapacityUnits"]), int(limits["MaximumCapacityUnits"])
    except (KeyError, TypeError, ValueError):
        return None


def scale(engine, cluster, now):
    """Resize CORE/TASK groups toward the managed scaling limits (instance groups only)."""
    limits = _limits(cluster)
    if limits is None or cluster.state not in ("RUNNING", "WAITING"):
        return False
    groups = [g for g in cluster.instance_groups if g.role in SCALED_ROLES]
    if not groups or any(g.state == "RESIZING" for g in groups):
        return False
    if now - getattr(cluster, "local_scaled", 0.0) < engine.delay:
        return False
    busy = any(step.state in ("PENDING", "RUNNING") for step in cluster.steps)
    low, high = limits
    current = sum(int(g.num_instances or 0) for g in groups)
    target = high if busy else low
    if current == target:
        return False
    changed = []
    if target > current:
        grow = next((g for g in groups if g.role == "CORE"), groups[0])
        grow.num_instances = int(grow.num_instances or 0) + target - current
        changed.append(grow)
    else:
        excess = current - target
        for group in sorted(groups, key=lambda g: g.role != "TASK"):  # task groups first
            keep = 1 if group.role == "CORE" else 0
            cut = min(excess, max(int(group.num_instances or 0) - keep, 0))
            if cut:
                group.num_instances = int(group.num_instances) - cut
                changed.append(group)
                excess -= cut
            if not excess:
                break
    for group in changed:
        group.state = "RESIZING"
        log.info("cluster %s: managed scaling resizes %s to %s instance(s) (%s)", cluster.id,
                 group.id, group.num_instances, "steps waiting" if busy else "idle")
    cluster.local_scaled = now
    return bool(changed)


def values(cluster):
    """The metrics of a cluster now, from the engine's view of it."""
    steps = [step.state for step in cluster.steps]
    running, pending = steps.count("RUNNING"), steps.count("PENDING")
    live = {}
    for instance in getattr(cluster, "ec2_instances", []):
        owner = instance.fleet or instance.instance_group
        if instance.status["State"] == "RUNNING":
            live[owner.role] = live.get(owner.role, 0) + 1
    idle = cluster.state == "WAITING"
    return {
        "IsIdle": 1.0 if idle else 0.0,
        "AppsRunning": float(running),
        "AppsPending": float(pending),
        "ContainerPending": float(pending),
        "YARNMemoryAvailablePercentage": max(100.0 - 25.0 * running, 10.0),
        "CoreNodesRunning": float(live.get("CORE", 0)),
        "TaskNodesRunning": float(live.get("TASK", 0)),
        "HDFSUtilization": 0.0 if not live.get("CORE") else 1.0,
    }


def publish(engine, cluster, now):
    """Put the cluster's metrics into the emulated CloudWatch, at most once every
    METRICS_EVERY / time_scale seconds, while the cluster is ready and has not ended."""
    if cluster.state not in ("RUNNING", "WAITING") or not cluster.ready_datetime:
        return False
    last = getattr(cluster, "local_published", None)
    if last is not None and (now - last) * engine.time_scale < METRICS_EVERY:
        return False
    cluster.local_published = now
    try:
        from moto.cloudwatch.models import cloudwatch_backends

        backend = cloudwatch_backends[cluster.emr_backend.account_id][
            cluster.emr_backend.region_name]
        dimensions = [{"Name": "JobFlowId", "Value": cluster.id}]
        backend.put_metric_data(NAMESPACE, [
            {"MetricName": name, "Dimensions": dimensions, "Value": value, "Unit": "None"}
            for name, value in values(cluster).items()])
    except Exception as error:  # metrics are an extra: the lifecycle goes on
        log.warning("cluster %s: cannot put its metrics: %s", cluster.id, error)
    return True


def every_pass(engine, cluster, now=None):
    """The policies and watchers of one cluster, for one pass of the engine."""
    now = time.monotonic() if now is None else now
    if idle_timeout(engine, cluster, now):
        return
    scale(engine, cluster, now)
    publish(engine, cluster, now)
