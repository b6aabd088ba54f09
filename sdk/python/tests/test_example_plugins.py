"""The Python example plugins (examples/plugins/email-enricher, welcome-mailer), run as processes
in a copy of their folder and driven over their pipes."""

import json
import shutil

import pytest

from conftest import EXAMPLES


@pytest.fixture
def plugin_folder(tmp_path):
    def copy(name):
        folder = tmp_path / name
        shutil.copytree(EXAMPLES / name, folder)
        return folder

    return copy


def create_user(plugin, call_id, email):
    plugin.call(call_id, "before_command", "create_user", {"payload": {"email": email, "profile": {"name": "Ann"}}})
    return plugin.receive()


def test_the_enricher_lower_cases_and_trims_keeping_the_rest_of_the_payload(start_plugin, plugin_folder):
    folder = plugin_folder("email-enricher")
    plugin = start_plugin(folder / "enricher.py", folder)
    assert plugin.hello({"domain_blocklist": ["example.org"]})["hooks"]["before_command"] == ["create_user"]
    assert create_user(plugin, 1, "  Ann@Example.COM ")["ok"] == {
        "payload": {"email": "ann@example.com", "profile": {"name": "Ann"}}
    }


def test_the_enricher_refuses_a_blocked_domain_whatever_its_case(start_plugin, plugin_folder):
    folder = plugin_folder("email-enricher")
    plugin = start_plugin(folder / "enricher.py", folder)
    plugin.hello({"domain_blocklist": ["Example.org"]})
    assert create_user(plugin, 2, "bob@EXAMPLE.org")["error"] == {
        "code": "validation_failed",
        "message": "email is blocked",
        "errors": [{"path": "/email", "message": "domain example.org is blocked"}],
    }


def test_the_enricher_refuses_a_blocklist_that_is_not_a_list(start_plugin, plugin_folder):
    folder = plugin_folder("email-enricher")
    plugin = start_plugin(folder / "enricher.py", folder)
    refusal = plugin.hello({"domain_blocklist": "example.org"})
    assert refusal == {"type": "refuse", "message": "config.domain_blocklist must be a list of strings"}


def user_created(event_id, email):
    return {
        "event_id": event_id,
        "event_type": "user.created",
        "stream_id": "user-1",
        "stream_version": 0,
        "data": {"email": email},
        "metadata": {},
    }


def sent_mails(folder):
    lines = (folder / "outbox.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_mailer_sends_one_mail_per_event_even_when_redelivered(start_plugin, plugin_folder):
    folder = plugin_folder("welcome-mailer")
    plugin = start_plugin(folder / "mailer.py", folder)
    plugin.hello({"outbox_file": "outbox.jsonl", "sender": "hi@example.com"})
    for call_id, event_id in [(1, "e-1"), (2, "e-1"), (3, "e-2")]:
        plugin.call(call_id, "event_handler", "user.created", user_created(event_id, f"{event_id}@example.com"))
    answers = [plugin.receive() for _ in range(5)]
    results = {a["id"]: a["ok"] for a in answers if a["type"] == "result"}
    assert results == {1: {}, 2: {}, 3: {}}
    assert sorted(a["message"] for a in answers if a["type"] == "log") == [
        "welcome mail queued for e-1@example.com",
        "welcome mail queued for e-2@example.com",
    ]
    assert sent_mails(folder) == [
        {"event_id": "e-1", "from": "hi@example.com", "to": "e-1@example.com", "subject": "Welcome to FlexCore"},
        {"event_id": "e-2", "from": "hi@example.com", "to": "e-2@example.com", "subject": "Welcome to FlexCore"},
    ]


def test_the_mailer_remembers_sent_events_across_a_restart(start_plugin, plugin_folder):
    folder = plugin_folder("welcome-mailer")
    first = start_plugin(folder / "mailer.py", folder)
    first.hello({"outbox_file": "outbox.jsonl"})
    first.call(1, "event_handler", "user.created", user_created("e-1", "ann@example.com"))
    assert first.receive()["type"] == "log"
    assert first.receive()["ok"] == {}
    first.send({"type": "shutdown", "deadline_ms": 1000})
    assert first.exit_status() == 0

    second = start_plugin(folder / "mailer.py", folder)
    second.hello({"outbox_file": "outbox.jsonl"})
    second.call(1, "event_handler", "user.created", user_created("e-1", "ann@example.com"))
    assert second.receive() == {"type": "result", "id": 1, "ok": {}}
    assert len(sent_mails(folder)) == 1


def test_the_mailer_rejects_an_event_without_an_email(start_plugin, plugin_folder):
    folder = plugin_folder("welcome-mailer")
    plugin = start_plugin(folder / "mailer.py", folder)
    plugin.hello({"outbox_file": "outbox.jsonl"})
    plugin.call(1, "event_handler", "user.created", {"event_id": "e-9", "data": {}})
    assert plugin.receive()["error"]["errors"] == [{"path": "/data/email", "message": "must be a string"}]
