"""The RunJobFlow request of ``start``, and the config document of ``describe --format=config``.

A config file is a JSON or YAML document in RunJobFlow's own shape (the keyword
arguments of boto3's ``run_job_flow``, Airflow's ``JOB_FLOW_OVERRIDES``). The options of
the command line go over it, defaults fill what neither says, and the result is checked
by botocore's own parameter validation against the EMR service model, so the file is
read exactly as AWS would read it and an error names the path of the bad value.

``document(...)`` goes the other way: a described cluster as a config that ``start
--config`` accepts and that recreates it (no ids, no state).
"""

import copy
import datetime
import re

from cloudmesh.emr import durations
from cloudmesh.emr.errors import UsageError

# EMR's limits for an auto-termination policy's IdleTimeout (seconds)
IDLE_TIMEOUT_MIN = 60
IDLE_TIMEOUT_MAX = 7 * 86400
STEP_CONCURRENCY_MIN, STEP_CONCURRENCY_MAX = 1, 256
OFF = ("off", "none", "no")  # words that remove a policy in modify

APPLICATIONS = [{"Name": "Spark"}, {"Name": "Hadoop"}]
# what RunJobFlow gets when neither the file nor the command line says
REQUEST_DEFAULTS = {
    "JobFlowRole": "EMR_EC2_DefaultRole",
    "ServiceRole": "EMR_DefaultRole",
    "VisibleToAllUsers": True,
}
# tags EMR or this tool set on a cluster, not the user: a recreated cluster does not copy them
FOREIGN_TAG = re.compile(r"^(aws:|cloudmesh:request|cloudmesh:expires)")
# the tags of `start --ttl` and `--max-cost`, which `cms emr reap` reads
EXPIRES_TAG, MAX_COST_TAG = "cloudmesh:expires", "cloudmesh:max-cost"
DOLLARS = re.compile(r"^\s*\$?\s*(\d+(\.\d+)?|\.\d+)\s*$")
# a new cluster ends after an hour idle unless --idle-timeout or the settings say otherwise
DEFAULT_IDLE_TIMEOUT = "1h"
# the first releases of each line that have auto-termination (an idle timeout)
AUTO_TERMINATION_SINCE = {5: (5, 30, 0), 6: (6, 1, 0)}
TAG = re.compile(r"^([^=]+)=(.*)$", re.DOTALL)
BID = re.compile(r"^\s*(\d+(\.\d+)?|\.\d+)\s*$")
SCALING = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
S3_SCRIPT = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+")
COUNT = re.compile(r"^\s*\d+\s*$")


def redact_configurations(configurations):
    """A copy of Configurations (EMR's shape, nested) with the values of properties whose
    names say they hold a secret masked (redaction.mask: the rule every record follows)."""
    from cloudmesh.emr.redaction import mask

    return mask(copy.deepcopy(configurations or []))


# ---- reading and checking ---------------------------------------------------------------


def read_config(path):
    """The document of a JSON or YAML config file; UsageError when it is not one."""
    import json
    import os

    import yaml

    name = os.path.expanduser(str(path))
    try:
        with open(name, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise UsageError(f"--config: cannot read '{path}' ({reason})") from None
    try:
        if name.endswith(".json"):
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--config: '{path}' is not JSON: {error.msg} at line {error.lineno}"
                         ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"--config: '{path}' is not YAML{at}: "
                         f"{getattr(error, 'problem', None) or error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config: '{path}' must hold a mapping in RunJobFlow's shape "
                         "(Name, ReleaseLabel, Instances, ...)")
    return data


def _operation(name):
    import botocore.session

    return botocore.session.get_session().get_service_model("emr").operation_model(name)


def validate(request, operation="RunJobFlow", where="config"):
    """Check ``request`` with botocore's parameter validation against EMR's model.

    UsageError naming each bad path and what was expected.
    """
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(request, _operation(operation).input_shape)
    if report.has_errors():
        text = re.sub(r"<class '(\w+)'>", r"\1", report.generate_report())
        problems = "; ".join(line.strip() for line in text.splitlines() if line.strip())
        raise UsageError(f"{where}: {problems}")
    return request


def whole(value, option, minimum=0, maximum=None):
    """A whole number option, bounded; UsageError naming the option."""
    if isinstance(value, bool) or not COUNT.match(str(value)):
        raise UsageError(f"{option}: '{durations.shown(value)}' is not a whole number")
    number = int(value)
    if number < minimum:
        raise UsageError(f"{option}: {number} is less than {minimum}")
    if maximum is not None and number > maximum:
        raise UsageError(f"{option}: {number} is more than {maximum}")
    return number


def idle_policy(value, option="--idle-timeout"):
    """An AutoTerminationPolicy from a duration (60 s to 7 days, as EMR allows)."""
    return {"IdleTimeout": durations.seconds(value, option, IDLE_TIMEOUT_MIN, IDLE_TIMEOUT_MAX)}


def scaling_policy(value, option="--scaling"):
    """A ManagedScalingPolicy from MIN:MAX (instances)."""
    match = SCALING.match(str(value)) if value is not None else None
    if not match:
        raise UsageError(f"{option}: '{durations.shown(value)}' is not MIN:MAX, such as 2:10 "
                         "(instances)")
    low, high = int(match.group(1)), int(match.group(2))
    if low < 1 or high < low:
        raise UsageError(f"{option}: {low}:{high} needs 1 <= MIN <= MAX")
    return {"ComputeLimits": {"UnitType": "Instances", "MinimumCapacityUnits": low,
                              "MaximumCapacityUnits": high}}


def tags(values):
    """[{Key, Value}] from KEY=VALUE words; a later KEY wins."""
    found = {}
    for value in values or []:
        match = TAG.match(str(value))
        if not match or not match.group(1).strip():
            raise UsageError(f"--tag: '{durations.shown(value)}' is not KEY=VALUE")
        key = match.group(1).strip()
        if key.lower().startswith("aws:"):
            raise UsageError(f"--tag: '{key}' starts with aws:, which AWS keeps for itself")
        found[key] = match.group(2)
    return [{"Key": key, "Value": value} for key, value in found.items()]


def bootstrap_actions(values):
    """BootstrapActions from ``s3://bucket/script.sh[,arg1,arg2]`` words."""
    actions = []
    for value in values or []:
        path, *args = str(value).split(",")
        if not S3_SCRIPT.match(path.strip()):
            raise UsageError(f"--bootstrap: '{durations.shown(value)}' is not "
                             "s3://bucket/script.sh[,arg1,arg2]")
        path = path.strip()
        action = {"Name": path.rsplit("/", 1)[-1], "ScriptBootstrapAction": {"Path": path}}
        if args:
            action["ScriptBootstrapAction"]["Args"] = args
        actions.append(action)
    return actions


def bid_price(value, option="--bid"):
    """A spot bid in US dollars, as the string RunJobFlow takes."""
    if not BID.match(str(value)) or float(value) <= 0:
        raise UsageError(f"{option}: '{durations.shown(value)}' is not a price in US dollars "
                         "per hour, such as 0.25")
    return str(value).strip()


def task_group(node, count, spot=False, bid=None, option="--task"):
    """A TASK instance group; spot without a bid pays at most the on-demand price (no
    BidPrice), as EMR does."""
    group = {"Name": "Task", "InstanceRole": "TASK",
             "Market": "SPOT" if spot or bid is not None else "ON_DEMAND",
             "InstanceType": node, "InstanceCount": count}
    if bid is not None:
        if not spot:
            raise UsageError("--bid: a bid is for spot instances; add --spot")
        group["BidPrice"] = bid_price(bid)
    return group


# ---- the request of start -------------------------------------------------------------------


def _role(group):
    return group.get("InstanceRole") or group.get("InstanceGroupType")


def build(name, settings, config=None, **options):
    """The RunJobFlow request: ``config`` (a document), then the options over it, then the
    defaults of cloudmesh.yaml; returns (request, wanted) where ``wanted`` lists the
    (where, instance type) pairs to check against the release."""
    request = copy.deepcopy(config) if config else {}
    if not isinstance(request, dict):
        raise UsageError("config: must be a mapping in RunJobFlow's shape")
    given = {key: value for key, value in options.items() if value not in (None, False, [], ())}
    if name is not None:
        if not isinstance(name, str) or not name.strip() or len(name) > 256:
            raise UsageError("the cluster NAME must be 1 to 256 characters")
        request["Name"] = name
    elif not request.get("Name"):
        raise UsageError("'name': the cluster needs a name (NAME), or a Name in the config")
    release = given.get("release") or request.get("ReleaseLabel") or \
        settings.emr_default("release")
    request["ReleaseLabel"] = release
    request.setdefault("Applications", copy.deepcopy(APPLICATIONS))
    instances = request.setdefault("Instances", {})
    if not isinstance(instances, dict):
        raise UsageError("config: Instances must be a mapping")
    wanted = _groups(instances, settings, given)

    if given.get("auto_terminate"):
        if not request.get("Steps"):
            raise UsageError(
                "--auto-terminate: the cluster would have no steps, so it would end as soon as "
                "it is ready; give Steps in --config, or use --idle-timeout instead")
        instances["KeepJobFlowAliveWhenNoSteps"] = False
    instances.setdefault("KeepJobFlowAliveWhenNoSteps", True)
    instances.setdefault("TerminationProtected", False)
    for option, key in (("key", "Ec2KeyName"), ("subnet", "Ec2SubnetId")):
        if given.get(option):
            instances[key] = given[option]
    if given.get("zone"):
        instances.setdefault("Placement", {})["AvailabilityZone"] = given["zone"]

    idle = given.get("idle_timeout")
    if idle is not None and str(idle).strip().lower() in OFF:
        request.pop("AutoTerminationPolicy", None)
    elif idle is not None:
        request["AutoTerminationPolicy"] = idle_policy(idle)
    elif "AutoTerminationPolicy" not in request:
        default = default_idle_timeout(settings)
        if default is not None:
            request["AutoTerminationPolicy"] = idle_policy(
                default, "cloudmesh.emr.default.idle-timeout")
    if given.get("scaling"):
        request["ManagedScalingPolicy"] = scaling_policy(given["scaling"])
    loguri = given.get("loguri") or request.get("LogUri") or settings.emr_default("loguri")
    if loguri:
        if not re.match(r"^s3[an]?://[^/\s]+", str(loguri)):
            raise UsageError(f"--loguri: '{durations.shown(loguri)}' is not an s3:// URI")
        request["LogUri"] = loguri
    if given.get("bootstrap"):
        request["BootstrapActions"] = list(request.get("BootstrapActions") or []) + \
            bootstrap_actions(given["bootstrap"])
    limits = limit_tags(given.get("ttl"), given.get("max_cost"))
    if given.get("tags") or limits:
        merged = {t.get("Key"): t for t in request.get("Tags") or [] if isinstance(t, dict)}
        merged.update({t["Key"]: t for t in tags(given.get("tags") or [])})
        merged.update({t["Key"]: t for t in limits})
        request["Tags"] = list(merged.values())
    for key, value in REQUEST_DEFAULTS.items():
        request.setdefault(key, value)
    validate(request, where="config" if config else "start")
    return request, wanted


def default_idle_timeout(settings):
    """The idle timeout a new cluster gets when neither --idle-timeout nor the config says:
    cloudmesh.emr.default.idle-timeout, else none. (The place for a built-in default.)"""
    value = settings.get("emr", "default", "idle-timeout")
    if value is None:
        return DEFAULT_IDLE_TIMEOUT
    if str(value).strip().lower() in OFF:
        return None
    return value


def limit_tags(ttl=None, max_cost=None, now=None):
    """The tags of --ttl (the absolute UTC time the cluster expires) and --max-cost."""
    found = []
    if ttl is not None:
        seconds = durations.seconds(ttl, "--ttl", minimum=60)
        expires = (now or durations.utcnow()) + datetime.timedelta(seconds=seconds)
        found.append({"Key": EXPIRES_TAG,
                      "Value": expires.replace(microsecond=0).isoformat().replace("+00:00", "Z")})
    if max_cost is not None:
        match = DOLLARS.match(str(max_cost))
        if not match or float(match.group(1)) <= 0:
            raise UsageError(f"--max-cost: '{durations.shown(max_cost)}' is not an amount of "
                             "US dollars like 25 or 7.50")
        found.append({"Key": MAX_COST_TAG, "Value": match.group(1)})
    return found


def auto_termination(release):
    """Whether ``release`` (emr-X.Y.Z) supports an idle timeout: emr-5.30.0, emr-6.1.0 and
    later (and every emr-7); None when the label cannot be read."""
    match = re.match(r"^emr-(\d+)\.(\d+)\.(\d+)", str(release))
    if not match:
        return None
    version = tuple(int(part) for part in match.groups())
    first = AUTO_TERMINATION_SINCE.get(version[0])
    if first is None:
        return version[0] > max(AUTO_TERMINATION_SINCE)
    return version >= first


def _groups(instances, settings, given):
    """Put --master/--node/--count/--task over the file's instance groups (or make them);
    return the instance types to check, with where each came from."""
    task_options = [o for o in ("task_count", "spot", "bid") if given.get(o) is not None]
    if not given.get("task") and task_options:
        raise UsageError(f"--{task_options[0].replace('_', '-')}: is for a task group; "
                         "add --task=TYPE")
    if instances.get("InstanceFleets"):
        used = [o for o in ("master", "node", "count", "task") if given.get(o) is not None]
        if used:
            raise UsageError(f"--{used[0]}: the config describes InstanceFleets; set the "
                             "instance types and capacities there")
        wanted = []
        for f, fleet in enumerate(instances["InstanceFleets"]):
            for t, spec in enumerate(fleet.get("InstanceTypeConfigs") or []):
                wanted.append((f"Instances.InstanceFleets[{f}].InstanceTypeConfigs[{t}]"
                               ".InstanceType", spec.get("InstanceType")))
        return wanted
    groups = instances.get("InstanceGroups")
    from_file = bool(groups)
    if not from_file:
        if instances.get("MasterInstanceType"):  # the older uniform shape: leave it to AWS
            return [("Instances.MasterInstanceType", instances.get("MasterInstanceType"))]
        groups = instances["InstanceGroups"] = []
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise UsageError("config: Instances.InstanceGroups must be a list of mappings")

    def find(role):
        return next((g for g in groups if _role(g) == role), None)

    master = find("MASTER")
    if master is None:
        master = {"Name": "Master", "InstanceRole": "MASTER", "Market": "ON_DEMAND",
                  "InstanceType": settings.emr_default("master"), "InstanceCount": 1}
        groups.insert(0, master)
    if given.get("master"):
        master["InstanceType"] = given["master"]
    count = given.get("count")
    if count is None and not from_file:
        count = settings.emr_default("count")
    core = find("CORE")
    if count is not None:
        count = whole(count, "--count", minimum=1)
        if count == 1 and core is not None:
            groups.remove(core)
            core = None
        elif count > 1:
            if core is None:
                core = {"Name": "Core", "InstanceRole": "CORE", "Market": "ON_DEMAND",
                        "InstanceType": settings.emr_default("node")}
                groups.append(core)
            core["InstanceCount"] = count - 1
    if given.get("node") and core is not None:
        core["InstanceType"] = given["node"]
    elif given.get("node") and core is None:
        raise UsageError("--node: the cluster has no core nodes (--count=1); leave --node "
                         "out or give --count of 2 or more")
    if given.get("task"):
        task_count = whole(given.get("task_count") or 1, "--task-count", minimum=1)
        groups.append(task_group(given["task"], task_count, bool(given.get("spot")),
                                 given.get("bid")))
    options = {"MASTER": "--master", "CORE": "--node", "TASK": "--task"}
    wanted = []
    for i, group in enumerate(groups):
        option = options.get(_role(group))
        came_from_option = option and given.get(option.lstrip("-"))
        where = option if came_from_option or not from_file else \
            f"Instances.InstanceGroups[{i}].InstanceType"
        wanted.append((where, group.get("InstanceType")))
    return wanted


def summary(request):
    """What was asked, in the few words the action record has always carried."""
    groups = (request.get("Instances") or {}).get("InstanceGroups") or []
    counts = {}
    types = {}
    for group in groups:
        role = _role(group)
        counts[role] = counts.get(role, 0) + int(group.get("InstanceCount") or 0)
        types.setdefault(role, group.get("InstanceType"))
    asked = {"Name": request.get("Name"), "ReleaseLabel": request.get("ReleaseLabel")}
    if groups:
        asked.update({"Master": types.get("MASTER"), "Node": types.get("CORE"),
                      "Count": counts.get("MASTER", 0) + counts.get("CORE", 0)})
        if "TASK" in counts:
            asked.update({"Task": types.get("TASK"), "TaskCount": counts["TASK"]})
    if request.get("LogUri"):
        asked["LogUri"] = request["LogUri"]
    return asked


# ---- the config document of a described cluster ----------------------------------------------


def _group_config(group):
    config = {"Name": group.get("Name") or group.get("InstanceGroupType").title(),
              "InstanceRole": group.get("InstanceGroupType"),
              "Market": group.get("Market") or "ON_DEMAND",
              "InstanceType": group.get("InstanceType"),
              "InstanceCount": group.get("RequestedInstanceCount",
                                         group.get("RunningInstanceCount", 0))}
    if group.get("BidPrice") and config["Market"] == "SPOT" and \
            group.get("BidPrice") != "OnDemandPrice":
        config["BidPrice"] = group["BidPrice"]
    if group.get("Configurations"):
        config["Configurations"] = group["Configurations"]
    volumes = [v.get("VolumeSpecification") for v in group.get("EbsBlockDevices") or []
               if v.get("VolumeSpecification")]
    if volumes:
        config["EbsConfiguration"] = {"EbsBlockDeviceConfigs": [
            {"VolumeSpecification": spec, "VolumesPerInstance": 1} for spec in volumes]}
    if group.get("CustomAmiId"):
        config["CustomAmiId"] = group["CustomAmiId"]
    return config


def _fleet_config(fleet):
    config = {"Name": fleet.get("Name") or fleet.get("InstanceFleetType").title(),
              "InstanceFleetType": fleet.get("InstanceFleetType")}
    for key in ("TargetOnDemandCapacity", "TargetSpotCapacity"):
        if fleet.get(key) is not None:
            config[key] = fleet[key]
    specs = []
    for spec in fleet.get("InstanceTypeSpecifications") or []:
        item = {key: spec[key] for key in ("InstanceType", "WeightedCapacity", "BidPrice",
                                          "BidPriceAsPercentageOfOnDemandPrice",
                                          "Configurations", "CustomAmiId", "Priority")
                if spec.get(key) is not None}
        specs.append(item)
    config["InstanceTypeConfigs"] = specs
    if fleet.get("LaunchSpecifications"):
        config["LaunchSpecifications"] = fleet["LaunchSpecifications"]
    return config


def document(cluster, bootstrap=None, auto_termination=None, scaling=None, redact=None):
    """A config that ``start --config`` accepts and that recreates ``cluster`` (a
    ``Provider.describe`` record): no ids, no state, secrets redacted by ``redact``."""
    attributes = cluster.get("Ec2InstanceAttributes") or {}
    instances = {}
    if cluster.get("InstanceFleets"):
        instances["InstanceFleets"] = [_fleet_config(f) for f in cluster["InstanceFleets"]]
    else:
        order = {"MASTER": 0, "CORE": 1, "TASK": 2}
        groups = sorted(cluster.get("InstanceGroups") or [],
                        key=lambda g: order.get(g.get("InstanceGroupType"), 3))
        instances["InstanceGroups"] = [_group_config(g) for g in groups]
    instances["KeepJobFlowAliveWhenNoSteps"] = not cluster.get("AutoTerminate", False)
    instances["TerminationProtected"] = bool(cluster.get("TerminationProtected"))
    if attributes.get("Ec2KeyName"):
        instances["Ec2KeyName"] = attributes["Ec2KeyName"]
    if attributes.get("Ec2SubnetId"):
        instances["Ec2SubnetId"] = attributes["Ec2SubnetId"]
    elif attributes.get("Ec2AvailabilityZone"):
        instances["Placement"] = {"AvailabilityZone": attributes["Ec2AvailabilityZone"]}
    for ours, theirs in (("EmrManagedMasterSecurityGroup", "EmrManagedMasterSecurityGroup"),
                         ("EmrManagedSlaveSecurityGroup", "EmrManagedSlaveSecurityGroup"),
                         ("ServiceAccessSecurityGroup", "ServiceAccessSecurityGroup")):
        if attributes.get(theirs):
            instances[ours] = attributes[theirs]
    for key in ("AdditionalMasterSecurityGroups", "AdditionalSlaveSecurityGroups"):
        if attributes.get(key):
            instances[key] = attributes[key]

    config = {"Name": cluster.get("Name"), "ReleaseLabel": cluster.get("ReleaseLabel")}
    if cluster.get("LogUri"):
        config["LogUri"] = cluster["LogUri"]
    config["Applications"] = [{"Name": a["Name"]} for a in cluster.get("Applications") or []
                              if a.get("Name")]
    config["Instances"] = instances
    if bootstrap:
        config["BootstrapActions"] = [
            {"Name": b.get("Name") or b.get("ScriptPath", "").rsplit("/", 1)[-1],
             "ScriptBootstrapAction": {"Path": b.get("ScriptPath"),
                                       **({"Args": b["Args"]} if b.get("Args") else {})}}
            for b in bootstrap]
    configurations = cluster.get("Configurations") or []
    if configurations:
        config["Configurations"] = redact(configurations) if redact else configurations
    user_tags = [{"Key": t["Key"], "Value": t.get("Value", "")} for t in cluster.get("Tags") or []
                 if not FOREIGN_TAG.match(str(t.get("Key", "")))]
    if user_tags:
        config["Tags"] = user_tags
    config["JobFlowRole"] = attributes.get("IamInstanceProfile") or \
        REQUEST_DEFAULTS["JobFlowRole"]
    config["ServiceRole"] = cluster.get("ServiceRole") or REQUEST_DEFAULTS["ServiceRole"]
    config["VisibleToAllUsers"] = cluster.get("VisibleToAllUsers", True)
    for key in ("SecurityConfiguration", "AutoScalingRole", "ScaleDownBehavior", "CustomAmiId",
                "EbsRootVolumeSize", "StepConcurrencyLevel", "OSReleaseLabel"):
        if cluster.get(key) is not None:
            config[key] = cluster[key]
    if auto_termination:
        config["AutoTerminationPolicy"] = {"IdleTimeout": auto_termination["IdleTimeout"]}
    if scaling:
        config["ManagedScalingPolicy"] = {"ComputeLimits": scaling["ComputeLimits"]}
    return config
