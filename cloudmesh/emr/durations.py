"""Durations and points in time as users type them: ``90s``, ``15m``, ``2h``, ``7d``, ``2026-11-01``.

Every option that takes a duration (``--idle-timeout``, ``--timeout``, ``--since``,
``--ttl``, ``--idle``) or a point in time (``--created-after``, ``--created-before``)
reads it here, so the words mean the same everywhere and a bad value is always the
same kind of error: a UsageError that names the option and the value.
"""

import datetime
import re

from cloudmesh.emr.errors import UsageError, shorten

# unit -> seconds; a plain number is seconds
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
EXAMPLES = "90s, 15m, 2h, 7d or plain seconds"
MOST_ECHOED = 60  # characters of a bad value shown back in the error


def shown(value):
    """``value`` as an option's error message may echo it: errors.shorten, kept shorter."""
    return shorten(value, MOST_ECHOED)


def seconds(value, option, minimum=None, maximum=None):
    """The number of seconds that ``value`` stands for (an int when whole).

    ``minimum`` and ``maximum`` (seconds) bound it; outside them is a UsageError that
    names the bounds in the user's units.
    """
    match = DURATION.match(str(value)) if value is not None else None
    if not match:
        raise UsageError(f"{option}: '{shown(value)}' is not a duration; use {EXAMPLES}")
    number = float(match.group(1)) * UNITS[(match.group(2) or "s").lower()]
    number = int(number) if number == int(number) else number
    if minimum is not None and number < minimum:
        raise UsageError(f"{option}: '{shown(value)}' is shorter than {human(minimum)}")
    if maximum is not None and number > maximum:
        raise UsageError(f"{option}: '{shown(value)}' is longer than {human(maximum)}")
    return number


def human(total):
    """Seconds as the largest whole unit that fits: 3600 -> '1h', 90 -> '90s', 5400 -> '90m'."""
    total = int(total)
    for unit in "dhm":  # weeks are read, never written: "7d" is how EMR's limits read
        size = UNITS[unit]
        if total and total % size == 0:
            return f"{total // size}{unit}"
    return f"{total}s"


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def moment(value, option, now=None):
    """The timezone-aware UTC datetime that ``value`` names.

    ``value`` is an ISO date or time (``2026-11-01``, ``2026-11-01T08:00Z``,
    ``2026-11-01 08:00+01:00``; no zone means UTC) or an age (``90m``, ``2d``: that long
    before ``now``).
    """
    text = str(value).strip() if value is not None else ""
    if DURATION.match(text):
        return (now or utcnow()) - datetime.timedelta(seconds=seconds(text, option))
    iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        when = datetime.datetime.fromisoformat(iso)
    except ValueError:
        raise UsageError(
            f"{option}: '{shown(value)}' is neither a date or time (2026-11-01, "
            f"2026-11-01T08:00Z) nor an age ({EXAMPLES})"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc)
