"""What the emulator keeps across a restart: the emulated S3 and the history of EMR.

When the daemon stops (``save``) it writes, under its state folder:

* ``s3/<account>/<bucket>/``: every object of every bucket (the newest version), one
  file per object named by a number, and ``index.json`` with each object's key and
  metadata, and the bucket's region;
* ``emr.json``: every cluster of every account and region, with its steps, instance
  groups or fleets and instances, as DescribeCluster, ListSteps and ListInstances show
  them. A cluster that was still active comes back TERMINATED, its reason saying
  that the emulator was stopped, and its unfinished steps CANCELLED.

When it starts (``load``, before it serves) it puts them back. Files are written
to a new folder and swapped in whole, so a stop cut short leaves the last good copy.
"""

import json
import logging
import os
import shutil
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

S3_DIR = "s3"
EMR_FILE = "emr.json"
STOPPED = ("USER_REQUEST", "Terminated because the local emulator was stopped")
STEP_STOPPED = "Cancelled because the local emulator was stopped"
ACTIVE = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING")
STEP_UNFINISHED = ("PENDING", "RUNNING", "CANCEL_PENDING")


def _time(value):
    return value.isoformat() if isinstance(value, datetime) else None


def _from_time(value):
    return datetime.fromisoformat(value) if value else None


def _plain(value):
    """A request value (moto's case-insensitive dicts included) as plain JSON data."""
    if hasattr(value, "original_dict"):
        value = value.original_dict()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# ---- saving ------------------------------------------------------------------------------


def save(state_dir, now=None):
    """Write S3 and EMR under ``state_dir``; return (buckets, objects, clusters) saved."""
    state_dir = Path(state_dir)
    buckets, objects = _save_s3(state_dir)
    clusters = _save_emr(state_dir, now)
    log.info("saved %d S3 object(s) in %d bucket(s) and %d cluster(s) under %s",
             objects, buckets, clusters, state_dir)
    return buckets, objects, clusters


def _swap(new, final):
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def _save_s3(state_dir):
    from moto.s3.models import FakeKey, s3_backends

    new = state_dir / (S3_DIR + ".new")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    buckets = objects = 0
    for account, partitions in list(s3_backends.items()):
        for backend in list(partitions.values()):
            for name, bucket in list(backend.buckets.items()):
                folder = new / account / name
                folder.mkdir(parents=True)
                index = {"region": bucket.region_name, "objects": []}
                for number, (key, fake) in enumerate(list(bucket.keys.items())):
                    if not isinstance(fake, FakeKey):
                        continue  # a delete marker
                    (folder / str(number)).write_bytes(fake.value)
                    index["objects"].append({"key": key, "file": str(number),
                                             "metadata": dict(fake.metadata)})
                    objects += 1
                (folder / "index.json").write_text(json.dumps(index))
                buckets += 1
    _swap(new, state_dir / S3_DIR)
    return buckets, objects


def _save_emr(state_dir, now=None):
    from cloudmesh.emr.local.model import emulator_backends

    clusters = []
    for account, regions in list(emulator_backends.items()):
        for region, backend in list(regions.items()):
            for cluster in list(backend.clusters.values()):
                try:
                    clusters.append(dict(snapshot(cluster, now), account=account,
                                         region=region))
                except Exception as error:  # e.g. one a failed request left half made
                    log.warning("cannot save cluster %s: %s", getattr(cluster, "id", "?"),
                                error)
    from cloudmesh.emr.processes import write_json

    write_json(state_dir / EMR_FILE, {"clusters": clusters})  # atomic: write, fsync, rename
    return len(clusters)


def snapshot(cluster, now=None):
    """The cluster as plain data; an active one as the emulator's stop ends it."""
    from cloudmesh.emr.local.engine import utcnow

    end = now or utcnow()
    state = cluster.state
    code, reason = getattr(cluster, "state_change_code", None), getattr(
        cluster, "last_state_change_reason", None)
    end_time = cluster.end_datetime
    if state in ACTIVE:
        state, (code, reason), end_time = "TERMINATED", STOPPED, end
    steps = []
    for step in cluster.steps:
        step_state, message, step_end = step.state, step.last_state_change_reason, step.end_date_time
        if step_state in STEP_UNFINISHED:
            step_state, message, step_end = "CANCELLED", STEP_STOPPED, end
        steps.append({
            "id": step.id, "name": step.name, "action_on_failure": step.action_on_failure,
            "hadoop_jar_step": _plain(step.hadoop_jar_step), "state": step_state,
            "message": message, "failure_details": _plain(getattr(step, "failure_details", None)),
            "created": _time(step.creation_date_time), "started": _time(step.start_date_time),
            "ended": _time(step_end),
        })
    members = []
    for member in cluster.members():
        members.append({
            "kind": "fleet" if hasattr(member, "instance_fleet_type") else "group",
            "id": member.id, "name": member.name, "role": member.role,
            "instance_type": member.instance_type, "count": int(member.num_instances or 0),
            "market": member.market,
            "fleet": {
                "InstanceFleetType": member.role, "Name": member.name,
                "TargetOnDemandCapacity": member.target_on_demand_capacity,
                "TargetSpotCapacity": member.target_spot_capacity,
                "InstanceTypeConfigs": member.instance_type_specifications,
            } if hasattr(member, "instance_fleet_type") else None,
            "created": _time(member.creation_date_time), "ready": _time(member.ready_date_time),
        })
    instances = [{
        "id": instance.id, "ec2_id": instance.ec2_instance_id, "member": instance.instance_group.id,
        "instance_type": instance.instance_type, "names": dict(instance.kept),
        "market": getattr(instance, "fleet_market", None),
        "ended": _time(instance.ended or end_time),
    } for instance in cluster.ec2_instances]
    return {
        "id": cluster.id, "name": cluster.name, "state": state, "code": code, "reason": reason,
        "created": _time(cluster.creation_datetime), "ready": _time(cluster.ready_datetime),
        "ended": _time(end_time),
        "release_label": cluster.release_label, "log_uri": cluster.log_uri,
        "job_flow_role": cluster.role, "service_role": cluster.service_role,
        "visible_to_all_users": cluster.visible_to_all_users,
        "step_concurrency_level": cluster.step_concurrency_level,
        "keep_alive": cluster.keep_job_flow_alive_when_no_steps,
        "termination_protected": cluster.termination_protected,
        "subnet": cluster.ec2_subnet_id, "zone": cluster.availability_zone,
        "key_name": cluster.ec2_key_name,
        "hours": cluster.normalized_instance_hours,
        "applications": [{"Name": a.name, "Version": a.version} for a in cluster.applications],
        "tags": dict(cluster._tags), "configurations": _plain(cluster.configurations),
        "bootstrap_actions": [{"name": b.name, "script_bootstrap_action":
                               _plain(b.script_bootstrap_action)}
                              for b in cluster.bootstrap_actions],
        "policies": _plain(getattr(cluster, "policies", {})),
        "steps": steps, "members": members, "instances": instances,
    }


# ---- loading ------------------------------------------------------------------------------


def load(state_dir):
    """Put back what ``save`` wrote; return (buckets, objects, clusters) restored."""
    state_dir = Path(state_dir)
    buckets, objects = _load_s3(state_dir)
    clusters = _load_emr(state_dir)
    if buckets or clusters:
        log.info("restored %d S3 object(s) in %d bucket(s) and %d cluster(s) from %s",
                 objects, buckets, clusters, state_dir)
    return buckets, objects, clusters


def _load_s3(state_dir):
    from moto.s3.models import s3_backends

    root = state_dir / S3_DIR
    buckets = objects = 0
    if not root.is_dir():
        return 0, 0
    for account_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        backend = s3_backends[account_dir.name]["aws"]
        for folder in sorted(p for p in account_dir.iterdir() if p.is_dir()):
            try:
                index = json.loads((folder / "index.json").read_text())
                backend.create_bucket(folder.name, index.get("region") or "us-east-1")
            except Exception as error:  # a damaged copy: say so, keep the rest
                log.warning("cannot restore bucket %s: %s", folder.name, error)
                continue
            buckets += 1
            for entry in index.get("objects", []):
                try:
                    fake = backend.put_object(folder.name, entry["key"],
                                              (folder / entry["file"]).read_bytes())
                    fake.set_metadata(dict(entry.get("metadata") or {}))
                    objects += 1
                except Exception as error:
                    log.warning("cannot restore s3://%s/%s: %s", folder.name, entry.get("key"),
                                error)
    return buckets, objects


def _load_emr(state_dir):
    from cloudmesh.emr.local.model import emulator_backends

    try:
        data = json.loads((state_dir / EMR_FILE).read_text())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as error:
        log.warning("cannot read %s: %s; the cluster history starts empty",
                    state_dir / EMR_FILE, error)
        return 0
    count = 0
    for snap in data.get("clusters", []):
        try:
            backend = emulator_backends[snap["account"]][snap["region"]]
            restore(backend, snap)
            count += 1
        except Exception as error:  # one bad entry does not lose the others
            log.warning("cannot restore cluster %s: %s", snap.get("id"), error)
    return count


class EndedEc2Instance:
    """What an ended cluster's instance keeps of its EC2 instance (the EC2 side is gone)."""

    def __init__(self, entry):
        names = entry.get("names") or {}
        self.id = entry["ec2_id"]
        self.instance_type = entry.get("instance_type")
        self.public_dns_name = names.get("public_dns_name")
        self.public_ip = names.get("public_ip_address")
        self.private_ip = names.get("private_ip_address")
        self.private_dns_name = names.get("private_dns_name")
        self.block_device_mapping = {}


def restore(backend, snap):
    """Rebuild an ended cluster from its snapshot in ``backend``."""
    from cloudmesh.emr.local import model

    with backend.lock:
        cluster = model.Cluster.__new__(model.Cluster)
        attrs = {
            "keep_job_flow_alive_when_no_steps": snap.get("keep_alive"),
            "termination_protected": snap.get("termination_protected"),
            "ec2_subnet_id": snap.get("subnet"), "availability_zone": snap.get("zone"),
            "ec2_key_name": snap.get("key_name"),
        }
        model.moto_models.Cluster.__init__(
            cluster, backend, name=snap["name"], log_uri=snap.get("log_uri"),
            job_flow_role=snap.get("job_flow_role"), service_role=snap.get("service_role"),
            steps=[], instance_attrs=attrs, cluster_id=snap["id"],
            bootstrap_actions=snap.get("bootstrap_actions") or None,
            configurations=snap.get("configurations") or None,
            visible_to_all_users=snap.get("visible_to_all_users", False),
            release_label=snap.get("release_label"),
            step_concurrency_level=snap.get("step_concurrency_level") or 1,
        )
        cluster.instance_collection_type = "INSTANCE_GROUP"
        cluster.instance_fleets = []
        cluster.policies = snap.get("policies") or {}
        cluster.requested_subnet_ids = []
        cluster.set_release_details()
        cluster.applications = [
            model.moto_models.Application(name=a["Name"], version=a.get("Version"), args=[],
                                          additional_info={})
            for a in snap.get("applications", [])
        ]
        cluster._tags = dict(snap.get("tags") or {})
        owners = {}
        for member in snap.get("members", []):
            if member["kind"] == "fleet":
                owner = backend.add_instance_fleet(cluster.id, member["fleet"], launch=False)
                owner.id = member["id"]
            else:
                owner = backend.add_instance_groups(cluster.id, [{
                    "instance_count": member["count"], "instance_role": member["role"],
                    "instance_type": member["instance_type"], "market": member.get("market"),
                    "name": member.get("name"), "instance_group_id": member["id"],
                }])[0]
            owner.creation_date_time = _from_time(member.get("created"))
            owner.ready_date_time = _from_time(member.get("ready"))
            owners[member["id"]] = owner
        for entry in snap.get("instances", []):
            owner = owners.get(entry.get("member"))
            if owner is None:
                continue
            fleet = owner if isinstance(owner, model.InstanceFleet) else None
            instance = model.Instance(EndedEc2Instance(entry), None if fleet else owner,
                                              fleet=fleet)
            instance.id = entry["id"]
            instance.fleet_market = entry.get("market") if fleet else None
            cluster.add_instance(instance)
        for entry in snap.get("steps", []):
            step = model.Step(cluster.id, name=entry.get("name") or "",
                                      hadoop_jar_step=entry.get("hadoop_jar_step") or {},
                                      action_on_failure=entry.get("action_on_failure"))
            step.id = entry["id"]
            step.state = entry["state"]
            step.last_state_change_reason = entry.get("message")
            step.failure_details = entry.get("failure_details")
            step.creation_date_time = _from_time(entry.get("created"))
            step.start_date_time = _from_time(entry.get("started"))
            step.end_date_time = _from_time(entry.get("ended"))
            cluster.steps.append(step)
        cluster.state = snap["state"]
        cluster.state_change_code = snap.get("code")
        cluster.last_state_change_reason = snap.get("reason")
        cluster.creation_datetime = _from_time(snap.get("created"))
        cluster.ready_datetime = _from_time(snap.get("ready"))
        cluster.end_datetime = _from_time(snap.get("ended"))
        cluster.normalized_instance_hours = snap.get("hours") or 0
        if backend.engine is not None:
            backend.engine.adopt_ended(cluster)
        return cluster
