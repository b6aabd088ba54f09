"""The SDK's Plugin, run as a real process (tests/probe_plugin.py) and driven over its pipes."""

import pathlib

import pytest

PROBE = pathlib.Path(__file__).with_name("probe_plugin.py")


@pytest.fixture
def probe(start_plugin):
    plugin = start_plugin(PROBE)
    assert plugin.hello()["type"] == "ready"
    return plugin


def test_ready_lists_the_registered_hooks(start_plugin):
    plugin = start_plugin(PROBE)
    assert plugin.hello() == {
        "type": "ready",
        "protocol": 1,
        "name": "probe",
        "version": "0.0.1",
        "hooks": {
            "before_command": ["create_user"],
            "command_handler": [],
            "event_handler": ["user.*"],
            "query_handler": ["slow", "fast", "release", "sleep", "block_forever", "refuse", "chatty", "not_json"],
        },
    }


def test_an_initializer_error_is_a_refusal_then_exit_1(start_plugin):
    plugin = start_plugin(PROBE)
    assert plugin.hello({"refuse": "config.x is wrong"}) == {"type": "refuse", "message": "config.x is wrong"}
    assert plugin.exit_status() == 1


def test_an_unsupported_protocol_is_refused(start_plugin):
    plugin = start_plugin(PROBE)
    refusal = plugin.hello(protocol=2)
    assert refusal["type"] == "refuse"
    assert "speaks protocol 1, the engine offered 2" in refusal["message"]


def test_calls_run_concurrently_and_are_answered_in_any_order(probe):
    # The slow call waits for a release sent only after the later fast call was answered.
    probe.call(1, "query_handler", "slow", {"params": {}})
    probe.call(2, "query_handler", "fast", {"params": {}})
    assert probe.receive() == {"type": "result", "id": 2, "ok": {"result": "fast"}}
    probe.call(3, "query_handler", "release", {"params": {}})
    answers = {answer["id"]: answer["ok"] for answer in (probe.receive(), probe.receive())}
    assert answers == {1: {"result": "slow"}, 3: {"result": "released"}}


def test_ping_is_answered_while_a_call_is_in_flight(probe):
    probe.call(1, "query_handler", "sleep", {"params": {"seconds": 0.5}})
    probe.send({"type": "ping", "id": 77})
    assert probe.receive() == {"type": "pong", "id": 77}
    assert probe.receive() == {"type": "result", "id": 1, "ok": {"result": "slept"}}


@pytest.mark.parametrize(
    "kind, error",
    [
        ("validation", {"code": "validation_failed", "message": "bad input", "errors": [{"path": "/name", "message": "too short"}]}),
        ("not_found", {"code": "not_found", "message": "no such thing"}),
        ("conflict", {"code": "conflict", "message": "already there"}),
        ("forbidden", {"code": "forbidden", "message": "not yours"}),
        ("bug", {"code": "internal", "message": "KeyError: 'a bug'"}),
    ],
)
def test_refusals_become_protocol_errors(probe, kind, error):
    probe.call(3, "query_handler", "refuse", {"params": {"kind": kind}})
    assert probe.receive() == {"type": "result", "id": 3, "error": error}


def test_any_other_exception_prints_its_traceback_to_stderr(probe):
    probe.call(3, "query_handler", "refuse", {"params": {"kind": "bug"}})
    assert probe.receive()["error"]["code"] == "internal"
    probe.close_stdin()
    assert probe.exit_status() == 0
    stderr = probe.stderr()
    assert "Traceback" in stderr and "KeyError: 'a bug'" in stderr


def test_prints_go_to_stderr_and_logs_travel_as_messages(probe):
    probe.call(4, "query_handler", "chatty", {"params": {}})
    assert probe.receive() == {"type": "log", "level": "info", "message": "chatty ran"}
    assert probe.receive() == {"type": "result", "id": 4, "ok": {"result": {"principal": "ann", "deadline_ms": 2000}}}
    probe.close_stdin()
    probe.exit_status()
    stderr = probe.stderr()
    assert "a stray print" in stderr and "a direct write" in stderr


def test_unroutable_and_unserialisable_calls_still_get_one_internal_result(probe):
    probe.call(5, "query_handler", "nobody_handles_this", {"params": {}})
    assert probe.receive() == {
        "type": "result",
        "id": 5,
        "error": {"code": "internal", "message": "no query_handler handler for `nobody_handles_this`"},
    }
    probe.call(6, "query_handler", "not_json", {"params": {}})
    answer = probe.receive()
    assert (answer["id"], answer["error"]["code"]) == (6, "internal")


def test_none_keeps_a_payload_and_event_patterns_match_by_prefix(probe):
    probe.call(7, "before_command", "create_user", {"payload": {"email": "a@b.c"}})
    assert probe.receive()["ok"] == {"payload": {"email": "a@b.c"}}
    probe.call(8, "event_handler", "user.created", {"event_id": "e-1"})
    assert probe.receive()["ok"] == {"seen": "user.created"}


def test_shutdown_answers_the_calls_in_flight_then_exits_0(probe):
    probe.call(9, "query_handler", "sleep", {"params": {"seconds": 0.3}})
    probe.send({"type": "shutdown", "deadline_ms": 5000})
    probe.close_stdin()
    assert probe.receive() == {"type": "result", "id": 9, "ok": {"result": "slept"}}
    assert probe.exit_status() == 0


def test_end_of_input_exits_at_once_even_with_a_call_stuck(probe):
    probe.call(10, "query_handler", "block_forever", {"params": {}})
    probe.close_stdin()
    assert probe.exit_status(timeout=5) == 0


@pytest.mark.parametrize(
    "message", [{"type": "reload"}, {"type": "call", "hook": "query_handler", "target": "fast"}, {"type": "call", "id": 1, "hook": "nope"}]
)
def test_a_message_breaking_the_protocol_exits_2(probe, message):
    probe.send(message)
    assert probe.exit_status() == 2
    assert "protocol violation" in probe.stderr()


def test_a_first_message_other_than_hello_exits_2(start_plugin):
    plugin = start_plugin(PROBE)
    plugin.send({"type": "ping", "id": 1})
    assert plugin.exit_status() == 2
