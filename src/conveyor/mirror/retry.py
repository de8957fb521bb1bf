"""Retry policies of bank files: BioMAJ's ``stop_condition`` and ``wait_policy`` strings.

BioMAJ evaluates these strings with simpleeval against tenacity's stop and wait strategies, as
in ``stop_after_attempt(5) | stop_after_delay(60)`` or ``wait_fixed(3) + wait_random(0, 2)``.
We evaluate them the same way, but check them when the mirror is defined rather than when a
download first fails: an unknown name, a wait where a stop belongs, an ill-typed operand (BioMAJ
accepts ``stop_after_attempt(5) & 1``) or a nonsensical argument raises
:class:`~conveyor.mirror.errors.DefinitionError` saying why.

The grammar is BioMAJ's. A stop policy calls ``stop_after_attempt``, ``stop_after_delay``,
``stop_any`` or ``stop_all``, names ``stop_never``, and combines stops with ``|`` (any) and
``&`` (all). A wait policy calls ``wait_fixed``, ``wait_random``, ``wait_incrementing``,
``wait_exponential``, ``wait_random_exponential``, ``wait_combine`` or ``wait_chain``, names
``wait_none``, and adds waits up with ``+``. As in the README of BioMAJ and the docstring of
tenacity's ``wait_chain``, a list of policies, built with ``[...]``, ``+`` and
``[... for i in range(n)]``, may be spread into a call with ``*``:
``wait_chain(*[wait_fixed(3) for i in range(3)] + [wait_fixed(9)])``. Nothing else of Python
is allowed: no attributes, no subscripts, no other names.
"""

from __future__ import annotations

import ast
import asyncio
import difflib
import inspect
import operator
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import simpleeval  # type: ignore[import-untyped]
import tenacity
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from conveyor.mirror.errors import DefinitionError

DEFAULT_STOP = "stop_after_attempt(3)"
DEFAULT_WAIT = "wait_fixed(3)"

MAX_POLICY_LENGTH = 1000
"""Longest policy text accepted: a retry policy is one line, not a program."""

MAX_POLICIES = 100
"""Most items a list of policies, or a ``range``, may have: enough for any ``wait_chain``."""


class _Refused(Exception):
    """Part of a policy is invalid: the message says why; the caller says which policy."""


@dataclass(frozen=True)
class _Wants:
    """What an argument must be: a test, and its words for error messages."""

    accepts: Callable[[object], bool]
    description: str


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_repeat(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_POLICIES


def _is_non_negative(value: object) -> bool:
    # The upper bound also refuses inf and nan, and ints tenacity could not turn into seconds.
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value <= sys.float_info.max
    )


_COUNT = _Wants(_is_count, "a whole number of at least 1")
_REPEAT = _Wants(_is_repeat, f"a whole number from 0 to {MAX_POLICIES}")
_NON_NEGATIVE = _Wants(_is_non_negative, "a finite non-negative number")
_STOP_POLICY = _Wants(lambda value: isinstance(value, stop_base), "a stop policy")
_WAIT_POLICY = _Wants(lambda value: isinstance(value, wait_base), "a wait policy")


@dataclass(frozen=True, eq=False)
class _Factory:
    """A function a policy may call: checks its arguments, then calls ``build`` with them.

    ``wants`` names every parameter of ``build``; for ``*parameters`` it applies to each item.
    """

    name: str
    build: Callable[..., object]
    wants: Mapping[str, _Wants]

    def __call__(self, *args: object, **kwargs: object) -> object:
        signature = inspect.signature(self.build)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise _Refused(f"{self.name}(): {exc}") from exc
        for name, parameter in signature.parameters.items():
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                self._check_each(name, bound.arguments.get(name, ()))
            elif name in bound.arguments:
                self._check(name, name, bound.arguments[name])
        return self.build(*bound.args, **bound.kwargs)

    def _check_each(self, name: str, items: tuple[object, ...]) -> None:
        # stop_any() never stops and stop_all() stops at once: neither is what anyone meant.
        if not items:
            raise _Refused(f"{self.name}() needs at least one argument")
        for item in items:
            self._check(name, "every argument", item)

    def _check(self, name: str, subject: str, value: object) -> None:
        wants = self.wants[name]
        if not wants.accepts(value):
            raise _Refused(
                f"{self.name}(): {subject} must be {wants.description}, not {_describe(value)}"
            )


def _describe(value: object) -> str:
    """A value as an error message should name it."""
    if isinstance(value, _Factory):
        return f"the function {value.name} itself (call it: {value.name}(...))"
    if isinstance(value, stop_base):
        return "a stop policy"
    if isinstance(value, wait_base):
        return "a wait policy"
    if isinstance(value, list):
        return "a list (spread it into a call with *)"
    return repr(value)


def _steps(count: int) -> range:
    return range(count)


_RANGE = _Factory("range", _steps, {"count": _REPEAT})


def _bounded(items: list[object]) -> list[object]:
    if len(items) > MAX_POLICIES:
        raise _Refused(f"a list of policies may have at most {MAX_POLICIES} items")
    return items


_BinaryOperator = Callable[[object, object], object]


def _combiner(symbol: str, kind: type, plural: str, join: _BinaryOperator) -> _BinaryOperator:
    """An operator that joins two policies of ``kind`` and refuses anything else."""

    def combine(left: object, right: object) -> object:
        for side in (left, right):
            if not isinstance(side, kind):
                raise _Refused(f"{symbol} combines {plural}, not {_describe(side)}")
        return join(left, right)

    return combine


def _refuser(reason: str) -> _BinaryOperator:
    def refuse(left: object, right: object) -> object:
        raise _Refused(reason)

    return refuse


def _plus(otherwise: _BinaryOperator) -> _BinaryOperator:
    """``+``: joins two lists of policies (to spread into a call), else does ``otherwise``."""

    def plus(left: object, right: object) -> object:
        if isinstance(left, list) and isinstance(right, list):
            return _bounded([*left, *right])
        return otherwise(left, right)

    return plus


def _negate(value: object) -> object:
    # Negative numbers parse as ``-`` applied to a number; allowing it lets the argument
    # check say "non-negative" rather than "operator not allowed".
    if isinstance(value, int | float) and not isinstance(value, bool):
        return -value
    raise _Refused(f"- applies to numbers, not {_describe(value)}")


@dataclass(frozen=True)
class _Grammar:
    """What one kind of policy may use, with the words that explain it."""

    noun: str
    functions: Mapping[str, _Factory]
    names: Mapping[str, object]
    operators: Mapping[type[ast.AST], Callable[..., object]]
    operator_hint: str
    refused: Mapping[str, str] = field(default_factory=dict)

    @property
    def vocabulary(self) -> frozenset[str]:
        return frozenset({*self.functions, *self.names})


def _factories(*factories: _Factory) -> dict[str, _Factory]:
    return {factory.name: factory for factory in (*factories, _RANGE)}


def _numbers(*names: str) -> dict[str, _Wants]:
    return dict.fromkeys(names, _NON_NEGATIVE)


_STOP_HINT = "stop policies combine with | (any of them) or & (all of them)"
_WAIT_HINT = "wait policies add up with +"

_STOP = _Grammar(
    noun="stop policy",
    functions=_factories(
        _Factory("stop_after_attempt", tenacity.stop_after_attempt, {"max_attempt_number": _COUNT}),
        _Factory("stop_after_delay", tenacity.stop_after_delay, _numbers("max_delay")),
        _Factory("stop_any", tenacity.stop_any, {"stops": _STOP_POLICY}),
        _Factory("stop_all", tenacity.stop_all, {"stops": _STOP_POLICY}),
    ),
    names={"stop_never": tenacity.stop_never},
    operators={
        ast.BitOr: _combiner("|", stop_base, "stop policies", operator.or_),
        ast.BitAnd: _combiner("&", stop_base, "stop policies", operator.and_),
        ast.Add: _plus(_refuser(f"{_STOP_HINT}, not +")),
        ast.USub: _negate,
    },
    operator_hint=_STOP_HINT,
    refused={
        "stop_when_event_set": (
            "stop_when_event_set needs a Python object and cannot be written in a bank file"
        ),
    },
)

_WAIT = _Grammar(
    noun="wait policy",
    functions=_factories(
        _Factory("wait_fixed", tenacity.wait_fixed, _numbers("wait")),
        _Factory("wait_random", tenacity.wait_random, _numbers("min", "max")),
        _Factory(
            "wait_incrementing",
            tenacity.wait_incrementing,
            _numbers("start", "increment", "max"),
        ),
        _Factory(
            "wait_exponential",
            tenacity.wait_exponential,
            _numbers("multiplier", "max", "exp_base", "min"),
        ),
        _Factory(
            "wait_random_exponential",
            tenacity.wait_random_exponential,
            _numbers("multiplier", "max", "exp_base", "min"),
        ),
        _Factory("wait_combine", tenacity.wait_combine, {"strategies": _WAIT_POLICY}),
        _Factory("wait_chain", tenacity.wait_chain, {"strategies": _WAIT_POLICY}),
    ),
    # An instance, as in BioMAJ: ``wait_none``, not ``wait_none()``.
    names={"wait_none": tenacity.wait_none()},
    operators={
        ast.Add: _plus(_combiner("+", wait_base, "wait policies", operator.add)),
        ast.USub: _negate,
    },
    operator_hint=_WAIT_HINT,
)

_GRAMMARS = (_STOP, _WAIT)

# Nodes that need no check of their own; anything not here and not checked below is refused.
_PLAIN_NODES = (
    ast.Expression,
    ast.Constant,
    ast.keyword,
    ast.List,
    ast.ListComp,
    ast.comprehension,
    ast.Starred,
    ast.expr_context,
    ast.operator,
    ast.unaryop,
)


def _check_tree(tree: ast.Expression, grammar: _Grammar) -> None:
    """Refuse any part of the tree the grammar does not allow, before evaluating anything."""
    # Comprehension variables (``i`` in ``for i in range(3)``) are the only names we bind.
    local = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp | ast.UnaryOp):
            _check_operator(node.op, grammar)
        elif isinstance(node, ast.Call):
            _check_call(node, grammar)
        elif isinstance(node, ast.Name):
            _check_name(node.id, grammar, local)
        elif isinstance(node, ast.Attribute):
            raise _Refused(f"attribute access (.{node.attr}) is not allowed")
        elif not isinstance(node, _PLAIN_NODES):
            raise _Refused(f"{type(node).__name__} is not allowed in a {grammar.noun}")


def _check_operator(op: ast.AST, grammar: _Grammar) -> None:
    if type(op) not in grammar.operators:
        raise _Refused(f"operator {type(op).__name__} is not allowed: {grammar.operator_hint}")


def _check_call(node: ast.Call, grammar: _Grammar) -> None:
    if not isinstance(node.func, ast.Name):
        raise _Refused(f"only the functions of a {grammar.noun} can be called")
    name = node.func.id
    _check_name(name, grammar, local=set())
    if name in grammar.names:
        raise _Refused(f"{name} is a {grammar.noun} already, not a function: write it without ()")


def _check_name(name: str, grammar: _Grammar, local: set[str]) -> None:
    if name in grammar.refused:
        raise _Refused(grammar.refused[name])
    if name in grammar.vocabulary or name in local:
        return
    for other in _GRAMMARS:
        if name in other.vocabulary:
            raise _Refused(f"{name} belongs in a {other.noun}, not in a {grammar.noun}")
    guess = difflib.get_close_matches(name, grammar.vocabulary, n=1)
    hint = f" (did you mean {guess[0]}?)" if guess else ""
    allowed = ", ".join(sorted(grammar.vocabulary))
    raise _Refused(f"unknown name {name!r}{hint}; a {grammar.noun} may use {allowed}")


class _Evaluator(simpleeval.EvalWithCompoundTypes):  # type: ignore[misc]
    """simpleeval with lists and comprehensions, and ``*`` in calls, for one grammar."""

    def __init__(self, grammar: _Grammar) -> None:
        # Copies: simpleeval adds its own functions to the dict it is given.
        super().__init__(
            operators=dict(grammar.operators),
            functions=dict(grammar.functions),
            names=dict(grammar.names),
        )

    def _eval_call(self, node: ast.Call) -> object:
        # simpleeval 1.0 evaluates no ``*argument``, which BioMAJ's wait_chain example needs.
        # _check_call made sure the function is a name of ours.
        assert isinstance(node.func, ast.Name)
        args: list[object] = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                args.extend(self._spread(self._eval(arg.value)))
            else:
                args.append(self._eval(arg))
        kwargs: dict[str, object] = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise _Refused("** is not allowed in a call")
            kwargs[keyword.arg] = self._eval(keyword.value)
        return self.functions[node.func.id](*args, **kwargs)

    @staticmethod
    def _spread(value: object) -> list[object]:
        if not isinstance(value, list):
            raise _Refused(f"* spreads a list of policies, not {_describe(value)}")
        return _bounded(value)


def _invalid(grammar: _Grammar, text: str, reason: str) -> DefinitionError:
    return DefinitionError(f"invalid {grammar.noun} {text!r}: {reason}")


def _evaluate(text: str, grammar: _Grammar) -> object:
    """What ``text`` evaluates to under ``grammar``; DefinitionError if it cannot be evaluated."""
    if len(text) > MAX_POLICY_LENGTH:
        raise DefinitionError(
            f"invalid {grammar.noun}: {len(text)} characters long, "
            f"at most {MAX_POLICY_LENGTH} allowed"
        )
    try:
        tree = ast.parse(text.strip(), mode="eval")
        _check_tree(tree, grammar)
        return _Evaluator(grammar).eval(text, previously_parsed=tree.body)
    except SyntaxError as exc:
        raise _invalid(grammar, text, f"not a valid expression ({exc.msg})") from exc
    except RecursionError as exc:
        raise _invalid(grammar, text, "nested too deeply") from exc
    # TypeError: a comprehension over something that is not a list, as in ``for i in 3``.
    except (_Refused, simpleeval.InvalidExpression, TypeError) as exc:
        raise _invalid(grammar, text, str(exc)) from exc


def parse_stop(text: str) -> stop_base:
    """The tenacity stop strategy a ``stop_condition`` describes.

    Raises DefinitionError, saying why, when ``text`` is not a valid stop policy.
    """
    policy = _evaluate(text, _STOP)
    if isinstance(policy, stop_base):
        return policy
    raise _invalid(_STOP, text, f"it gives {_describe(policy)}, not a stop policy")


def parse_wait(text: str) -> wait_base:
    """The tenacity wait strategy a ``wait_policy`` describes.

    Raises DefinitionError, saying why, when ``text`` is not a valid wait policy.
    """
    policy = _evaluate(text, _WAIT)
    if isinstance(policy, wait_base):
        return policy
    raise _invalid(_WAIT, text, f"it gives {_describe(policy)}, not a wait policy")


@dataclass(frozen=True)
class RetryPolicy:
    """How a mirror retries a file: a validated ``stop_condition`` and ``wait_policy``."""

    stop: str
    wait: str
    _stop: stop_base = field(init=False, repr=False, compare=False)
    _wait: wait_base = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Parsed once: a bad policy fails when the mirror is defined, not at its first
        # failure, and a run of 10,000 files does not parse it 10,000 times. tenacity's
        # stop and wait objects keep no state between calls, so they are shared.
        object.__setattr__(self, "_stop", parse_stop(self.stop))
        object.__setattr__(self, "_wait", parse_wait(self.wait))

    def retrying(
        self,
        *,
        retry: retry_base,
        sleep: Callable[[float], None] = time.sleep,
        reraise: bool = True,
    ) -> tenacity.Retrying:
        """A fresh :class:`tenacity.Retrying`, so that its statistics are one file's alone."""
        return tenacity.Retrying(
            stop=self._stop, wait=self._wait, retry=retry, sleep=sleep, reraise=reraise
        )

    def async_retrying(
        self,
        *,
        retry: retry_base,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        reraise: bool = True,
    ) -> tenacity.AsyncRetrying:
        """:meth:`retrying` for a coroutine: it waits on the event loop."""
        return tenacity.AsyncRetrying(
            stop=self._stop, wait=self._wait, retry=retry, sleep=sleep, reraise=reraise
        )


def retry_policy(stop: str | None, wait: str | None) -> RetryPolicy:
    """The validated policy of a bank's options; ``None`` (option not set) means the default."""
    return RetryPolicy(
        stop=DEFAULT_STOP if stop is None else stop,
        wait=DEFAULT_WAIT if wait is None else wait,
    )
