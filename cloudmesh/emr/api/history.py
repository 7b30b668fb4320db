"""State changes as events, derived from what the database had and what AWS answered.

``Database.record`` writes only what changed and returns ``(record, previous)`` for each
record it wrote; ``events`` turns those pairs into ``event`` records: the resource, its
state before (None when first seen) and after, the reason AWS gave, and when it was seen.
An unchanged resource, or one whose other fields changed but not its state, makes none.
"""

# the kinds whose state is followed, and where their state and its reason are
FOLLOWED = {
    "cluster": ("Status.State", ("Status.StateChangeReason.Message",
                                 "Status.StateChangeReason.Code")),
    "instance": ("Status.State", ("Status.StateChangeReason.Message",
                                  "Status.StateChangeReason.Code")),
    "step": ("Status.State", ("Status.StateChangeReason.Message",
                              "Status.FailureDetails.Reason")),
    "group": ("Status.State", ("Status.StateChangeReason.Message",
                               "Status.StateChangeReason.Code")),
}


def dig(record, path):
    for key in path.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def events(kind, pairs, cluster, seen):
    """The event records of the (record, previous document) pairs of one kind."""
    if kind not in FOLLOWED:
        return []
    state_path, reason_paths = FOLLOWED[kind]
    found = []
    for record, previous in pairs:
        after = dig(record, state_path)
        before = dig(previous, state_path) if previous else None
        if after is None or after == before:
            continue
        reason = next((dig(record, p) for p in reason_paths if dig(record, p)), None)
        owner = cluster or record.get("ClusterId") or (record["Id"] if kind == "cluster"
                                                         else None)
        stamp = seen.strftime("%Y%m%dT%H%M%S.%fZ")
        found.append({
            "Id": f"{kind}/{record['Id']}/{stamp}/{after}", "Kind": kind,
            "Resource": record["Id"], "ClusterId": owner, "From": before, "To": after,
            "Reason": reason, "Seen": seen,
        })
    return found
