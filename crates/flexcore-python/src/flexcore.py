"""FlexCore's Python API: decorators that register handlers with the engine.

Provided by the Rust side (crate flexcore-python) as the module ``flexcore``; handler modules
import it with ``from flexcore import FlexCore, ValidationError``.

What crosses the bridge, in short (``docs/python.md`` has the full rules):

* A command handler returns events: an ``Event``, a dict ``{"type", "data"}``, or an instance
  of a dataclass, a ``NamedTuple`` or a pydantic model (its *event type* comes from
  ``@FlexCore.event(...)``, an ``event_type`` class attribute, or the class name:
  ``UserCreatedEvent`` → ``user.created``), one or a list; or ``Append``s naming streams and
  their expected versions, committed together in one atomic append.
* ``FlexCore.read_stream(stream_id)`` reads any stream inside a command handler; the version
  it saw becomes the expectation of an ``Append`` to that stream.
* Event data is marshalled to JSON predictably (see ``marshal``).
* ``ValidationError`` → 422, ``ConflictError`` → 409, ``NotFoundError`` → 404, ``Forbidden`` →
  403, each with the handler's message and an optional stable ``code``.
* ``FlexCore.context()`` tells a handler who is calling and why (correlation and causation
  ids, principal, idempotency key).
"""

import base64
import ctypes
import dataclasses
import datetime as _dt
import decimal
import enum
import importlib.util
import inspect
import json
import re
import sys
import threading
import traceback
import typing
import uuid

__all__ = [
    "FlexCore",
    "ValidationError",
    "ConflictError",
    "NotFoundError",
    "Forbidden",
    "Event",
    "Append",
    "Stream",
    "Context",
    "Record",
    "event_type_of",
    "marshal",
    "principal",
]


class _Refusal(Exception):
    """A handler refusing a request; the client gets the status of the subclass.

    ``message`` goes to the client as the problem's detail; ``code`` (optional) is a stable,
    machine-readable reason such as ``"email_taken"``, added to the detail as ``[code]``.
    """

    kind = None  # set by each subclass: the flexcore error kind it becomes

    def __init__(self, message="", code=None):
        super().__init__(message)
        self.message = str(message)
        self.code = code

    def __str__(self):
        return self.message


class ValidationError(_Refusal):
    """Raised by a handler when the input breaks a rule: the client gets 422 with the message."""

    kind = "validation"


class ConflictError(_Refusal):
    """Raised when the request clashes with the current state (already exists, already taken):
    the client gets 409 with the message."""

    kind = "conflict"


class NotFoundError(_Refusal):
    """Raised when the request addresses something that does not exist: 404 with the message."""

    kind = "not_found"


class Forbidden(_Refusal):
    """Raised when the caller may not do this: 403 with the message."""

    kind = "forbidden"


class _InvalidReturn(Exception):
    """A handler returned something the engine cannot store (the handler's bug: 500)."""


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
    from a command handler; ``metadata={...}`` adds keys to the stored event's metadata (the
    engine's own keys, such as ``actor`` and ``correlation_id``, cannot be overridden). Stored
    events have ``event_type``, ``data`` (a Record), ``stream_id``, ``stream_version``,
    ``global_position``, ``event_id`` and ``metadata``.
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


class Append:
    """Events for a stream the command handler names, with the version it expects that stream at.

    ``Append("email-ann@example.com", [EmailReserved(...)], expected=Append.NO_STREAM)``
    appends the events to that stream if it does not exist yet. ``expected`` is
    ``Append.ANY`` (no check), ``Append.NO_STREAM``, ``Append.STREAM_EXISTS`` or a version
    number (the stream's last event must have exactly that version; the first event has
    version 0). Left out, it is the version ``FlexCore.read_stream`` saw of that stream during
    this run of the handler (``NO_STREAM`` if the stream did not exist), or ``ANY`` if the
    handler did not read it.

    A handler may return several ``Append``s (and, with an aggregate, its own events beside
    them): the engine commits them all in one atomic append, or nothing when any expectation
    fails. An ``Append`` with no events asserts its expectation only. Without an ``Append``
    the engine picks the stream from the events (see ``FlexCore.command_handler``).
    """

    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"

    def __init__(self, stream_id, events, expected=None):
        if not isinstance(stream_id, str) or not stream_id:
            raise _InvalidReturn(f"Append needs a stream id string; got {_describe(stream_id)}")
        if expected not in (None, Append.ANY, Append.NO_STREAM, Append.STREAM_EXISTS) and not (
            isinstance(expected, int) and not isinstance(expected, bool) and expected >= 0
        ):
            raise _InvalidReturn(
                "Append's expected is Append.ANY, Append.NO_STREAM, Append.STREAM_EXISTS or a "
                f"version >= 0; got {_describe(expected)}"
            )
        self.stream_id = stream_id
        self.events = list(events) if _is_event_list(events) else [events]
        self.expected = expected

    def __repr__(self):
        return f"Append({self.stream_id!r}, {len(self.events)} events, expected={self.expected!r})"


class Stream:
    """One stream as ``FlexCore.read_stream`` found it.

    ``stream_id``; ``events``, oldest first (each an ``Event`` with Record data, or an instance
    of an event class the caller asked for); ``version``, the version of the last event, or
    ``None`` when the stream does not exist; ``exists``.
    """

    __slots__ = ("stream_id", "events", "version")

    def __init__(self, stream_id, events, version):
        self.stream_id = stream_id
        self.events = events
        self.version = version

    @property
    def exists(self):
        return self.version is not None

    def __repr__(self):
        return f"Stream({self.stream_id!r}, {len(self.events)} events, version={self.version!r})"


class Context:
    """Why and for whom the running handler runs (``FlexCore.context()``).

    In a command handler: ``command_id``, ``correlation_id`` (the client's, or the command id),
    ``causation_id`` (what the command's events are caused by: the command id),
    ``idempotency_key``, ``tenant`` and ``principal`` (as ``flexcore.principal()``). In a query
    handler: ``principal`` and ``tenant``. In an event handler: the event's ``event_id``,
    ``correlation_id``, ``causation_id``, ``tenant`` and ``actor`` (the principal the event was
    written for, a Record ``{sub, roles}``). Fields that do not apply are ``None``.
    """

    __slots__ = (
        "command_id",
        "correlation_id",
        "causation_id",
        "idempotency_key",
        "tenant",
        "principal",
        "event_id",
        "actor",
    )

    def __init__(self, **fields):
        for name in self.__slots__:
            setattr(self, name, fields.get(name))

    def __repr__(self):
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__ if getattr(self, n) is not None)
        return f"Context({shown})"


# ---- event types and marshalling ---------------------------------------------------------------


def _is_pydantic_model(cls):
    return isinstance(cls, type) and hasattr(cls, "model_validate") and hasattr(cls, "model_fields")


def _is_named_tuple(cls):
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def _is_event_list(value):
    """Whether a handler returned several events (a NamedTuple is one event, not a list)."""
    return isinstance(value, (list, tuple)) and not _is_named_tuple(type(value))


def _is_typed_class(cls):
    """A class whose instances the bridge turns into event data or builds from JSON."""
    return isinstance(cls, type) and (
        dataclasses.is_dataclass(cls) or _is_named_tuple(cls) or _is_pydantic_model(cls)
    )


_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z]|[0-9]|$)|[A-Z]?[a-z]+|[0-9]+|[A-Z]+")


def event_type_of(cls):
    """The event type of an event class, by the first rule that applies.

    1. ``@FlexCore.event("user.created")`` on the class;
    2. an ``event_type`` class attribute holding a string;
    3. the class name: a trailing ``Event`` is dropped, the rest is split into CamelCase words
       and lower-cased; the first word is the category, the others joined by ``_`` the name:
       ``UserCreatedEvent`` → ``user.created``, ``UserEmailChanged`` → ``user.email_changed``,
       ``HTTPRequestLogged`` → ``http.request_logged``. A one-word name is its own type
       (``Ping`` → ``ping``).
    """
    declared = cls.__dict__.get("_flexcore_event_type")
    if declared:
        return declared
    attribute = getattr(cls, "event_type", None)
    if isinstance(attribute, str) and attribute:
        return attribute
    name = cls.__name__
    if name.endswith("Event") and name != "Event":
        name = name[: -len("Event")]
    words = [w.lower() for w in _WORDS.findall(name)]
    if not words:
        raise _InvalidReturn(f"cannot derive an event type from the class name '{cls.__name__}'")
    if len(words) == 1:
        return words[0]
    return f"{words[0]}.{'_'.join(words[1:])}"


class _MarshalError(Exception):
    def __init__(self, path, problem):
        super().__init__(f"{problem} at {path}")
        self.path = path
        self.problem = problem


def marshal(value, path="value"):
    """``value`` as plain JSON values (dict, list, str, int, float, bool, None), by these rules.

    * a ``datetime`` becomes ISO-8601 text keeping its UTC offset; a *naive* datetime is taken
      to be UTC and gets ``+00:00``; a ``date`` or ``time`` becomes its ISO-8601 text;
    * a ``UUID`` becomes its text; a ``Decimal`` its exact text (``"12.50"``, never a float);
    * an ``Enum`` member becomes its value (marshalled in turn);
    * ``bytes`` and ``bytearray`` become standard base64 text;
    * a ``set`` or ``frozenset`` becomes a list, sorted when its items can be compared (else in
      the order of their JSON text);
    * dataclasses, ``NamedTuple`` instances and pydantic models become objects of their
      fields, recursively; tuples become lists; dict keys must be strings;
    * anything else is an error naming the field path (``data.address.moved_at``).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, enum.Enum):
            return marshal(value.value, path)
        return value
    if isinstance(value, enum.Enum):
        return marshal(value.value, path)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat()
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise _MarshalError(path, f"Decimal {value} is not a finite number")
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Record):
        return marshal(value._fields, path)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, enum.Enum):
                key = key.value
            if not isinstance(key, str):
                raise _MarshalError(path, f"a dict key must be a string; got {_describe(key)}")
            out[key] = marshal(item, f"{path}.{key}")
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: marshal(getattr(value, f.name), f"{path}.{f.name}")
            for f in dataclasses.fields(value)
        }
    if _is_named_tuple(type(value)):
        return {name: marshal(item, f"{path}.{name}") for name, item in zip(value._fields, value)}
    if _is_pydantic_model(type(value)):
        return marshal(value.model_dump(), path)
    if isinstance(value, (list, tuple)):
        return [marshal(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        try:
            items = sorted(value)
        except TypeError:
            items = sorted(value, key=lambda item: json.dumps(marshal(item, path), sort_keys=True))
        return [marshal(item, f"{path}[{i}]") for i, item in enumerate(items)]
    raise _MarshalError(path, f"{type(value).__name__} is not JSON serialisable")


def _describe(value):
    return f"{type(value).__name__} {value!r}"


# ---- building typed commands and events from JSON -----------------------------------------------


def _type_name(hint):
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _parse_datetime(text):
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return _dt.datetime.fromisoformat(text)


_PLAIN_TYPES = {
    str: (str, "a string"),
    bool: (bool, "a boolean"),
}


def _coerce(value, hint, path, refuse):
    """``value`` (plain JSON) as an instance of ``hint``; ``refuse(path, message)`` raises."""
    if hint is typing.Any or hint is inspect.Parameter.empty or hint is object:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:
            return _coerce(value, candidates[0], path, refuse)
        return value
    if value is None:
        refuse(path, f"{path} must not be null")
    if origin in (list, set, frozenset, tuple) or hint in (list, set, frozenset, tuple):
        if not isinstance(value, list):
            refuse(path, f"{path} must be a list")
        item_hint = args[0] if args and origin is not tuple else typing.Any
        items = [_coerce(v, item_hint, f"{path}[{i}]", refuse) for i, v in enumerate(value)]
        return (origin or hint)(items) if (origin or hint) is not list else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            refuse(path, f"{path} must be an object")
        value_hint = args[1] if len(args) == 2 else typing.Any
        return {k: _coerce(v, value_hint, f"{path}.{k}", refuse) for k, v in value.items()}
    if _is_typed_class(hint):
        if not isinstance(value, dict):
            refuse(path, f"{path} must be an object")
        return _build(hint, value, f"{path}.", refuse)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in hint)
            refuse(path, f"{path} must be one of {allowed}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            refuse(path, f"{path} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            refuse(path, f"{path} must be a number")
        return float(value)
    if hint in _PLAIN_TYPES:
        expected, described = _PLAIN_TYPES[hint]
        if not isinstance(value, expected):
            refuse(path, f"{path} must be {described}")
        return value
    parsers = {
        _dt.datetime: (_parse_datetime, "an ISO-8601 date-time"),
        _dt.date: (_dt.date.fromisoformat, "an ISO-8601 date"),
        uuid.UUID: (uuid.UUID, "a UUID"),
        decimal.Decimal: (lambda v: decimal.Decimal(str(v)), "a decimal number"),
        bytes: (lambda v: base64.b64decode(v, validate=True), "base64 text"),
    }
    if hint in parsers:
        parse, described = parsers[hint]
        if hint is not decimal.Decimal and not isinstance(value, str):
            refuse(path, f"{path} must be {described}")
        try:
            parsed = parse(value)
        except (ValueError, TypeError, decimal.InvalidOperation):
            refuse(path, f"{path} must be {described}")
        if hint is _dt.datetime and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_dt.timezone.utc)
        return parsed
    return value


def _build(cls, fields, prefix, refuse):
    """An instance of the dataclass, NamedTuple or pydantic model ``cls`` from a JSON object."""
    if _is_pydantic_model(cls):
        try:
            return cls.model_validate(fields)
        except Exception as exc:  # pydantic.ValidationError, without importing pydantic
            errors = getattr(exc, "errors", None)
            if not callable(errors):
                raise
            first = errors()[0]
            where = prefix + ".".join(str(part) for part in first.get("loc", ()))
            if first.get("type") == "missing":
                refuse(where, f"{where} is required")
            refuse(where, f"{where}: {first.get('msg', 'is invalid')}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = getattr(cls, "__annotations__", {})
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
    else:
        names = list(cls._fields)
        required = {n for n in names if n not in getattr(cls, "_field_defaults", {})}
    kwargs = {}
    for name in names:
        if name in fields:
            kwargs[name] = _coerce(fields[name], hints.get(name, typing.Any), prefix + name, refuse)
        elif name in required:
            refuse(prefix + name, f"{prefix}{name} is required")
    return cls(**kwargs)


def _refuse_command(path, message):
    raise ValidationError(message)


def _first_parameter_class(func):
    """The class the first parameter of ``func`` is annotated with, if the bridge can build it."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params:
        return None
    try:
        hint = typing.get_type_hints(func).get(params[0].name)
    except Exception:
        hint = params[0].annotation
    return hint if _is_typed_class(hint) else None


# ---- the registry --------------------------------------------------------------------------------


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


class _CommandHandler:
    """A registered command handler: with an aggregate, or stateless (``aggregate`` None)."""

    def __init__(self, func, aggregate, creates):
        self.func = func
        self.aggregate = aggregate
        self.wants_state = aggregate is not None and _accepts_two(func)
        self.creates = creates
        self.command_class = _first_parameter_class(func)

    def route(self):
        if self.aggregate is None:
            return {"stateless": True}
        return {
            "category": self.aggregate.category,
            "id_field": self.aggregate.id_field,
            "creates": self.creates,
        }


class _Registry:
    def __init__(self):
        self.commands = {}  # command type -> _CommandHandler
        self.queries = {}
        self.events = {}  # event type -> [functions]
        self.durable = {}  # consumer name -> (event type, function)
        self.aggregates = {}

    def describe(self):
        return json.dumps(
            {
                "commands": {name: handler.route() for name, handler in self.commands.items()},
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
    def event(event_type):
        """Declares the event type of an event class (a dataclass, NamedTuple or pydantic
        model): ``@FlexCore.event("user.created")``. Without it, ``event_type_of`` applies."""

        if not isinstance(event_type, str) or not event_type.strip():
            raise ValueError("an event type is a non-empty string")

        def declare(cls):
            cls._flexcore_event_type = event_type
            return cls

        return declare

    @staticmethod
    def context():
        """The ``Context`` of the running handler (see ``Context``); ``None`` outside one."""
        return _running.context

    @staticmethod
    def read_stream(stream_id, *event_classes):
        """Reads a whole stream inside a command handler: a ``Stream`` with its events and version.

        Events whose type is that of one of ``event_classes`` (dataclasses, NamedTuples or
        pydantic models: see ``event_type_of``) arrive as instances of that class, the others
        as ``Event`` with Record data. The version seen (the first read of the stream in this
        run of the handler) becomes the default expectation of an ``Append`` to the stream,
        and a handler that read a stream is re-run when its append meets a conflict. Outside
        a command handler it raises ``RuntimeError``.
        """
        reader = _running.reader
        if reader is None:
            raise RuntimeError("FlexCore.read_stream can only be called while a command handler runs")
        if not isinstance(stream_id, str) or not stream_id:
            raise ValueError(f"read_stream needs a stream id string; got {_describe(stream_id)}")
        classes = {}
        for cls in event_classes:
            if not _is_typed_class(cls):
                raise TypeError(f"{cls!r} is not an event class (a dataclass, NamedTuple or pydantic model)")
            classes[event_type_of(cls)] = cls
        found = json.loads(reader(stream_id))
        version = found["version"]
        _running.reads.setdefault(stream_id, Append.NO_STREAM if version is None else version)
        return Stream(stream_id, [_read_event(raw, classes) for raw in found["events"]], version)

    @staticmethod
    def command_handler(command_type, aggregate=None, creates=False):
        """Registers ``func(cmd)`` or, with an aggregate, ``func(cmd, state)`` for a command type.

        ``cmd`` is a Record over the JSON payload (reading a missing field is a 422), or, when
        the first parameter is annotated with a dataclass or pydantic model
        (``def create_user(cmd: CreateUser)``), an instance of it built from the payload (a
        missing or mistyped field is a 422 naming it).

        The handler returns an event (an ``Event``, a dict ``{"type": ..., "data": {...}}``,
        or a dataclass, NamedTuple or pydantic model instance: see ``event_type_of``), a list
        of them, or None.

        With ``aggregate`` (a class decorated with ``@FlexCore.aggregate``) the stream is the
        aggregate's and the handler may take the current state as a second parameter; the
        append expects the version the state was built from (a lost race is retried). With
        ``creates=True`` the command makes a new aggregate: the engine assigns its id (a
        UUIDv7, readable as ``cmd.<id_field>``; a client may not send that field), the handler
        sees a fresh state, and the append expects the stream not to exist. Such a handler
        may also return ``Append``s to other streams beside its events (a list mixing both):
        everything is committed in one atomic append.

        Without ``aggregate`` the handler is *stateless* (the seed's form): the engine picks
        the stream from the events. The first segment of the first event's type is the
        category, its ``<category>_id`` field the id: ``user.created`` with
        ``user_id="42"`` goes to ``user-42``; with no such field, to ``<category>-<a fresh
        UUIDv7>``. Every event of one command must land in that stream. The append has no
        version check (``Append.ANY``); return ``Append(stream_id, events, expected=...)``
        (one or several) to name the streams and their expectations yourself.
        """

        def register(func):
            agg = None
            if aggregate is not None:
                agg = getattr(aggregate, "_flexcore_aggregate", None)
                if agg is None:
                    raise TypeError(f"{aggregate!r} is not declared with @FlexCore.aggregate")
            elif creates:
                raise TypeError("creates=True needs an aggregate")
            reg = _registry()
            if command_type in reg.commands:
                raise ValueError(f"command type '{command_type}' already has a handler")
            reg.commands[command_type] = _CommandHandler(func, agg, bool(creates))
            return func

        return register

    @staticmethod
    def query_handler(query_type):
        """Registers ``func(params)`` for a query type; it returns something ``marshal`` can
        turn into JSON."""

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

        ``event`` is an ``Event`` whose ``data`` is a Record, or, when the parameter is
        annotated with an event class (a dataclass, NamedTuple or pydantic model), an instance
        of it built from the stored data.

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


class _RunningState(threading.local):
    """What the handler running on this thread may ask for. Per thread: each engine runtime
    has its own Python thread, and one may run while another waits for a stream read."""

    context = None  # its Context
    reader = None  # the engine's stream reader, while a command handler runs
    reads = None  # stream id -> the expectation its first read in this run implies


_running = _RunningState()


def principal():
    """The caller the running command or query acts for, or ``None`` when authentication is off.

    A Record with ``sub`` (the subject), ``roles`` (a list of role names) and ``tenant`` (or
    ``None``). Events the command returns carry it as ``metadata.actor`` without the handler's
    help.
    """
    context = _running.context
    return None if context is None else context.principal


class _Running:
    """Sets ``FlexCore.context()`` (and ``principal()``) for the duration of one handler call."""

    def __init__(self, context):
        self.context = context

    def __enter__(self):
        _running.context = self.context

    def __exit__(self, *exc):
        _running.context = None
        return False


def _caller_context(context_json):
    """The Context of a command or query from the JSON the Rust side sends."""
    fields = {} if context_json is None else json.loads(context_json)
    found = fields.get("principal")
    fields["principal"] = None if found is None else Record(found, "principal")
    return Context(**fields)


def _event_context(raw):
    metadata = raw.get("metadata") or {}
    actor = metadata.get("actor")
    if isinstance(actor, str):
        actor = {"sub": actor, "roles": []}
    return Context(
        event_id=raw.get("event_id"),
        correlation_id=metadata.get("correlation_id"),
        causation_id=metadata.get("causation_id"),
        tenant=metadata.get("tenant"),
        actor=None if actor is None else Record(actor, "actor"),
    )


def _run_command(registry, command_type, payload_json, events_json, context_json=None, reader=None):
    """Runs a command handler; returns ``[(stream id or None, expected or None, events)]`` with
    each event ``(type, data JSON, extra metadata JSON or None)``. A stream of None is the
    aggregate's (or, stateless, the one the events name), its expected None.

    ``reader(stream_id)`` is the engine's: the JSON ``{"events": [...], "version": ...}`` of a
    stream, for ``FlexCore.read_stream``."""
    _running.reader, _running.reads = reader, {}
    try:
        with _Running(_caller_context(context_json)):
            return _decide(registry, command_type, payload_json, events_json)
    finally:
        _running.reader, _running.reads = None, None


def _read_event(raw, classes):
    """A stored event read by ``FlexCore.read_stream``: an instance of its class if asked for."""
    cls = classes.get(raw["event_type"])
    if cls is None:
        return _stored_event(raw)

    def refuse(path, message):
        raise ValueError(f"stored event {raw['event_id']} ('{raw['event_type']}') does not fit {cls.__name__}: {message}")

    return _build(cls, raw["data"], "data.", refuse)


def _decide(registry, command_type, payload_json, events_json):
    handler = registry.commands[command_type]
    payload = json.loads(payload_json)
    if handler.command_class is not None:
        if not isinstance(payload, dict):
            raise ValidationError("the command must be a JSON object")
        cmd = _build(handler.command_class, payload, "", _refuse_command)
    else:
        cmd = _wrap(payload, "command")
    if handler.wants_state:
        state = handler.aggregate.replay(_stored_event(raw) for raw in json.loads(events_json))
        result = handler.func(cmd, state)
    else:
        result = handler.func(cmd)
    name = getattr(handler.func, "__name__", command_type)
    if result is None:
        return []
    many = _is_event_list(result)
    appends = result if many and any(isinstance(r, Append) for r in result) else [result]
    out = []
    for item in appends:
        if isinstance(item, Append):
            events = [_event_parts(e, name) for e in item.events]
            expected = item.expected
            if expected is None:
                expected = _running.reads.get(item.stream_id, Append.ANY)
            out.append((item.stream_id, expected, events))
        elif _is_event_list(item):
            out.append((None, None, [_event_parts(e, name) for e in item]))
        else:
            out.append((None, None, [_event_parts(item, name)]))
    return out


def _event_parts(item, handler):
    """``(type, data JSON, extra metadata JSON or None)`` of one returned event."""
    if isinstance(item, Append):
        raise _InvalidReturn("an Append cannot be mixed with bare events in one list")
    if isinstance(item, Event):
        event_type, data, metadata = item.event_type, item.data, item.metadata
    elif isinstance(item, dict):
        event_type, data, metadata = item.get("type"), item.get("data", {}), item.get("metadata")
    elif _is_typed_class(type(item)):
        event_type, data = event_type_of(type(item)), item
        metadata = getattr(item, "__metadata__", None)
    else:
        raise _InvalidReturn(
            "a command handler returns an Event, a dict {\"type\": ..., \"data\": {...}}, a "
            "dataclass, NamedTuple or pydantic model instance, an Append, a list of them or "
            f"None; got {_describe(item)}"
        )
    if not isinstance(event_type, str) or not event_type.strip():
        raise _InvalidReturn(f"the event type must be a non-empty string; got {_describe(event_type)}")
    try:
        marshalled = marshal(data, "data")
    except _MarshalError as exc:
        raise _InvalidReturn(
            f"handler '{handler}': the data of event '{event_type}' must serialise to a JSON "
            f"object: {exc.problem} at field '{exc.path}'"
        ) from None
    if not isinstance(marshalled, dict):
        raise _InvalidReturn(
            f"handler '{handler}': the data of event '{event_type}' must be a JSON object; got {_describe(data)}"
        )
    extra = None
    if metadata is not None:
        if isinstance(metadata, Record):
            metadata = metadata._fields
        if not isinstance(metadata, dict):
            raise _InvalidReturn(
                f"handler '{handler}': the metadata of event '{event_type}' must be a dict; got {_describe(metadata)}"
            )
        try:
            extra = json.dumps(marshal(metadata, "metadata"))
        except _MarshalError as exc:
            raise _InvalidReturn(
                f"handler '{handler}': the metadata of event '{event_type}' {exc.problem} at field '{exc.path}'"
            ) from None
    return (event_type, json.dumps(marshalled), extra)


def _run_query(registry, query_type, params_json, context_json=None):
    with _Running(_caller_context(context_json)):
        return registry.queries[query_type](_wrap(json.loads(params_json), "query"))


def _event_argument(func, raw):
    """What an event handler receives: its annotated event class built from the data, or an
    Event with Record data."""
    cls = _event_classes.get(func)
    if cls is None:
        cls = _first_parameter_class(func) or False
        _event_classes[func] = cls
    if cls:

        def refuse(path, message):
            raise ValueError(f"stored event {raw['event_id']} ('{raw['event_type']}') does not fit {cls.__name__}: {message}")

        return _build(cls, raw["data"], "data.", refuse)
    return _stored_event(raw)


_event_classes = {}  # event handler function -> its annotated event class, or False


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
    with _Running(_event_context(raw)):
        func(_event_argument(func, raw))
    return True


def _run_event_handlers(registry, event_json):
    raw = json.loads(event_json)
    with _Running(_event_context(raw)):
        for func in registry.events.get(raw["event_type"], ()):
            func(_event_argument(func, raw))


def _to_json(value):
    try:
        return json.dumps(marshal(value))
    except _MarshalError as exc:
        raise TypeError(f"{exc.problem} at field '{exc.path}'") from None


def _format_exception(exc, tb):
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _thread_id():
    return threading.get_ident()


def _set_async_exc(thread_id, exc):
    """Raises ``exc`` in thread ``thread_id`` at its next bytecode (None clears a pending one)."""
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else ctypes.c_void_p()
    )
