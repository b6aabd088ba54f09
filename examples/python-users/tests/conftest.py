"""Runs the example's handlers against the real ``flexcore`` module source.

``crates/flexcore-python/src/flexcore.py`` is plain Python: it goes on ``sys.path`` and the
handler module is imported through ``flexcore._load``, exactly as the engine does. The
``Engine`` fixture then plays the Rust side: it keeps streams in memory, hands a command
handler its aggregate's history, checks what it returns, and feeds appended events to the
event handlers.
"""

import json
import pathlib
import sys
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "crates" / "flexcore-python" / "src"))

import flexcore  # noqa: E402  (the engine's module, from its source)

USERS_PY = pathlib.Path(__file__).resolve().parents[1] / "users.py"


class Engine:
    """A minimal in-memory stand-in for the Rust side of the bridge."""

    def __init__(self, *paths):
        self.registry = flexcore._load([str(p) for p in paths])
        self.module = sys.modules[f"flexcore_handlers_{flexcore._load_counter}"]
        self.streams = {}  # stream id -> [stored event dicts]
        self.position = 0

    def send(self, command_type, payload):
        """Runs a command like the engine: returns the stored events it appended."""
        _, agg, _, creates = self.registry.commands[command_type]
        payload = dict(payload)
        if creates:
            assert agg.id_field not in payload, "the engine refuses a client-chosen id"
            payload[agg.id_field] = str(uuid.uuid7() if hasattr(uuid, "uuid7") else uuid.uuid4())
        stream_id = f"{agg.category}-{payload[agg.id_field]}"
        history = self.streams.get(stream_id, [])
        decided = flexcore._run_command(
            self.registry, command_type, json.dumps(payload), json.dumps(history)
        )
        stored = []
        for event_type, data, well_shaped in decided:
            assert well_shaped and isinstance(event_type, str) and event_type
            data = json.loads(flexcore._to_json(data))
            assert isinstance(data, dict)
            self.position += 1
            event = {
                "event_id": str(uuid.uuid4()),
                "event_type": event_type,
                "data": data,
                "stream_id": stream_id,
                "stream_version": len(history) + len(stored),
                "global_position": self.position,
                "metadata": {},
            }
            stored.append(event)
        self.streams.setdefault(stream_id, []).extend(stored)
        for event in stored:
            self.deliver(event)
        return stored

    def deliver(self, event):
        """What the event bus does after commit."""
        flexcore._run_event_handlers(self.registry, json.dumps(event))

    def ask(self, query_type, params):
        return json.loads(
            flexcore._to_json(flexcore._run_query(self.registry, query_type, json.dumps(params)))
        )


@pytest.fixture
def engine():
    return Engine(USERS_PY)
