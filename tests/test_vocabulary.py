"""The filter words of `cms emr list`: each word means the AWS states issue 2 gives it.

The expected meanings are written out here from the issue, not read from the
vocabulary module, so a wrong entry in the module makes a test fail.
"""

import pytest

from cloudmesh.emr.api.vocabulary import split_words, translate
from cloudmesh.emr.errors import UsageError
from emr_helpers import ACTIVE, AWS_NAMES, MEANING

OPTION = {"cluster status": "--status", "instance status": "--status",
          "instance type": "--type", "step state": "--state"}

WORDS = [(kind, word, names) for kind, table in MEANING.items() for word, names in table.items()]
NAMES = [(kind, name) for kind, names in AWS_NAMES.items() for name in names]


@pytest.mark.parametrize("kind,word,names", WORDS, ids=[f"{k}:{w}" for k, w, _ in WORDS])
def test_each_word_means_its_aws_states(kind, word, names):
    assert sorted(translate(kind, [word])) == sorted(names)


@pytest.mark.parametrize("kind,word,names", WORDS, ids=[f"{k}:{w}" for k, w, _ in WORDS])
def test_words_are_case_insensitive(kind, word, names):
    assert sorted(translate(kind, [word.upper()])) == sorted(names)
    assert sorted(translate(kind, [word.capitalize()])) == sorted(names)


@pytest.mark.parametrize("kind,name", NAMES, ids=[f"{k}:{n}" for k, n in NAMES])
def test_aws_names_are_accepted_in_any_case(kind, name):
    for spelling in (name, name.lower(), name.title(), name[0].lower() + name[1:]):
        assert translate(kind, [spelling]) == [name], spelling


def test_active_is_every_state_a_cluster_can_work_in():
    assert sorted(translate("cluster status", ["active"])) == sorted(ACTIVE)
    assert "TERMINATED" not in translate("cluster status", ["active"])
    assert "TERMINATED_WITH_ERRORS" not in translate("cluster status", ["active"])


@pytest.mark.parametrize("kind", list(MEANING))
def test_all_and_nothing_mean_no_filter(kind):
    assert translate(kind, None) == []
    assert translate(kind, []) == []
    assert translate(kind, ["all"]) == []
    assert translate(kind, ["ALL"]) == []
    # all wins over any narrower word: the union of everything and something is everything
    first = next(iter(MEANING[kind]))
    assert translate(kind, [first, "all"]) == []
    assert translate(kind, [f"{first},all"]) == []


@pytest.mark.parametrize("kind", list(MEANING))
def test_repeated_and_comma_separated_words_are_a_union(kind):
    (w1, n1), (w2, n2), *_ = MEANING[kind].items()
    union = sorted(set(n1) | set(n2))
    assert sorted(translate(kind, [w1, w2])) == union
    assert sorted(translate(kind, [f"{w1},{w2}"])) == union
    assert sorted(translate(kind, [f" {w1} , {w2} "])) == union
    assert sorted(translate(kind, [f"{w1},", w2])) == union


def test_union_has_each_state_once():
    states = translate("cluster status", ["active", "wait", "RUNNING", "run,start"])
    assert sorted(states) == sorted(ACTIVE)
    assert len(states) == len(set(states))
    states = translate("cluster status", ["shutdown", "error", "terminated"])
    assert sorted(states) == ["TERMINATED", "TERMINATED_WITH_ERRORS"]


def test_a_word_and_an_aws_name_mix():
    assert sorted(translate("step state", ["failed", "cancel_pending"])) == [
        "CANCEL_PENDING", "FAILED"]
    assert sorted(translate("instance status", ["down", "Provisioning"])) == [
        "PROVISIONING", "TERMINATED"]


def test_words_of_one_filter_are_not_words_of_another():
    # 'active' is a cluster word only; 'down' an instance word only; 'wait' not a step word
    for kind, word in (("instance status", "active"), ("cluster status", "down"),
                       ("step state", "wait"), ("instance type", "run"),
                       ("cluster status", "PENDING"), ("step state", "WAITING")):
        with pytest.raises(UsageError):
            translate(kind, [word])


@pytest.mark.parametrize("kind", list(MEANING))
def test_unknown_word_is_a_usage_error_naming_it_and_the_valid_ones(kind):
    with pytest.raises(UsageError) as caught:
        translate(kind, ["bogus"])
    error = caught.value
    assert error.exit_code == 2
    message = error.message
    assert "\n" not in message
    assert "'bogus'" in message
    assert OPTION[kind] in message
    for word in ["all", *MEANING[kind]]:
        assert word in message, word


@pytest.mark.parametrize("kind", list(MEANING))
def test_unknown_word_is_never_dropped_among_good_ones(kind):
    good = next(iter(MEANING[kind]))
    for values in ([good, "nonsense"], [f"{good},nonsense"], ["nonsense", good]):
        with pytest.raises(UsageError, match="nonsense"):
            translate(kind, values)


@pytest.mark.parametrize("kind", list(MEANING))
@pytest.mark.parametrize("values", [[""], [" "], [","], ["", ""]])
def test_an_option_given_with_no_word_is_refused(kind, values):
    """`--status=$STATE` with STATE unset is a mistake, not a wish for everything."""
    with pytest.raises(UsageError) as caught:
        translate(kind, values)
    message = caught.value.message
    assert OPTION[kind] in message and "no word" in message
    for word in ["all", *MEANING[kind]]:
        assert word in message, word


def test_split_words_flattens_repeats_and_commas():
    assert split_words(["a,b", "c", " d , ,e "]) == ["a", "b", "c", "d", "e"]
    assert split_words(None) == []
    assert split_words([]) == []
    assert split_words([","]) == []


def test_the_usage_text_offers_every_word():
    from cloudmesh.emr.command.emr import EmrCommand

    usage = EmrCommand.usage()
    options = usage[usage.index("Options:"):]
    for table in MEANING.values():
        for word in table:
            assert word in options, word
