"""stepq.expressions (compiling, matching) and stepq.runtime.wait_expressions (interpolating and
indexing waits' expressions): CEL without Redis."""

from __future__ import annotations

from typing import Any

import pytest

import stepq
from stepq.errors import FunctionConfigError
from stepq.expressions import (
    Bindings,
    Expression,
    ExpressionError,
    ExpressionEvalError,
    compile_expression,
)
from stepq.runtime.wait_expressions import (
    equality_key,
    index_token,
    index_token_at,
    interpolate,
    to_literal,
)

EVENT = {"event"}
BOTH = {"event", "async"}

TRIGGER: dict[str, Any] = {
    "name": "app/signup",
    "id": "01J",
    "ts": 1_700_000_000_000,
    "user": {},
    "data": {
        "plan": "pro",
        "request_id": "r-1",
        "n": 3,
        "neg": -2,
        "f": 1.5,
        "ok": True,
        "off": False,
        "none": None,
        "tags": ["a", "b"],
        "nested": {"k": "v", "deep": {"x": 1}},
        "quote": 'it\'s "q"\n\t\\',
        "big": 2**63,
        "name": "abc",
    },
}


def matches(text: str, variables: set[str] = BOTH, **values: Any) -> bool:
    if "async_" in values:
        values["async"] = values.pop("async_")
    return compile_expression(text, variables=variables).matches(values)


# -- compiling ----------------------------------------------------------------------------------


def test_compile_returns_a_cached_expression() -> None:
    first = compile_expression("event.data.plan == 'pro'", variables=EVENT)
    again = compile_expression("event.data.plan == 'pro'", variables={"event"})
    assert isinstance(first, Expression)
    assert first is again
    assert first.text == "event.data.plan == 'pro'"
    assert first.variables == frozenset({"event"})
    assert first.references == frozenset({"event"})
    # other allowed variables are another compilation
    assert compile_expression("event.data.plan == 'pro'", variables=BOTH) is not first


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("event.data.plan ==", "syntax error at line 1, column 19"),
        ("event.data.plan = 'pro'", "syntax error at line 1, column 17"),
        ("event.data.plan == 'pro", "syntax error"),
        ("(event.data.plan == 'pro'", "syntax error"),
        ("event..data", "syntax error"),
        ("event.data.plan matches '^p'", "syntax error"),
        ("", "is empty"),
        ("   \n", "is empty"),
    ],
)
def test_syntax_errors_name_the_expression_and_where(text: str, problem: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, variables=EVENT)
    message = str(info.value)
    assert message.startswith(f"expression {text!r}: ")
    assert problem in message
    assert "Failed to parse" not in message
    assert isinstance(info.value, FunctionConfigError)


def test_syntax_error_points_at_the_column() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("event.data.plan ==", variables=EVENT)
    assert "| event.data.plan ==\n| ..................^" in str(info.value)


def test_unknown_top_level_variables_are_named_with_the_available_ones() -> None:
    with pytest.raises(ExpressionError, match=r"unknown variable 'async' \(available here: 'event'\)"):
        compile_expression("async.data.id == event.data.id", variables=EVENT)
    with pytest.raises(ExpressionError, match=r"unknown variables 'evnt', 'foo'"):
        compile_expression("evnt.data.x == 1 || foo == 2", variables=EVENT)
    with pytest.raises(ExpressionError, match=r"available here: none"):
        compile_expression("x == 1", variables=set())


def test_non_string_expression_is_a_clear_error() -> None:
    with pytest.raises(ExpressionError, match="expected a string, got int"):
        compile_expression(42, variables=EVENT)  # type: ignore[arg-type]


def test_macro_variables_type_names_and_fields_are_not_unknown_variables() -> None:
    for text in [
        "event.data.tags.exists(t, t == 'a')",
        "event.data.tags.all(t, size(t) == 1)",
        "event.data.tags.exists_one(t, t == 'b')",
        "event.data.tags.map(t, t + '!') == ['a!', 'b!']",
        "event.data.tags.filter(t, t == 'a') == ['a']",
        "type(event.data.n) == int && type(event.data.plan) == string",
        "event.data.async == 1 || event.async.event == 2",  # fields, not variables
    ]:
        compile_expression(text, variables=EVENT)
    assert matches("event.data.tags.exists(t, t == 'a')", event=TRIGGER)
    assert matches("type(event.data.n) == int && type(event.data.nested) == map", event=TRIGGER)


def test_macro_variable_that_hides_a_variable_is_rejected() -> None:
    with pytest.raises(ExpressionError, match="macro variable 'event' hides"):
        compile_expression("async.data.items.exists(event, event == 1)", variables=BOTH)


def test_async_is_an_ordinary_identifier() -> None:
    expr = compile_expression("async.data.request_id == event.data.request_id", variables=BOTH)
    assert expr.references == frozenset(BOTH)
    assert expr.matches({"event": TRIGGER, "async": {"data": {"request_id": "r-1"}}})
    assert not expr.matches({"event": TRIGGER, "async": {"data": {"request_id": "r-2"}}})


def test_trigger_event_compiles_its_expression_at_definition() -> None:
    trigger = stepq.TriggerEvent(event="app/signup", expression="event.data.plan == 'pro'")
    assert trigger.compiled is compile_expression("event.data.plan == 'pro'", variables=EVENT)
    assert trigger.matches(TRIGGER)
    assert not trigger.matches({"data": {"plan": "free"}})
    assert stepq.TriggerEvent(event="app/signup").matches({})
    assert stepq.TriggerEvent(event="app/signup", expression="").to_dict() == {"event": "app/signup"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("event.data.plan = 'pro'", "syntax error at line 1, column 17"),
        ("async.data.plan == 'pro'", "unknown variable 'async'"),
        ("plan == 'pro'", "unknown variable 'plan'"),
    ],
)
def test_invalid_trigger_expression_fails_at_definition_naming_the_trigger(text: str, problem: str) -> None:
    with pytest.raises(FunctionConfigError) as info:
        stepq.TriggerEvent(event="app/signup", expression=text)
    message = str(info.value)
    assert message.startswith(f"TriggerEvent(event='app/signup').expression: expression {text!r}: ")
    assert problem in message


def test_non_string_trigger_expression_is_rejected() -> None:
    with pytest.raises(FunctionConfigError, match=r"TriggerEvent\(event='a'\).expression: expected a string"):
        stepq.TriggerEvent(event="a", expression=["event.data.x"])  # type: ignore[arg-type]


# -- matching -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("event.data.plan == 'pro'", True),
        ('event.data.plan == "pro"', True),
        ("event.data.plan == 'free'", False),
        ("event.data['plan'] == 'pro'", True),
        ("event.name == 'app/signup' && event.ts > 0", True),
        ("event.data.n == 3", True),
        ("event.data.n == 3.0", True),  # numbers compare across int and double, as in cel-go
        ("event.data.n == 3u", True),
        ("event.data.n > 2 && event.data.n < 4", True),
        ("event.data.neg == -2", True),
        ("event.data.f > 1", True),
        ("event.data.ok", True),
        ("event.data.ok == true", True),
        ("event.data.ok == 1", False),  # bools are not numbers
        ("!event.data.off", True),
        ("event.data.none == null", True),
        ("'a' in event.data.tags", True),
        ("event.data.tags == ['a', 'b']", True),
        ("size(event.data.tags) == 2", True),
        ("event.data.tags[1] == 'b'", True),
        ("event.data.nested.deep.x == 1", True),
        ("event.data.nested == {'k': 'v', 'deep': {'x': 1}}", True),
        ("has(event.data.plan) && !has(event.data.missing)", True),
        ("event.data.plan.startsWith('p') && event.data.plan.endsWith('o')", True),
        ("event.data.plan.matches('^p.o$')", True),
        ("event.data.quote == 'it\\'s \"q\"\\n\\t\\\\'", True),
        ("event.data.big == 9223372036854775808u", True),
    ],
)
def test_matches_strings_numbers_bools_lists_and_maps(text: str, expected: bool) -> None:
    assert matches(text, EVENT, event=TRIGGER) is expected


@pytest.mark.parametrize(
    "text",
    [
        "event.data.missing == 'pro'",
        "event.data.missing != 'pro'",  # an error, not true: a missing field never matches
        "!(event.data.missing == 'pro')",
        "event.data.missing.deeper == 1",
        "event.nope.data.plan == 'pro'",
        "event.data.plan == 'pro' && event.data.missing == 1",
        "event.data.tags[5] == 'a'",
        "event.data.plan + 1 == 2",  # no such overload
        "event.data.n / 0 == 1",
        "int(event.data.plan) == 1",
        "event.data.plan",  # a string, not a bool
        "event.data.n",
        "event.data.tags",
        "event.data.none",
    ],
)
def test_missing_fields_errors_and_non_bool_results_do_not_match(text: str) -> None:
    expr = compile_expression(text, variables=EVENT)
    assert expr.matches(event=TRIGGER) is False


def test_an_error_on_one_side_of_or_is_absorbed() -> None:
    assert matches("event.data.missing == 1 || event.data.plan == 'pro'", EVENT, event=TRIGGER)


def test_matches_never_raises_on_odd_variables() -> None:
    expr = compile_expression("event.data.plan == 'pro'", variables=EVENT)
    assert expr.matches() is False  # unbound
    assert expr.matches(event=None) is False
    assert expr.matches(event="pro") is False
    assert expr.matches(event=[1, 2]) is False
    assert expr.matches(event={"data": None}) is False
    assert expr.matches(event={"data": {"plan": object()}}) is False  # not convertible
    assert expr.matches(event={"data": {"plan": "\ud800"}}) is False  # not valid Unicode
    assert expr.matches(event={"data": {"plan": "pro"}, "ts": 2**80}) is True  # big ints become doubles


def test_bindings_are_converted_once_and_reused() -> None:
    bindings = Bindings(event=TRIGGER)
    pro = compile_expression("event.data.plan == 'pro'", variables=EVENT)
    free = compile_expression("event.data.plan == 'free'", variables=EVENT)
    assert pro.matches(bindings)
    assert not free.matches(bindings)
    context = bindings.context()
    assert context is not None and bindings.context() is context
    # keywords add to (or override) bindings
    both = compile_expression("async.data.request_id == event.data.request_id", variables=BOTH)
    assert both.matches(bindings, **{"async": {"data": {"request_id": "r-1"}}})
    assert not Bindings(event={"x": object()}).context()


def test_evaluate_returns_the_value_or_raises_a_clear_error() -> None:
    assert compile_expression("event.data.n * 2", variables=EVENT).evaluate(event=TRIGGER) == 6
    assert compile_expression("event.data.tags", variables=EVENT).evaluate(event=TRIGGER) == ["a", "b"]
    with pytest.raises(ExpressionEvalError, match=r"expression 'event.data.missing == 1': no such key: 'missing'"):
        compile_expression("event.data.missing == 1", variables=EVENT).evaluate(event=TRIGGER)
    with pytest.raises(ExpressionEvalError, match="cannot be converted"):
        compile_expression("event == 1", variables=EVENT).evaluate(event=object())


# -- literals and interpolation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (42, "42"),
        (-7, "(-7)"),
        (-(2**63), "(-9223372036854775808)"),
        (2**63, "9223372036854775808u"),
        (2**64 - 1, "18446744073709551615u"),
        (2**70, "1.1805916207174113e+21"),
        (1.5, "1.5"),
        (-0.25, "(-0.25)"),
        (1e300, "1e+300"),
        (float("nan"), 'double("NaN")'),
        (float("inf"), 'double("Infinity")'),
        (float("-inf"), 'double("-Infinity")'),
        ("pro", '"pro"'),
        ("", '""'),
        ('it\'s "q"\n', '"it\'s \\"q\\"\\n"'),
        ("é\u2028x", '"é\u2028x"'),
        (b"\x00\xff", 'b"\\x00\\xff"'),
        ([1, "a", None], '[1, "a", null]'),
        ((1, 2), "[1, 2]"),
        ({"a": [True], "b": {}}, '{"a": [true], "b": {}}'),
        ("\ud800", None),
        (object(), None),
        ([1, object()], None),
        ({"k": object()}, None),
        ({(1, 2): 1}, None),
        (10**400, None),
    ],
)
def test_to_literal(value: Any, literal: str | None) -> None:
    assert to_literal(value) == literal


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -7,
        -(2**63),
        2**63,
        1.5,
        -0.25,
        1e300,
        "pro",
        'it\'s "q"\n\t\\ é \x01',
        [1, "a"],
        {"a": {"b": [None]}},
    ],
)
def test_literals_evaluate_to_the_value(value: Any) -> None:
    literal = to_literal(value)
    assert literal is not None
    assert compile_expression(f"x == {literal}", variables={"x"}).matches(x=value)


def test_deeply_nested_values_have_no_literal() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    assert to_literal(deep) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("async.data.request_id == event.data.request_id", 'async.data.request_id == "r-1"'),
        ("event.data.request_id == async.data.request_id", '"r-1" == async.data.request_id'),
        ("async.data.n == event.data.n && async.x == event.data.neg", "async.data.n == 3 && async.x == (-2)"),
        ("async.f == event.data.f || event.data.ok", "async.f == 1.5 || true"),
        ("async.none == event.data.none", "async.none == null"),
        ("async.tags == event.data.tags", 'async.tags == ["a", "b"]'),
        ("async.q == event.data.quote", 'async.q == "it\'s \\"q\\"\\n\\t\\\\"'),
        ("async.b == event.data.big", "async.b == 9223372036854775808u"),
        ("async.x == event['data']['nested'][\"k\"]", 'async.x == "v"'),
        ("async.x == event.data.tags[1]", 'async.x == "b"'),
        ("async.x == event.data.tags[async.i]", 'async.x == ["a", "b"][async.i]'),
        ("event.data.name.startsWith(async.p)", '"abc".startsWith(async.p)'),
        ("async.x == event.name", 'async.x == "app/signup"'),
        # has(): decided now when the parent exists
        ("has(event.data.plan) && has(event.data.missing)", "true && false"),
        ("has(event.nope.x)", "has(event.nope.x)"),
        # missing paths stay: evaluating them fails, as they would have
        ("async.x == event.data.missing", "async.x == event.data.missing"),
        ("async.x == event.data.tags[9]", "async.x == event.data.tags[9]"),
        # strings, comments, fields named event, and no references are left alone
        ("async.s == 'event.data.plan'", "async.s == 'event.data.plan'"),
        ('async.s == r"event.data.plan" // event.data.plan', 'async.s == r"event.data.plan" // event.data.plan'),
        ("async.s == '''event.data.plan''' ", "async.s == '''event.data.plan''' "),
        ("async.s == 'it\\'s event.data.plan'", "async.s == 'it\\'s event.data.plan'"),
        ("async.s == r'\\' + event.data.plan", "async.s == r'\\' + \"pro\""),
        ("async.s == b'\\'' + event.data.plan", "async.s == b'\\'' + \"pro\""),
        ("async.s == 'unterminated event.data.plan", "async.s == 'unterminated event.data.plan"),
        ("async.event.data.plan == 'pro'", "async.event.data.plan == 'pro'"),
        ("async.data.plan == 'pro'", "async.data.plan == 'pro'"),
        ("myevent.data == 1", "myevent.data == 1"),
    ],
)
def test_interpolate(text: str, expected: str) -> None:
    assert interpolate(text, TRIGGER) == expected


def test_interpolate_whole_event_and_keeps_layout() -> None:
    event = {"name": "a", "data": {"x": 1}}
    assert interpolate("async.data == event.data", event) == 'async.data == {"x": 1}'
    assert interpolate("async.parent ==\n  event", event) == 'async.parent ==\n  {"name": "a", "data": {"x": 1}}'
    assert interpolate("(event.data.x)+event.data.x", event) == "(1)+1"


def test_interpolated_expression_matches_as_the_original_would() -> None:
    cases = [
        ("async.data.request_id == event.data.request_id", {"data": {"request_id": "r-1"}}, True),
        ("async.data.request_id == event.data.request_id", {"data": {"request_id": "r-2"}}, False),
        ("async.data.request_id == event.data.request_id", {"data": {}}, False),
        ("async.data.n == event.data.n", {"data": {"n": 3.0}}, True),
        ("async.data.q == event.data.quote", {"data": {"q": TRIGGER["data"]["quote"]}}, True),
        ("async.data.x == event.data.missing", {"data": {"x": None}}, False),
        ("async.data.x == event.data.missing || async.data.y == 1", {"data": {"y": 1}}, True),
        ("async.data.x != event.data.missing", {"data": {"x": 1}}, False),
        ("has(event.data.plan) && async.data.ok", {"data": {"ok": True}}, True),
        (
            "async.data.tags == event.data.tags && async.data.m == event.data.nested",
            {"data": dict(tags=["a", "b"], m={"k": "v", "deep": {"x": 1}})},
            True,
        ),
    ]
    for text, candidate, expected in cases:
        original = compile_expression(text, variables=BOTH).matches({"event": TRIGGER, "async": candidate})
        interpolated = compile_expression(interpolate(text, TRIGGER), variables=BOTH)
        assert original is expected, text
        assert interpolated.matches({"async": candidate}) is expected, text
        assert interpolated.matches({"async": candidate, "event": {}}) is expected, text


def test_interpolate_is_textual_and_never_raises_on_odd_input() -> None:
    for text in [
        "",
        "event",
        "event.",
        "event[",
        "event['a",
        "'unterminated event.data",
        "event.data.plan ==",
        "🙂 event.x",
    ]:
        interpolate(text, TRIGGER)
    assert interpolate("event.data.x == 1", {"data": {"x": object()}}) == "event.data.x == 1"
    assert interpolate("event.data.x == 1", {"data": {"x": "\ud800"}}) == "event.data.x == 1"
    assert interpolate("event.data.x == 1", {}) == "event.data.x == 1"


# -- equality keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('async.data.request_id == "r-1"', ("data.request_id", "r-1")),
        ("async.data.request_id == 'r-1'", ("data.request_id", "r-1")),
        ('"r-1" == async.data.request_id', ("data.request_id", "r-1")),
        ("(async.data.request_id == 'r-1')", ("data.request_id", "r-1")),
        ('((async.data.id)) == (("x"))', ("data.id", "x")),
        ("async.data.n == 3", ("data.n", 3)),
        ("async.data.n == 3.0", ("data.n", 3)),
        ("async.data.n == 3u", ("data.n", 3)),
        ("async.data.n == 0x10", ("data.n", 16)),
        ("async.data.n == -2", ("data.n", -2)),
        ("async.data.n == (-2)", ("data.n", -2)),
        ("async.data.f == 1.5", ("data.f", 1.5)),
        ("async.data.f == 1e3", ("data.f", 1000)),
        ("async.data.ok == true", ("data.ok", True)),
        ("async.data.none == null", ("data.none", None)),
        ("async.name == 'x'", ("name", "x")),
        ("async.data.s == 'it\\'s \\u00e9\\n'", ("data.s", "it's é\n")),
        ("async.data.s == r'a\\n'", ("data.s", "a\\n")),
        ("async.data.s == '''x'''", ("data.s", "x")),
        # conjunctions: any clause is a necessary condition; strings beat numbers beat bools
        ("async.data.resume == true && async.data.id == 'x'", ("data.id", "x")),
        ("async.data.n == 1 && async.data.id == 'x'", ("data.id", "x")),
        ("async.data.resume == true && async.data.n == 2", ("data.n", 2)),
        ("async.data.id == 'x' && async.data.n > 1", ("data.id", "x")),
        ("async.data.n > 1 && (async.data.id == 'x' && true)", ("data.id", "x")),
        ("async.data.id == 'x' && (async.a == 1 || async.b == 2)", ("data.id", "x")),
        ("async.data.id == 'x' && !(async.a == 1)", ("data.id", "x")),
        ("async.data.id == 'x' // a comment\n && true", ("data.id", "x")),
    ],
)
def test_equality_key(text: str, key: tuple[str, Any]) -> None:
    found = equality_key(text)
    assert found == key
    assert found is not None and type(found[1]) is type(key[1])


@pytest.mark.parametrize(
    "text",
    [
        "async.data.id == 'x' || async.data.id == 'y'",
        "async.data.id == 'x' && true || false",
        "async.data.id == 'x' ? true : false",
        "!(async.data.id == 'x')",
        "async.data.id != 'x'",
        "async.data.n > 1",
        "async.data.id == event.data.id",  # not interpolated
        "async.data.id == async.data.other",
        "async.data.tags == ['a']",
        "async.data.m == {'a': 1}",
        "async.data.b == b'x'",
        "async.data['id'] == 'x'",
        "async.data.id.size() == 1",
        "size(async.data.id) == 1",
        "async.data.id == 'x' == true",
        "async == 'x'",
        "(async.data.id == 'x')) ",
        "async.data.id == 'x",  # does not compile
        "async.data.id == 1 + 1",
        "async.data.id == -'x'",
        "event.data.id == 'x'",
        "'x' == 'x'",
        "true",
        "",
        "async.data.n == double('NaN')",
    ],
)
def test_equality_key_none_when_not_safely_indexable(text: str) -> None:
    assert equality_key(text) is None


def test_equality_key_skips_clauses_it_cannot_use_in_a_conjunction() -> None:
    assert equality_key("async.data.id == 'x' && async.data.n == double('NaN')") == ("data.id", "x")
    assert equality_key("async.data.m == {'a': 1} && async.data.n == 2") == ("data.n", 2)


def test_equality_key_agrees_with_evaluation() -> None:
    """Every candidate the expression matches is found under the key's index token."""
    texts = [
        "async.data.n == 1",
        "async.data.n == 1.0",
        "async.data.id == '1'",
        "async.data.ok == true",
        "async.data.x == null",
        "async.data.n == 1 && async.data.ok",
    ]
    values: list[Any] = [1, 1.0, 2, "1", True, False, None, [1], {"a": 1}, 1.5]
    for text in texts:
        key = equality_key(text)
        assert key is not None, text
        path, value = key
        expr = compile_expression(text, variables={"async"})
        for candidate_value in values:
            candidate = {
                "data": {"n": candidate_value, "id": candidate_value, "ok": candidate_value, "x": candidate_value}
            }
            indexed = index_token_at(candidate, path) == index_token(value)
            if expr.matches({"async": candidate}):
                assert indexed, (text, candidate_value)
            if "&&" not in text and indexed:
                assert expr.matches({"async": candidate}), (text, candidate_value)


def test_index_tokens() -> None:
    assert index_token(1) == index_token(1.0) == index_token(1.0) == "1"
    assert index_token(-0.0) == "0"
    assert index_token(True) == "true" != index_token(1)
    assert index_token("1") == '"1"' != index_token(1)
    assert index_token(None) == "null"
    assert index_token(1.5) == "1.5"
    assert index_token("é") == '"é"'
    assert index_token(float("nan")) is None
    assert index_token([1]) is None
    assert index_token({"a": 1}) is None
    assert index_token_at({"data": {"id": "x"}}, "data.id") == '"x"'
    assert index_token_at({"data": {"id": None}}, "data.id") == "null"
    assert index_token_at({"data": {}}, "data.id") is None
    assert index_token_at({"data": "str"}, "data.id") is None
    assert index_token_at({"data": {"id": [1]}}, "data.id") is None
