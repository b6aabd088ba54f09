"""The :class:`Plugin`: handlers per hook and type, and the loop serving the protocol."""

import os
import queue
import sys
import threading
import traceback

from .errors import HandlerError
from .frames import ProtocolViolation, encode_frame, read_frame

#: The protocol version this SDK speaks (the ``protocol`` of ``hello`` and ``ready``).
PROTOCOL_VERSION = 1

#: The four hooks, in the order ``ready`` lists them.
HOOKS = ("before_command", "command_handler", "event_handler", "query_handler")

LOG_LEVELS = ("error", "warn", "info", "debug")


class Context:
    """What a call is about: its id, hook, target and the engine's ``context``."""

    def __init__(self, call, send):
        context = call.get("context") or {}
        self.call_id = call["id"]
        self.hook = call["hook"]
        self.target = call.get("target")
        self.correlation_id = context.get("correlation_id")
        self.causation_id = context.get("causation_id")
        #: ``{"sub", "roles", "tenant"}``, or ``None`` when authentication is off.
        self.principal = context.get("principal")
        self.deadline_ms = context.get("deadline_ms")
        self._send = send

    def log(self, level, message):
        """Sends a ``log`` message (``error``, ``warn``, ``info`` or ``debug``) to the engine."""
        _send_log(self._send, level, message)


def _send_log(send, level, message):
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {LOG_LEVELS}, not {level!r}")
    try:
        send({"type": "log", "level": level, "message": str(message)})
    except OSError:
        print(f"{level}: {message}", file=sys.stderr)


class _Outbox:
    """The protocol's output: one whole frame at a time, whichever thread writes."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message):
        frame = encode_frame(message)
        with self._lock:
            self._stream.write(frame)
            self._stream.flush()


class Plugin:
    """A plugin: its name and version (as in its ``plugin.toml``), an initializer and a handler
    per hook and type. Register handlers with the decorators, then call :meth:`run`."""

    def __init__(self, name, version, *, workers=4):
        self.name = name
        self.version = version
        self.workers = max(1, workers)
        self._initializer = None
        self._handlers = {hook: {} for hook in HOOKS}
        self._outbox = None

    # --- registration ------------------------------------------------------------------------

    def initialize(self, func):
        """Decorator: ``func(config)`` runs on ``hello`` with the manifest's ``[config]``, before
        ``ready``. An exception answers ``refuse`` with its message instead."""
        self._initializer = func
        return func

    def handler(self, hook, target):
        """Decorator registering ``func(ctx, data)`` for ``hook`` and ``target``; its return
        value is the call's ``ok``."""
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook!r}; the hooks are {HOOKS}")

        def register(func):
            if target in self._handlers[hook]:
                raise ValueError(f"{hook} {target} is registered twice")
            self._handlers[hook][target] = func
            return func

        return register

    def before_command(self, command_type):
        """Decorator: ``data`` is ``{"payload": …}``; return ``{"payload": …}`` (``None`` keeps
        the payload unchanged), raise to reject the command."""
        return self.handler("before_command", command_type)

    def command_handler(self, command_type):
        """Decorator: ``data`` has ``payload``, ``stream_id``, ``version`` and ``events``; return
        ``{"events": [...], "result": …}``."""
        return self.handler("command_handler", command_type)

    def event_handler(self, event_type):
        """Decorator for an event type or a pattern ending in ``*``: ``data`` is the envelope;
        return ``{}`` or ``None``. Deliveries repeat (at least once): be idempotent."""
        return self.handler("event_handler", event_type)

    def query_handler(self, query_type):
        """Decorator: ``data`` is ``{"params": …}``; return ``{"result": …}``."""
        return self.handler("query_handler", query_type)

    def log(self, level, message):
        """Sends a ``log`` message once the plugin is ready; before, writes it to stderr."""
        if self._outbox is None:
            print(f"{level}: {message}", file=sys.stderr)
        else:
            _send_log(self._outbox.send, level, message)

    # --- serving -----------------------------------------------------------------------------

    def run(self):
        """Serves the protocol on stdin/stdout, then exits the process: status 0 after
        ``shutdown`` or end of input, 1 after ``refuse``, 2 on a protocol violation.

        File descriptors 0 and 1 are moved aside first: ``print`` (and any child process or C
        library writing to fd 1) goes to stderr, and reading stdin reads nothing, so neither
        can corrupt the frames."""
        protocol_in = os.fdopen(os.dup(0), "rb", buffering=0)
        protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        sys.stdin = open(os.devnull)
        sys.stdout = sys.stderr
        try:
            ending = self.serve(protocol_in, protocol_out)
        except ProtocolViolation as violation:
            print(f"plugin {self.name}: protocol violation: {violation}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(2)
        except (BrokenPipeError, ConnectionResetError):
            ending = "end_of_input"
        sys.stderr.flush()
        # os._exit: calls abandoned at end of input must not hold the process open.
        os._exit(1 if ending == "refused" else 0)

    def serve(self, protocol_in, protocol_out):
        """Serves the protocol on two binary streams (what :meth:`run` does on stdin/stdout) and
        returns how it ended: ``"shutdown"``, ``"end_of_input"`` or ``"refused"``. Raises
        :class:`ProtocolViolation` on a frame or message breaking the protocol."""
        outbox = _Outbox(protocol_out)
        hello = read_frame(protocol_in)
        if hello is None:
            return "end_of_input"
        if hello["type"] != "hello":
            raise ProtocolViolation(f"expected `hello` first, got `{hello['type']}`")
        refusal = self._accept_hello(hello)
        if refusal is not None:
            outbox.send({"type": "refuse", "message": refusal})
            return "refused"
        outbox.send(
            {
                "type": "ready",
                "protocol": PROTOCOL_VERSION,
                "name": self.name,
                "version": self.version,
                "hooks": {hook: list(self._handlers[hook]) for hook in HOOKS},
            }
        )
        self._outbox = outbox

        jobs = queue.Queue()
        workers = [
            threading.Thread(target=self._serve_jobs, args=(jobs,), daemon=True, name=f"call-{n}")
            for n in range(self.workers)
        ]
        for worker in workers:
            worker.start()
        while True:
            message = read_frame(protocol_in)
            if message is None:
                return "end_of_input"
            kind = message["type"]
            if kind == "call":
                self._check_call(message)
                jobs.put((message, outbox))
            elif kind == "ping":
                outbox.send({"type": "pong", "id": message.get("id")})
            elif kind == "shutdown":
                for _ in workers:
                    jobs.put(None)
                for worker in workers:
                    worker.join()
                return "shutdown"
            else:
                raise ProtocolViolation(f"unexpected `{kind}` message")

    def _accept_hello(self, hello):
        """Checks the offered protocol and runs the initializer: the ``refuse`` message, or
        ``None`` to answer ``ready``."""
        offered = hello.get("protocol")
        if offered != PROTOCOL_VERSION or isinstance(offered, bool):
            return f"plugin {self.name} speaks protocol {PROTOCOL_VERSION}, the engine offered {offered}"
        if self._initializer is None:
            return None
        try:
            self._initializer(hello.get("config") or {})
        except Exception as error:  # noqa: BLE001 - any failure to initialise is a refusal
            traceback.print_exc(file=sys.stderr)
            return str(error) or type(error).__name__
        return None

    @staticmethod
    def _check_call(call):
        call_id = call.get("id")
        if not isinstance(call_id, int) or isinstance(call_id, bool):
            raise ProtocolViolation("a `call` without an integer `id`")
        if call.get("hook") not in HOOKS:
            raise ProtocolViolation(f"call {call_id} names no known hook: {call.get('hook')!r}")

    def _find(self, hook, target):
        handlers = self._handlers[hook]
        if target in handlers:
            return handlers[target]
        if hook != "event_handler" or not isinstance(target, str):
            return None
        patterns = [p for p in handlers if p.endswith("*") and target.startswith(p[:-1])]
        return handlers[max(patterns, key=len)] if patterns else None

    def _serve_jobs(self, jobs):
        while True:
            job = jobs.get()
            if job is None:
                return
            call, outbox = job
            answer = self._answer(call, outbox)
            try:
                try:
                    outbox.send(answer)
                except (TypeError, ValueError, ProtocolViolation) as error:
                    # The handler's answer is not JSON (or is too large): the call still gets
                    # exactly one result.
                    print(f"call {call['id']}: the answer cannot be sent: {error}", file=sys.stderr)
                    message = f"the answer is not a JSON frame: {error}"
                    outbox.send({"type": "result", "id": call["id"], "error": {"code": "internal", "message": message}})
            except OSError as error:
                print(f"the result of call {call['id']} was not delivered: {error}", file=sys.stderr)

    def _answer(self, call, outbox):
        ctx = Context(call, outbox.send)
        handler = self._find(ctx.hook, ctx.target)
        result = {"type": "result", "id": ctx.call_id}
        if handler is None:
            result["error"] = {"code": "internal", "message": f"no {ctx.hook} handler for `{ctx.target}`"}
            return result
        data = call.get("data")
        try:
            ok = handler(ctx, data)
        except HandlerError as refusal:
            result["error"] = refusal.to_protocol()
            return result
        except Exception as error:  # noqa: BLE001 - any other failure is the plugin's fault
            print(f"call {ctx.call_id} ({ctx.hook} {ctx.target}) failed:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            result["error"] = {"code": "internal", "message": f"{type(error).__name__}: {error}"}
            return result
        if ok is None and ctx.hook == "before_command":
            ok = {"payload": (data or {}).get("payload")}
        elif ok is None and ctx.hook == "event_handler":
            ok = {}
        elif ok is None:
            result["error"] = {
                "code": "internal",
                "message": f"the {ctx.hook} handler for `{ctx.target}` returned None",
            }
            return result
        result["ok"] = ok
        return result
