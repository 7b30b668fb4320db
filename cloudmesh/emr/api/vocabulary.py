"""The words users type for states and groups, and the AWS names they stand for.

Each filter is a table: a word maps to the AWS names it means. AWS's own names
are accepted too (any case), ``all`` means no filter, and several words mean the
union of what each one means. An unknown word is an error that names it and
lists the valid ones; it is never dropped.
"""

from cloudmesh.emr.errors import UsageError, shorten

CLUSTER_STATUS = {
    "start": ["STARTING"],
    "boot": ["BOOTSTRAPPING"],
    "run": ["RUNNING"],
    "wait": ["WAITING"],
    "terminating": ["TERMINATING"],
    "shutdown": ["TERMINATED"],
    "error": ["TERMINATED_WITH_ERRORS"],
    "active": ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING"],
}

INSTANCE_STATUS = {
    "start": ["AWAITING_FULFILLMENT"],
    "provision": ["PROVISIONING"],
    "boot": ["BOOTSTRAPPING"],
    "run": ["RUNNING"],
    "down": ["TERMINATED"],
}

INSTANCE_TYPE = {
    "master": ["MASTER"],
    "core": ["CORE"],
    "task": ["TASK"],
}

STEP_STATE = {
    "pending": ["PENDING"],
    "canceling": ["CANCEL_PENDING"],
    "running": ["RUNNING"],
    "completed": ["COMPLETED"],
    "cancelled": ["CANCELLED"],
    "failed": ["FAILED"],
    "interrupted": ["INTERRUPTED"],
}

# the option that carries each vocabulary, for error messages
FILTERS = {
    "cluster status": ("--status", CLUSTER_STATUS),
    "instance status": ("--status", INSTANCE_STATUS),
    "instance type": ("--type", INSTANCE_TYPE),
    "step state": ("--state", STEP_STATE),
}

ACTIVE_CLUSTER_STATES = CLUSTER_STATUS["active"]


def split_words(values):
    """Flatten repeated and comma-separated option values: ['a,b', 'c'] -> ['a', 'b', 'c']."""
    words = []
    for value in values or []:
        words.extend(part.strip() for part in str(value).split(",") if part.strip())
    return words


def aws_names(kind):
    """The AWS names the words of vocabulary ``kind`` stand for, each once, in table order."""
    names = []
    for meaning in FILTERS[kind][1].values():
        names.extend(n for n in meaning if n not in names)
    return names


def words(kind):
    """Every word vocabulary ``kind`` accepts as it is written: all, ours, AWS's."""
    return ["all", *FILTERS[kind][1], *aws_names(kind)]


def spellings(kind):
    """The words of ``kind`` in lower and in upper case: what the REST spec lists."""
    listed = []
    for case in (str.lower, str.upper):
        listed.extend(case(w) for w in words(kind) if case(w) not in listed)
    return listed


def translate(kind, values):
    """The AWS names that the words ``values`` mean, in a stable order; [] for no filter.

    ``kind`` is a key of FILTERS. Raises UsageError naming the first unknown word, or
    when the option was given with no word at all.
    """
    option, table = FILTERS[kind]
    names = aws_names(kind)
    given = split_words(values)
    valid = ", ".join(words(kind))
    if values and not given:  # --status= with nothing after it: an empty shell variable?
        raise UsageError(f"{option}: no word given; use one of: {valid}")
    if not given or any(word.lower() == "all" for word in given):
        return []
    wanted = []
    for word in given:
        meaning = table.get(word.lower())
        if meaning is None and word.upper() in names:
            meaning = [word.upper()]
        if meaning is None:
            raise UsageError(f"{option}: '{shorten(word)}' is not a {kind}; use one of: {valid}")
        wanted.extend(name for name in meaning if name not in wanted)
    return wanted


# --on-failure of run and stream: what EMR does when the step fails (ActionOnFailure)
ON_FAILURE = {
    "continue": "CONTINUE",
    "cancel": "CANCEL_AND_WAIT",
    "terminate": "TERMINATE_CLUSTER",
}

# the step logs EMR writes to <LogUri>/<cluster>/steps/<step>/FILE.gz
STEP_LOG_FILES = ("stderr", "stdout", "controller", "syslog")

# step states in which a step has ended, and the ones that count as its failure
STEP_ENDED = ("COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED")
STEP_NOT_OK = ("CANCELLED", "FAILED", "INTERRUPTED")


def one_word(option, table, value, default):
    """The AWS name of ``value`` in ``table`` (any case, AWS's own names too)."""
    if value is None:
        return table[default]
    word = str(value).strip()
    if word.lower() in table:
        return table[word.lower()]
    if word.upper() in table.values():
        return word.upper()
    raise UsageError(f"{option}: '{word}' is not one of: {', '.join(table)}")
