"""Durations and points in time as every option reads them."""

import datetime

import pytest

from cloudmesh.emr import durations
from cloudmesh.emr.errors import UsageError

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text, expected", [
    ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("45", 45), ("1.5h", 5400),
    (" 2H ", 7200), ("1w", 604800),
])
def test_durations_in_each_unit(text, expected):
    assert durations.seconds(text, "--timeout") == expected


@pytest.mark.parametrize("text", ["", "soon", "-5m", "5 minutes", "m", "1e3", None, "5mm"])
def test_a_bad_duration_names_the_option_and_the_value(text):
    with pytest.raises(UsageError) as caught:
        durations.seconds(text, "--idle-timeout")
    assert caught.value.message.startswith("--idle-timeout: ")
    assert "90s, 15m, 2h, 7d" in caught.value.message


def test_bounds_are_said_in_the_users_units():
    with pytest.raises(UsageError, match="shorter than 1m"):
        durations.seconds("30s", "--idle-timeout", minimum=60, maximum=7 * 86400)
    with pytest.raises(UsageError, match="longer than 7d"):
        durations.seconds("8d", "--idle-timeout", minimum=60, maximum=7 * 86400)
    assert durations.seconds("7d", "--idle-timeout", minimum=60, maximum=7 * 86400) == 604800


def test_a_long_bad_value_is_not_echoed_whole():
    with pytest.raises(UsageError) as caught:
        durations.seconds("x" * 5000, "--ttl")
    assert len(caught.value.message) < 200


@pytest.mark.parametrize("text, expected", [
    ("2026-11-01", datetime.datetime(2026, 11, 1, tzinfo=UTC)),
    ("2026-11-01T08:00Z", datetime.datetime(2026, 11, 1, 8, 0, tzinfo=UTC)),
    ("2026-11-01T08:00+01:00", datetime.datetime(2026, 11, 1, 7, 0, tzinfo=UTC)),
    ("90m", NOW - datetime.timedelta(minutes=90)),
    ("2d", NOW - datetime.timedelta(days=2)),
])
def test_moments_are_dates_times_or_ages(text, expected):
    assert durations.moment(text, "--created-after", now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "", "01/11/2026"])
def test_a_bad_moment_is_a_usage_error(text):
    with pytest.raises(UsageError, match="^--created-before: "):
        durations.moment(text, "--created-before", now=NOW)


def test_human_takes_the_largest_whole_unit():
    assert [durations.human(s) for s in (90, 3600, 5400, 86400, 0)] == [
        "90s", "1h", "90m", "1d", "0s"]
