"""FlexCore's Python API: decorators that register handlers with the engine.

Provided by the Rust side (crate flexcore-python) as the module ``flexcore``; handler modules
import it with ``from flexcore import FlexCore, ValidationError``.
"""

import ctypes
import importlib.util
import inspect
import json
import sys
import threading
import traceback

__all__ = ["FlexCore", "ValidationError", "Event", "Record", "principal"]


class ValidationError(Exception):
    """Raised by a handler when the input breaks a rule: the client gets 422 with the message."""


class MissingField(ValidationError, AttributeError):
    """A command or query lacks a field the handler read (`hasattr` and `getattr` with a
    default still work; left uncaught, it is a ValidationError)."""


class HandlerTimeout(BaseException):
    """Injected into a handler that overran its timeout (a BaseException: `except Exception`
    does not swallow it)."""


class Record:
    """Read-only attribute access over a JSON object: ``cmd.email``, ``event.data.address.city``.

    Nested objects become Records, lists are lists. ``get(name, default)``, ``name in record``
    and ``to_dict()`` work as on a dict.
    """

    __slots__ = ("_fields", "_what")

    def __init__(self, fields, what="record"):
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_what", what)

    def __getattr__(self, name):
        fields = object.__getattribute__(self, "_fields")
        if name in fields:
            return _wrap(fields[name], object.__getattribute__(self, "_what"))
        return self._missing(name)

    def _missing(self, name):
        raise AttributeError(f"{self._what} has no field '{name}'")

    def __setattr__(self, name, value):
        raise AttributeError(f"{self._what} is read-only")

    def __getitem__(self, name):
        return _wrap(self._fields[name], self._what)

    def __contains__(self, name):
        return name in self._fields

    def get(self, name, default=None):
        return _wrap(self._fields[name], self._what) if name in self._fields else default

    def to_dict(self):
        return json.loads(json.dumps(self._fields))

    def __repr__(self):
        return f"Record({self._fields!r})"

    def __eq__(self, other):
        return isinstance(other, Record) and self._fields == other._fields


class _CommandRecord(Record):
    """A command or query: reading a missing field is the client's fault (ValidationError)."""

    __slots__ = ()

    def _missing(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingField(f"{name} is required")


def _wrap(value, what):
    if isinstance(value, dict):
        return _CommandRecord(value, what) if what in ("command", "query") else Record(value, what)
    if isinstance(value, list):
        return [_wrap(v, what) for v in value]
    return value


class Event:
    """An event, both as handlers return it and as stored events arrive.

    Return ``Event("user.created", {"email": ...})`` (or the dict ``{"type": ..., "data": ...}``)
    from a command handler. Stored events have ``event_type``, ``data`` (a Record),
    ``stream_id``, ``stream_version``, ``global_position``, ``event_id`` and ``metadata``.
    """

    def __init__(self, event_type, data=None, **stored):
        self.event_type = event_type
        self.type = event_type
        self.data = data if data is not None else {}
        self.stream_id = stored.get("stream_id")
        self.stream_version = stored.get("stream_version")
        self.global_position = stored.get("global_position")
        self.event_id = stored.get("event_id")
        self.metadata = stored.get("metadata")

    def __repr__(self):
        return f"Event({self.event_type!r}, stream_id={self.stream_id!r})"


def _stored_event(raw):
    return Event(
        raw["event_type"],
        Record(raw["data"], "event data"),
        stream_id=raw["stream_id"],
        stream_version=raw["stream_version"],
        global_position=raw["global_position"],
        event_id=raw["event_id"],
        metadata=Record(raw.get("metadata") or {}, "event metadata"),
    )


class _Aggregate:
    def __init__(self, cls, category, id_field):
        self.cls = cls
        self.category = category
        self.id_field = id_field
        self.appliers = {}
        for attr in vars(cls).values():
            for event_type in getattr(attr, "_flexcore_applies", ()):
                self.appliers[event_type] = attr

    def replay(self, events):
        state = self.cls()
        for event in events:
            applier = self.appliers.get(event.event_type)
            if applier is not None:
                applier(state, event)
        return state


class _Registry:
    def __init__(self):
        self.commands = {}  # command type -> (function, _Aggregate, wants_state, creates)
        self.queries = {}
        self.events = {}  # event type -> [functions]
        self.durable = {}  # consumer name -> (event type, function)
        self.aggregates = {}

    def describe(self):
        return json.dumps(
            {
                "commands": {
                    name: {"category": agg.category, "id_field": agg.id_field, "creates": creates}
                    for name, (_, agg, _, creates) in self.commands.items()
                },
                "queries": sorted(self.queries),
                "events": sorted(self.events),
                "durable": {name: event_type for name, (event_type, _) in self.durable.items()},
            }
        )


_loading = None  # the registry the modules being loaded register into


def _registry():
    if _loading is None:
        raise RuntimeError("flexcore handlers can only be registered while FlexCore loads modules")
    return _loading


def _accepts_two(func):
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class FlexCore:
    """The decorators handler modules use."""

    @staticmethod
    def aggregate(category, id_field):
        """Declares an aggregate's state class: stream ``{category}-{cmd.<id_field>}``.

        The class is instantiated with no arguments, then each stored event of the stream is
        passed to the method decorated with ``@FlexCore.apply(event_type)``.
        """

        def register(cls):
            agg = _Aggregate(cls, category, id_field)
            _registry().aggregates[cls] = agg
            cls._flexcore_aggregate = agg
            return cls

        return register

    @staticmethod
    def apply(*event_types):
        """Marks a method of an aggregate class as the one that applies these event types."""

        def mark(func):
            func._flexcore_applies = tuple(event_types)
            return func

        return mark

    @staticmethod
    def command_handler(command_type, aggregate, creates=False):
        """Registers ``func(cmd)`` or ``func(cmd, state)`` for a command type.

        ``aggregate`` is a class decorated with ``@FlexCore.aggregate``; it decides the stream
        and gives the handler the current state. The handler returns an Event (or a dict
        ``{"type": ..., "data": {...}}``), a list of them, or None.

        With ``creates=True`` the command makes a new aggregate: the engine assigns its id (a
        UUIDv7, readable as ``cmd.<id_field>``; a client may not send that field), the handler
        sees a fresh state, and the append expects the stream not to exist.
        """

        def register(func):
            agg = getattr(aggregate, "_flexcore_aggregate", None)
            if agg is None:
                raise TypeError(f"{aggregate!r} is not declared with @FlexCore.aggregate")
            reg = _registry()
            if command_type in reg.commands:
                raise ValueError(f"command type '{command_type}' already has a handler")
            reg.commands[command_type] = (func, agg, _accepts_two(func), bool(creates))
            return func

        return register

    @staticmethod
    def query_handler(query_type):
        """Registers ``func(params)`` for a query type; it returns something JSON-serialisable."""

        def register(func):
            reg = _registry()
            if query_type in reg.queries:
                raise ValueError(f"query type '{query_type}' already has a handler")
            reg.queries[query_type] = func
            return func

        return register

    @staticmethod
    def event_handler(event_type, durable=None):
        """Registers ``func(event)`` for an event type (at-least-once: make it idempotent).

        Without ``durable`` the handler sees the whole log again at every start and reload (for
        in-memory read models). With ``durable="name"`` it is a durable consumer of that name:
        a stored checkpoint, each event handled once more only after a crash, retries with
        backoff, then a dead letter that keeps the stream's later events waiting (for side
        effects such as emails). A new durable name is picked up at the next start.
        """

        def register(func):
            reg = _registry()
            if durable is None:
                reg.events.setdefault(event_type, []).append(func)
            else:
                if not isinstance(durable, str) or not durable:
                    raise ValueError("durable must be a non-empty consumer name")
                if durable in reg.durable:
                    raise ValueError(f"durable consumer '{durable}' is registered twice")
                reg.durable[durable] = (event_type, func)
            return func

        return register


# ---- called by the Rust side, always on the worker thread that owns a runtime ----------------

_load_counter = 0


def _load(paths):
    """Imports the handler modules at ``paths`` into a fresh registry and returns it."""
    global _loading, _load_counter
    _loading = _Registry()
    try:
        for path in paths:
            _load_counter += 1
            name = f"flexcore_handlers_{_load_counter}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load a Python module from '{path}'")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return _loading
    finally:
        _loading = None


_principal = None


def principal():
    """The caller the running command or query acts for, or ``None`` when authentication is off.

    A Record with ``sub`` (the subject), ``roles`` (a list of role names) and ``tenant`` (or
    ``None``). Events the command returns carry it as ``metadata.actor`` without the handler's
    help.
    """
    return _principal


class _ActingFor:
    """Sets ``principal()`` for the duration of one handler call."""

    def __init__(self, principal_json):
        self.principal = None if principal_json is None else Record(json.loads(principal_json), "principal")

    def __enter__(self):
        global _principal
        _principal = self.principal

    def __exit__(self, *exc):
        global _principal
        _principal = None
        return False


def _run_command(registry, command_type, payload_json, events_json, principal_json=None):
    with _ActingFor(principal_json):
        return _decide(registry, command_type, payload_json, events_json)


def _decide(registry, command_type, payload_json, events_json):
    func, agg, wants_state, _ = registry.commands[command_type]
    cmd = _wrap(json.loads(payload_json), "command")
    if wants_state:
        state = agg.replay(_stored_event(raw) for raw in json.loads(events_json))
        result = func(cmd, state)
    else:
        result = func(cmd)
    if result is None:
        return []
    if not isinstance(result, (list, tuple)):
        result = [result]
    out = []
    for item in result:
        # (type, data, well-shaped); Rust checks the values and reports a bad shape.
        if isinstance(item, Event):
            out.append((item.event_type, item.data, True))
        elif isinstance(item, dict):
            out.append((item.get("type"), item.get("data", {}), True))
        else:
            out.append((item, None, False))
    return out


def _run_query(registry, query_type, params_json, principal_json=None):
    with _ActingFor(principal_json):
        return registry.queries[query_type](_wrap(json.loads(params_json), "query"))


def _run_durable(registry, name, event_json):
    """Runs the durable consumer ``name`` on one event; False when this version lacks it."""
    entry = registry.durable.get(name)
    if entry is None:
        return False
    event_type, func = entry
    raw = json.loads(event_json)
    if raw["event_type"] != event_type:
        # Rust delivers only the type subscribed to at start, so a reload changed the type.
        # Failing keeps the event (it is parked) instead of passing it unhandled.
        raise RuntimeError(
            f"durable consumer '{name}' now handles '{event_type}', not '{raw['event_type']}': "
            "restart the server to subscribe it to the new type"
        )
    func(_stored_event(raw))
    return True


def _run_event_handlers(registry, event_json):
    raw = json.loads(event_json)
    for func in registry.events.get(raw["event_type"], ()):
        func(_stored_event(raw))


def _to_json(value):
    if isinstance(value, Record):
        value = value._fields
    return json.dumps(value, default=lambda o: o._fields if isinstance(o, Record) else _unserialisable(o))


def _unserialisable(o):
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _format_exception(exc, tb):
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _thread_id():
    return threading.get_ident()


def _set_async_exc(thread_id, exc):
    """Raises ``exc`` in thread ``thread_id`` at its next bytecode (None clears a pending one)."""
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else ctypes.c_void_p()
    )
