"""Retry policies of bank files: BioMAJ's grammar, checked at definition time."""

from __future__ import annotations

import inspect

import pytest
import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from conveyor.mirror.errors import DefinitionError
from conveyor.mirror.retry import (
    _STOP,
    _WAIT,
    DEFAULT_STOP,
    DEFAULT_WAIT,
    MAX_POLICY_LENGTH,
    RetryPolicy,
    _Factory,
    parse_stop,
    parse_wait,
    retry_policy,
)

ON_OSERROR = tenacity.retry_if_exception_type(OSError)

README_CHAIN = (
    "wait_chain(*[wait_fixed(3) for i in range(3)] + [wait_fixed(7) for i in range(2)]"
    " + [wait_fixed(9)])"
)

GOOD_STOPS = [
    DEFAULT_STOP,
    "stop_never | stop_after_attempt(5)",
    "stop_after_attempt(5) | stop_after_delay(60)",
    "stop_after_attempt(5) & stop_after_delay(60)",
    "stop_any(stop_after_attempt(3), stop_after_delay(10))",
    "stop_all(stop_after_attempt(3), stop_after_delay(10))",
    "stop_after_attempt(max_attempt_number=4)",
    "stop_after_delay(1e300)",
    "  stop_after_attempt(2)  ",
]

GOOD_WAITS = [
    DEFAULT_WAIT,
    "wait_none",
    "wait_none + wait_random(1, 2)",
    "wait_fixed(3) + wait_random(0, 2)",
    "wait_combine(wait_fixed(3), wait_random(1, 2))",
    "wait_chain(wait_fixed(3), wait_random(1, 2))",
    "wait_exponential(multiplier=1, min=4, max=10)",
    "wait_exponential(multiplier=0.5, max=10, exp_base=3, min=1)",
    "wait_random_exponential(multiplier=1, max=60)",
    "wait_incrementing(start=1, increment=2, max=10)",
    "wait_random(min=0.5, max=1.5)",
    README_CHAIN,
]

BAD_STOPS = [
    ("stop_after_attempts(5)", "unknown name 'stop_after_attempts'"),
    ("stop_after_attempts(5)", "did you mean stop_after_attempt?"),
    ("I love python", "not a valid expression"),
    ("", "not a valid expression"),
    ("stop_after_attempt(5) & 1", "& combines stop policies, not 1"),
    ("stop_after_attempt(5) | wait_none", "wait_none belongs in a wait policy"),
    ("stop_after_attempt(5) + stop_after_delay(3)", "not +"),
    ("wait_fixed(3)", "wait_fixed belongs in a wait policy, not in a stop policy"),
    ('stop_after_attempt("a")', "must be a whole number of at least 1, not 'a'"),
    ("stop_after_attempt(0)", "at least 1, not 0"),
    ("stop_after_attempt(2.5)", "whole number"),
    ("stop_after_attempt(True)", "whole number"),
    ("stop_after_attempt(1, 2)", "too many positional arguments"),
    ("stop_after_delay(-1)", "non-negative"),
    ("stop_after_delay(1e999)", "finite"),
    ("stop_after_delay(10 ** 3)", "operator Pow is not allowed"),
    ("stop_any()", "needs at least one argument"),
    ("stop_all(stop_after_attempt(3), 3)", "every argument must be a stop policy, not 3"),
    ("stop_any(stop_after_attempt)", "the function stop_after_attempt itself"),
    ("stop_never()", "write it without ()"),
    ("stop_when_event_set(event)", "needs a Python object and cannot be written in a bank file"),
    ("__import__('os')", "unknown name '__import__'"),
    ("stop_never.__class__", "attribute access (.__class__) is not allowed"),
    ("stop_after_attempt(5)[0]", "Subscript is not allowed"),
    ("(lambda: stop_never)()", "only the functions of a stop policy can be called"),
    ("stop_never or stop_after_attempt(3)", "BoolOp is not allowed"),
    ("stop_any(**[])", "** is not allowed"),
    ("5", "it gives 5, not a stop policy"),
    ("-" * 900 + "1", "nested too deeply"),
]

BAD_WAITS = [
    ("wait_random", "the function wait_random itself"),
    ("wait_none()", "write it without ()"),
    ("stop_after_attempt(3)", "stop_after_attempt belongs in a stop policy"),
    ("wait_fixed(-1)", "wait must be a finite non-negative number, not -1"),
    ("wait_exponential(multiplier=-2)", "multiplier must be a finite non-negative number"),
    ("wait_random(1, max='2')", "max must be a finite non-negative number, not '2'"),
    ("wait_fixed(1, seconds=2)", "unexpected keyword argument 'seconds'"),
    ("wait_fixed.__class__", "attribute access (.__class__) is not allowed"),
    ("wait_fixed(1) | wait_fixed(2)", "wait policies add up with +"),
    ("wait_fixed(1) + 1", "+ combines wait policies, not 1"),
    ("wait_combine(wait_fixed(1), 2)", "every argument must be a wait policy, not 2"),
    ("wait_chain()", "needs at least one argument"),
    ("wait_chain([wait_fixed(1)])", "spread it into a call with *"),
    ("wait_chain(*range(3))", "* spreads a list of policies, not range(0, 3)"),
    ("wait_chain(*[wait_fixed(1) for i in range(101)])", "from 0 to 100, not 101"),
    ("wait_chain(*[wait_none for i in range(60)] + [wait_none for i in range(60)])", "at most 100"),
    ("wait_chain(*[wait_none for i in 3])", "not iterable"),
    ("wait_chain(*[wait_none for i in range(2)] + [i])", "'i' is not defined"),
    ("[wait_fixed(1)]", "it gives a list"),
]


def test_defaults_are_biomajs() -> None:
    assert retry_policy(None, None) == RetryPolicy(stop=DEFAULT_STOP, wait=DEFAULT_WAIT)
    assert retry_policy(None, None) == RetryPolicy(
        stop="stop_after_attempt(3)", wait="wait_fixed(3)"
    )


@pytest.mark.parametrize("text", GOOD_STOPS)
def test_accepted_stops_retry_until_success(text: str) -> None:
    stop = parse_stop(text)
    assert isinstance(stop, stop_base)
    outcomes: list[object] = [OSError("flaky"), "done"]

    def flaky() -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    retrying = retry_policy(text, "wait_none").retrying(retry=ON_OSERROR, sleep=lambda _: None)
    assert retrying(flaky) == "done"
    assert retrying.statistics["attempt_number"] == 2


@pytest.mark.parametrize("text", GOOD_WAITS)
def test_accepted_waits_give_finite_delays(text: str) -> None:
    assert isinstance(parse_wait(text), wait_base)
    delays: list[float] = []
    retrying = retry_policy("stop_after_attempt(4)", text).retrying(
        retry=ON_OSERROR, sleep=delays.append
    )
    with pytest.raises(OSError):
        retrying(_always_fails)
    assert len(delays) == 3
    assert all(0 <= delay < 1000 for delay in delays)


@pytest.mark.parametrize(("text", "reason"), BAD_STOPS)
def test_rejected_stops_say_why(text: str, reason: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_stop(text)
    assert reason in str(caught.value)
    assert str(caught.value).startswith("invalid stop policy")


@pytest.mark.parametrize(("text", "reason"), BAD_WAITS)
def test_rejected_waits_say_why(text: str, reason: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_wait(text)
    assert reason in str(caught.value)
    assert str(caught.value).startswith("invalid wait policy")


def test_definition_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown name 'wait_fixd'"):
        parse_wait("wait_fixd(3)")


def test_overlong_policies_are_refused_before_parsing() -> None:
    text = "stop_never | " * 80 + "stop_never"
    assert len(text) > MAX_POLICY_LENGTH
    with pytest.raises(DefinitionError, match="at most 1000 allowed"):
        parse_stop(text)
    # Just under the limit, the same kind of expression is fine.
    assert isinstance(parse_stop("stop_never | " * 70 + "stop_never"), stop_base)


def test_policies_are_checked_when_defined() -> None:
    with pytest.raises(DefinitionError, match="unknown name 'stop_after_attempts'"):
        retry_policy("stop_after_attempts(5)", None)
    with pytest.raises(DefinitionError, match="non-negative"):
        RetryPolicy(stop=DEFAULT_STOP, wait="wait_fixed(-1)")


def _always_fails() -> None:
    raise OSError("remote went away")


def test_stop_after_attempt_stops_after_exactly_that_many_each_time() -> None:
    policy = retry_policy("stop_after_attempt(5)", "wait_none")
    for _ in range(2):
        retrying = policy.retrying(retry=ON_OSERROR)
        with pytest.raises(OSError, match="remote went away"):
            retrying(_always_fails)
        assert retrying.statistics["attempt_number"] == 5


def test_reraise_false_raises_retry_error() -> None:
    retrying = retry_policy("stop_after_attempt(2)", "wait_none").retrying(
        retry=ON_OSERROR, reraise=False
    )
    with pytest.raises(tenacity.RetryError):
        retrying(_always_fails)


def test_other_exceptions_are_not_retried() -> None:
    retrying = retry_policy(None, "wait_none").retrying(retry=ON_OSERROR)

    def broken() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        retrying(broken)
    assert retrying.statistics["attempt_number"] == 1


def _delays(stop: str, wait: str) -> list[float]:
    delays: list[float] = []
    retrying = retry_policy(stop, wait).retrying(retry=ON_OSERROR, sleep=delays.append)
    with pytest.raises(OSError):
        retrying(_always_fails)
    return delays


def test_fixed_plus_random_waits_between_the_sum_of_bounds() -> None:
    delays = _delays("stop_after_attempt(20)", "wait_fixed(3) + wait_random(0, 2)")
    assert len(delays) == 19
    assert all(3 <= delay <= 5 for delay in delays)


def test_chain_uses_its_last_wait_thereafter() -> None:
    assert _delays("stop_after_attempt(4)", "wait_chain(wait_fixed(1), wait_fixed(2))") == [1, 2, 2]


def test_readme_chain_spreads_a_list_of_waits() -> None:
    assert _delays("stop_after_attempt(8)", README_CHAIN) == [3, 3, 3, 7, 7, 9, 9]


@pytest.mark.parametrize("factory", [*_STOP.functions.values(), *_WAIT.functions.values()])
def test_every_tenacity_parameter_is_checked(factory: _Factory) -> None:
    # A parameter a later tenacity adds must fail here, not slip through unchecked.
    assert set(inspect.signature(factory.build).parameters) == set(factory.wants)
