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

    def send(self, command_type, payload, context=None):
        """Runs a command like the engine: returns the stored events it appended.

        ``context`` is what the engine tells ``FlexCore.context()`` (a dict)."""
        handler = self.registry.commands[command_type]
        agg = handler.aggregate
        payload = dict(payload)
        if handler.creates:
            assert agg.id_field not in payload, "the engine refuses a client-chosen id"
            payload[agg.id_field] = str(uuid.uuid7() if hasattr(uuid, "uuid7") else uuid.uuid4())
        stream_id = f"{agg.category}-{payload[agg.id_field]}" if agg is not None else None
        history = self.streams.get(stream_id, [])
        decided = flexcore._run_command(
            self.registry,
            command_type,
            json.dumps(payload),
            json.dumps(history),
            None if context is None else json.dumps(context),
        )
        assert len(decided) <= 1, "one stream per command"
        if not decided:
            return []
        named_stream, _expected, events = decided[0]
        if stream_id is None:
            # The stateless rule: category from the type, id from `<category>_id`.
            category = events[0][0].split(".")[0]
            found = json.loads(events[0][1]).get(f"{category}_id") or str(uuid.uuid4())
            stream_id = named_stream or f"{category}-{found}"
            history = self.streams.get(stream_id, [])
        stored = []
        for event_type, data, metadata in events:
            assert isinstance(event_type, str) and event_type
            data = json.loads(data)
            assert isinstance(data, dict)
            self.position += 1
            event = {
                "event_id": str(uuid.uuid4()),
                "event_type": event_type,
                "data": data,
                "stream_id": stream_id,
                "stream_version": len(history) + len(stored),
                "global_position": self.position,
                "metadata": json.loads(metadata) if metadata else {},
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
