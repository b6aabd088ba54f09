"""Runs the example's handlers against the real ``flexcore`` module source.

``crates/flexcore-python/src/flexcore.py`` is plain Python: it goes on ``sys.path`` and the
handler module is imported through ``flexcore._load``, exactly as the engine does. The
``Engine`` fixture then plays the Rust side: it keeps streams in memory, hands a command
handler its aggregate's history and a stream reader, commits what it returns atomically with
each stream's expectation, re-runs it on a conflict when it read, and feeds appended events to
the event handlers.
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

ATTEMPTS = 5  # the engine's default retry policy


class WrongExpectedVersion(Exception):
    """A stream was not at the version an append expected (the engine's 409)."""


class Engine:
    """A minimal in-memory stand-in for the Rust side of the bridge."""

    WrongExpectedVersion = WrongExpectedVersion  # what a lost race ends in (tests match it)

    def __init__(self, *paths):
        self.registry = flexcore._load([str(p) for p in paths])
        self.module = sys.modules[f"flexcore_handlers_{flexcore._load_counter}"]
        self.streams = {}  # stream id -> [stored event dicts]
        self.position = 0
        self.before_append = None  # called once, just before the next append: a racing writer

    def version(self, stream_id):
        events = self.streams.get(stream_id)
        return len(events) - 1 if events else None

    def send(self, command_type, payload, context=None):
        """Runs a command like the engine: returns the stored events it appended, in order."""
        handler = self.registry.commands[command_type]
        agg = handler.aggregate
        payload = dict(payload)
        if handler.creates:
            assert agg.id_field not in payload, "the engine refuses a client-chosen id"
            payload[agg.id_field] = str(uuid.uuid7() if hasattr(uuid, "uuid7") else uuid.uuid4())
        own = f"{agg.category}-{payload[agg.id_field]}" if agg is not None else None
        for attempt in range(1, ATTEMPTS + 1):
            read = []
            try:
                return self.attempt(handler, command_type, payload, own, context, read)
            except WrongExpectedVersion:
                loads_state = own is not None and not handler.creates
                if attempt == ATTEMPTS or not (loads_state or read):
                    raise

    def attempt(self, handler, command_type, payload, own, context, read):
        def reader(stream_id):
            read.append(stream_id)
            events = self.streams.get(stream_id, [])
            return json.dumps({"events": events, "version": self.version(stream_id)})

        history = self.streams.get(own, []) if own is not None and not handler.creates else []
        own_version = self.version(own) if own is not None and not handler.creates else None
        decided = flexcore._run_command(
            self.registry,
            command_type,
            json.dumps(payload),
            json.dumps(history),
            None if context is None else json.dumps(context),
            reader,
        )
        bare = [e for stream, _, events in decided if stream is None for e in events]
        named = [(s, x, e) for s, x, e in decided if s is not None and (e or x != "any")]
        writes = []
        if own is not None and (bare or named):
            writes.append((own, "no_stream" if own_version is None else own_version, bare))
        elif own is None and bare:
            category = bare[0][0].split(".")[0]
            found = json.loads(bare[0][1]).get(f"{category}_id") or str(uuid.uuid4())
            writes.append((f"{category}-{found}", "any", bare))
        writes.extend(named)
        assert len({w[0] for w in writes}) == len(writes), "one write per stream"
        if self.before_append is not None:
            racing, self.before_append = self.before_append, None
            racing()
        for stream_id, expected, _ in writes:
            current = self.version(stream_id)
            holds = (
                expected == "any"
                or (expected == "no_stream" and current is None)
                or (expected == "stream_exists" and current is not None)
                or expected == current
            )
            if not holds:
                raise WrongExpectedVersion(f"{stream_id}: expected {expected}, current {current}")
        stored = []
        for stream_id, _, events in writes:
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
                    "stream_version": len(self.streams.get(stream_id, [])),
                    "global_position": self.position,
                    "metadata": json.loads(metadata) if metadata else {},
                }
                self.streams.setdefault(stream_id, []).append(event)
                stored.append(event)
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
