"""The five output formats: table, csv, json, yaml and dict.

table and csv carry a fixed set of columns per kind of record; json, yaml and dict
carry whole records. json is valid JSON with ISO-8601 datetimes; dict is a Python
literal that ``ast.literal_eval`` reads, for shell scripts. The printer knows the
shapes of records, never how they were fetched.
"""

import datetime
import shlex

from cloudmesh.emr.errors import UsageError, shorten

FORMATS = ("table", "csv", "json", "yaml", "dict")


def check_format(fmt, default="table"):
    """The format word in lower case; ``default`` when none was given (None)."""
    fmt = default if fmt is None else str(fmt).strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"--format: '{shorten(fmt)}' is not a format; use one of: {', '.join(FORMATS)}")
    return fmt


def dig(record, path):
    for key in path.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def when(value):
    """A datetime as ISO-8601 UTC to the second, for tables and csv."""
    if isinstance(value, datetime.datetime):
        value = value.astimezone(datetime.timezone.utc).replace(microsecond=0)
        return value.isoformat().replace("+00:00", "Z")
    return value


def step_reason(step):
    failure = dig(step, "Status.FailureDetails") or {}
    parts = [failure.get("Reason"), failure.get("Message")]
    text = ": ".join(p for p in parts if p)
    return text or dig(step, "Status.StateChangeReason.Message")


def step_command(step):
    args = dig(step, "Config.Args") or []
    jar = dig(step, "Config.Jar")
    words = ([] if jar in (None, "", "command-runner.jar") else [jar]) + list(args)
    return shlex.join(str(word) for word in words)


def action_result(action):
    if action.get("Error"):
        return f"error: {action['Error']['Message']}"
    return "ok"


def place(diagnosis):
    """``file:line in function`` of a diagnosis, when a stack trace named it."""
    where = diagnosis.get("Where") or {}
    if not where.get("File"):
        return ""
    text = where["File"] + (f":{where['Line']}" if where.get("Line") else "")
    return text + (f" in {where['Function']}" if where.get("Function") else "")


def log_place(diagnosis):
    if not diagnosis.get("Log"):
        return ""
    return diagnosis["Log"] + (f" line {diagnosis['LogLine']}" if diagnosis.get("LogLine") else "")


def cancel_result(action):
    response = action.get("Response") or {}
    if action.get("Error"):
        return f"error: {action['Error']['Message']}"
    return " ".join(str(part) for part in (response.get("Status"), response.get("Reason")) if part)


def diagnosis_text(diagnosis):
    """A diagnosis as a reader wants it in a terminal: what, where, what to do, the excerpt."""
    subject = (f"step {diagnosis['StepId']}" if diagnosis.get("StepId")
               else f"cluster {diagnosis.get('ClusterId')}")
    name = f" ({diagnosis['Name']})" if diagnosis.get("Name") else ""
    lines = [f"{subject}{name}: {diagnosis.get('State')}",
             f"  Cause: {diagnosis.get('Title')} [{diagnosis.get('Class')}]"]
    if diagnosis.get("Line"):
        lines.append(f"  Line:  {diagnosis['Line']}")
    if place(diagnosis):
        lines.append(f"  Where: {place(diagnosis)}")
    if log_place(diagnosis):
        lines.append(f"  Log:   {log_place(diagnosis)}")
    if diagnosis.get("Hint"):
        import textwrap

        lines += textwrap.wrap(diagnosis["Hint"], width=92, initial_indent="  Hint:  ",
                               subsequent_indent="         ")
    excerpt = diagnosis.get("Excerpt") or []
    if excerpt:
        lines.append("  Excerpt:")
        lines += [f"    | {line}" for line in excerpt]
    return "\n".join(lines)


# kind -> [(header, dotted path or function of the record)]
COLUMNS = {
    "cluster": [
        ("Id", "Id"), ("Name", "Name"), ("State", "Status.State"),
        ("Reason", "Status.StateChangeReason.Message"),
        ("Created", "Status.Timeline.CreationDateTime"), ("Hours", "NormalizedInstanceHours"),
    ],
    "instance": [
        ("Id", "Id"), ("EC2 id", "Ec2InstanceId"), ("Group", "InstanceGroupType"),
        ("State", "Status.State"), ("Market", "Market"), ("Type", "InstanceType"),
        ("Private DNS", "PrivateDnsName"),
    ],
    "step": [
        ("Id", "Id"), ("Name", "Name"), ("State", "Status.State"), ("Reason", step_reason),
        ("Created", "Status.Timeline.CreationDateTime"), ("Command", step_command),
    ],
    "diagnosis": [
        ("Step", "StepId"), ("Cluster", "ClusterId"), ("State", "State"), ("Class", "Class"),
        ("Line", "Line"), ("Where", place), ("Log", log_place), ("Hint", "Hint"),
    ],
    "cancel": [
        ("Step", "Target"), ("Cluster", "ClusterId"), ("Was", "Response.PreviousState"),
        ("Cancel", cancel_result),
    ],
    "action": [
        ("Action", "Action"), ("Target", "Target"), ("Cluster", "ClusterId"),
        ("Result", action_result), ("Time", "Time"),
    ],
    "event": [
        ("Seen", "Seen"), ("Kind", "Kind"), ("Resource", "Resource"), ("From", "From"),
        ("To", "To"), ("Reason", "Reason"),
    ],
    "doctor": [
        ("Status", "Status"), ("Check", "Check"), ("Detail", "Detail"), ("Fix", "Fix"),
    ],
    "reap": [
        ("Cluster", "Id"), ("Name", "Name"), ("State", "State"), ("Decision", "Decision"),
        ("Reasons", lambda r: "; ".join(r.get("Reasons") or [])),
    ],
    "group": [
        ("Id", "Id"), ("Type", lambda g: role(g)), ("Market", lambda g: group_market(g)),
        ("Instance type", lambda g: group_types(g)), ("Requested", lambda g: group_count(g, "Requested")),
        ("Running", lambda g: group_count(g, "Running")), ("State", "Status.State"),
    ],
}


def group_market(group):
    """ON_DEMAND or SPOT (with the bid, when there is one); a fleet's mix of both."""
    if group.get("Market"):
        bid = group.get("BidPrice")
        return f"{group['Market']} {bid}" if bid and group["Market"] == "SPOT" else group["Market"]
    markets = [m for m, key in (("ON_DEMAND", "TargetOnDemandCapacity"),
                                ("SPOT", "TargetSpotCapacity")) if group.get(key)]
    return "+".join(markets)


def group_types(group):
    return group.get("InstanceType") or _join(
        spec.get("InstanceType") for spec in group.get("InstanceTypeSpecifications", []))


def group_count(group, which):
    """Requested or Running instances of a group; a fleet's target or provisioned capacity."""
    value = group.get(f"{which}InstanceCount")
    if value is None:
        value = capacity(group, "Target" if which == "Requested" else "Provisioned")
    return value


def cell(record, column):
    value = column(record) if callable(column) else dig(record, column)
    value = when(value)
    return "" if value is None else value


def rows(records, kind):
    columns = COLUMNS[kind]
    return [h for h, _ in columns], [[cell(r, c) for _, c in columns] for r in records]


def _join(items):
    return ", ".join(str(item) for item in items if item)


# describe lists the groups (or fleets) of a cluster master first, as EMR's console does
ROLE_ORDER = {"MASTER": 0, "CORE": 1, "TASK": 2}


def role(group):
    return group.get("InstanceGroupType") or group.get("InstanceFleetType")


def capacity(fleet, which):
    """A fleet's on-demand plus spot capacity (``which``: Provisioned or Target)."""
    parts = [fleet.get(f"{which}{market}Capacity") for market in ("OnDemand", "Spot")]
    return None if all(p is None for p in parts) else sum(p or 0 for p in parts)


def describe_rows(cluster):
    """The (field, value) pairs of describe's two-column table."""
    groups = cluster.get("InstanceGroups") or cluster.get("InstanceFleets") or []
    sizes = []
    for group in sorted(groups, key=lambda g: ROLE_ORDER.get(role(g), len(ROLE_ORDER))):
        kind = group.get("InstanceType") or _join(
            spec.get("InstanceType") for spec in group.get("InstanceTypeSpecifications", [])
        )
        running = group.get("RunningInstanceCount", capacity(group, "Provisioned"))
        requested = group.get("RequestedInstanceCount", capacity(group, "Target"))
        sizes.append(f"{role(group)}: {running}/{requested} x {kind}")
    apps = [f"{a.get('Name')} {a.get('Version') or ''}".strip()
            for a in cluster.get("Applications", [])]
    fields = [
        ("Id", cluster.get("Id")),
        ("Name", cluster.get("Name")),
        ("State", dig(cluster, "Status.State")),
        ("Reason", dig(cluster, "Status.StateChangeReason.Message")),
        ("Region", cluster.get("Region")),
        ("Availability zone", dig(cluster, "Ec2InstanceAttributes.Ec2AvailabilityZone")),
        ("Release", cluster.get("ReleaseLabel")),
        ("Applications", _join(apps)),
        ("Instances (running/requested)", "; ".join(sizes)),
        ("Master public DNS", cluster.get("MasterPublicDnsName")),
        ("Normalized hours", cluster.get("NormalizedInstanceHours")),
        ("Created", dig(cluster, "Status.Timeline.CreationDateTime")),
        ("Ready", dig(cluster, "Status.Timeline.ReadyDateTime")),
        ("Ended", dig(cluster, "Status.Timeline.EndDateTime")),
        ("Log URI", cluster.get("LogUri")),
        ("Termination protected", cluster.get("TerminationProtected")),
        ("Auto-terminate", cluster.get("AutoTerminate")),
        ("Step concurrency", cluster.get("StepConcurrencyLevel")),
    ]
    return [(field, "" if value is None else when(value)) for field, value in fields]


def plain(value):
    """Records with datetimes as ISO-8601 strings: what json and dict can carry."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _table(headers, body):
    from tabulate import tabulate

    return tabulate(body, headers=headers, tablefmt="simple", disable_numparse=True)


def _csv(headers, body):
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(body)
    return out.getvalue().rstrip("\n")


def _whole(data, fmt):
    if fmt == "json":
        import json

        return json.dumps(plain(data), indent=2)
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(plain(data), sort_keys=False, default_flow_style=False).rstrip("\n")
    import pprint

    return pprint.pformat(plain(data), width=100, sort_dicts=False)


def render(records, kind, fmt="table"):
    """A list of records of one kind, in format ``fmt``."""
    fmt = check_format(fmt)
    if fmt in ("json", "yaml", "dict"):
        return _whole(records, fmt)
    headers, body = rows(records, kind)
    return _table(headers, body) if fmt == "table" else _csv(headers, body)


def render_one(record, fmt="table", pairs=None):
    """One record: whole in json/yaml/dict, else its (field, value) pairs in two columns."""
    fmt = check_format(fmt)
    if fmt in ("json", "yaml", "dict"):
        return _whole(record, fmt)
    pairs = pairs if pairs is not None else [(k, when(v)) for k, v in record.items()
                                             if not isinstance(v, (dict, list))]
    body = [[field, "" if value is None else value] for field, value in pairs]
    return _table(["Field", "Value"], body) if fmt == "table" else _csv(["Field", "Value"], body)


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values):
    """One line of block characters, low to high, for a series of numbers."""
    values = [v for v in values if v is not None]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[0 if high == 0 else len(SPARKS) // 2] * len(values)
    scale = (len(SPARKS) - 1) / (high - low)
    return "".join(SPARKS[round((v - low) * scale)] for v in values)


def number(value):
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else value


def render_metrics(records, fmt="table"):
    """Metric records: the table shows each metric's latest, minimum, maximum and a
    sparkline; csv carries every data point (Metric, Timestamp, Value); json, yaml and
    dict the whole records."""
    fmt = check_format(fmt)
    if fmt in ("json", "yaml", "dict"):
        return _whole(records, fmt)
    if fmt == "csv":
        body = [[r["Metric"], when(p["Timestamp"]), number(p["Value"])]
                for r in records for p in r.get("Datapoints", [])]
        return _csv(["Metric", "Timestamp", "Value"], body)
    body = [[r["Metric"], number(r.get("Latest")), number(r.get("Minimum")),
             number(r.get("Maximum")), sparkline(p["Value"] for p in r.get("Datapoints", []))]
            for r in records]
    return _table(["Metric", "Latest", "Min", "Max", "Trend"], body)


def dollars(value, places=2):
    """USD to ``places`` decimals; a price below that shows its own digits (spot 0.00001)."""
    if value is None:
        return ""
    if 0 < value < 10 ** -places:
        return f"{value:.8f}".rstrip("0")
    return f"{value:.{places}f}"


def render_cost(report, fmt="table"):
    """A `cost` report: one row per cluster group and instance type (its price per
    instance-hour, instances running, dollars per hour now and so far), a row per cluster
    and a total row; json, yaml and dict the whole report."""
    fmt = check_format(fmt)
    if fmt in ("json", "yaml", "dict"):
        return _whole(report, fmt)
    headers = ["Cluster", "State", "Group", "Type", "Market", "Running", "EC2 $/h", "EMR $/h",
               "$/h now", "$ so far", "Price from"]
    body = []
    for cluster in report["Clusters"]:
        for row in cluster["Groups"]:
            body.append([cluster["Id"], cluster["State"], row["Role"], row["InstanceType"],
                         row["Market"], row["Running"], dollars(row["Ec2Price"], 4),
                         dollars(row["EmrPrice"], 4), dollars(row["DollarsPerHour"]),
                         dollars(row["DollarsSoFar"]), row["PriceSource"] or "unknown"])
        body.append([cluster["Id"], cluster["State"], "cluster", "", "", "", "", "",
                     dollars(cluster["DollarsPerHour"]), dollars(cluster["DollarsSoFar"]), ""])
    body.append(["total", "", "", "", "", "", "", "", dollars(report["DollarsPerHour"]),
                 dollars(report["DollarsSoFar"]), ""])
    if fmt == "csv":
        return _csv(headers, body)
    return (f"{_table(headers, body)}\n"
            f"USD as of {when(report['AsOf'])}; {report['NotCounted']}.")


def render_config(document):
    """A cluster's config document as the YAML file ``start --config`` reads."""
    import yaml

    return yaml.safe_dump(plain(document), sort_keys=False, default_flow_style=False,
                          allow_unicode=True).rstrip("\n")


class Progress:
    """A progress bar on stderr for boto3's transfer callback (tqdm)."""

    def __init__(self, total, label):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=label, leave=False)

    def __call__(self, sent):
        self.bar.update(sent)

    def close(self):
        self.bar.close()
