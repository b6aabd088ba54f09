#!/usr/bin/env python3
"""Plays the FlexCore engine against a plugin folder and checks it keeps docs/plugin-protocol.md.

    python3 sdk/conformance.py examples/plugins/email-enricher
    python3 sdk/conformance.py PLUGIN_DIR --script calls.json
    python3 sdk/conformance.py PLUGIN_DIR --call query_handler email_domain '{"params": {"email": "a@b.io"}}'

It reads the folder's plugin.toml, starts its [entry] as the engine does (section 5: the
folder as working directory, its own process group, the [limits], only PATH, HOME, LANG and
FLEXCORE_PLUGIN_*), does the handshake, sends every call at once, pings, checks each answer
(ids, shapes, the script's expectations), sends shutdown and checks the exit status; then
starts it again and checks that closing stdin alone makes it exit. Standard library only and
independent of the SDKs, so it judges them too (Python 3.11 or later, for tomllib). Exit
status 0 when every check passes.

A script is JSON: {"config": {...} (optional, replaces the manifest's [config]),
"calls": [{"hook", "target", "data", "context" (optional), "expect" (optional):
{"ok": <the exact ok>} or {"error": {<fields that must match>}}}]}. Without --script or
--call, the folder's conformance.json is used when there is one.
"""

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import queue
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import tomllib

MAX_FRAME_BYTES = 16 * 1024 * 1024
HOOKS = ("before_command", "command_handler", "event_handler", "query_handler")
PLUGIN_TYPES = {"ready", "refuse", "result", "pong", "log"}
LOG_LEVELS = {"error", "warn", "info", "debug"}
DEFAULT_LIMITS = {"call_timeout_ms": 2000, "handshake_timeout_ms": 5000}
SHUTDOWN_DEADLINE_MS = 5000


class Failed(Exception):
    """A check that did not pass; the message says which and why."""


class Manifest:
    """The parts of plugin.toml the engine acts on, checked against section 4."""

    def __init__(self, folder):
        self.folder = pathlib.Path(folder).resolve()
        path = self.folder / "plugin.toml"
        try:
            with open(path, "rb") as file:
                toml = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise Failed(f"{path}: {error}") from None
        self.name = toml.get("name")
        self.version = toml.get("version")
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9_-]+", self.name):
            raise Failed(f"manifest: name {self.name!r} is not [a-z0-9_-]+")
        if not isinstance(self.version, str) or not re.fullmatch(r"\d+\.\d+\.\d+([-+].*)?", self.version):
            raise Failed(f"manifest: version {self.version!r} is not semver")
        entry = toml.get("entry") or {}
        if "compiled_in" in entry:
            raise Failed("manifest: a compiled_in plugin has no process to check")
        self.command = entry.get("command")
        self.args = entry.get("args", [])
        if not isinstance(self.command, str) or not self.command:
            raise Failed("manifest: [entry] command is missing")
        if not isinstance(self.args, list) or not all(isinstance(a, str) for a in self.args):
            raise Failed("manifest: [entry] args must be a list of strings")
        self.sha256 = entry.get("sha256")
        declared = toml.get("hooks") or {}
        unknown = set(declared) - set(HOOKS)
        if unknown:
            raise Failed(f"manifest: unknown hooks {sorted(unknown)}")
        self.hooks = {hook: list(declared.get(hook, [])) for hook in HOOKS}
        commands = toml.get("commands") or {}
        for command_type in self.hooks["command_handler"]:
            stream = commands.get(command_type)
            if not isinstance(stream, dict) or not isinstance(stream.get("category"), str) \
                    or not isinstance(stream.get("id_field"), str) or not isinstance(stream.get("creates"), bool):
                raise Failed(f"manifest: [commands.{command_type}] needs category, id_field and creates")
        self.config = toml.get("config") or {}
        self.limits = {**DEFAULT_LIMITS, **(toml.get("limits") or {})}

    def environment(self):
        """Section 5: PATH, HOME, LANG when the engine has them, and the plugin's two variables."""
        env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
        env.update(FLEXCORE_PLUGIN_PROTOCOL="1", FLEXCORE_PLUGIN_NAME=self.name)
        return env

    def executable(self):
        """Section 5: a command with a / is relative to the folder; a bare name is on PATH."""
        if "/" in self.command:
            executable = self.folder / self.command
        else:
            found = shutil.which(self.command, path=self.environment().get("PATH", ""))
            if found is None:
                raise Failed(f"entry: {self.command} is not on PATH")
            executable = pathlib.Path(found)
        if not os.access(executable, os.X_OK):
            raise Failed(f"entry: {executable} is not an executable file (is it built?)")
        if self.sha256 is not None:
            digest = hashlib.sha256(executable.read_bytes()).hexdigest()
            if digest != self.sha256.lower():
                raise Failed(f"entry: {executable} has SHA-256 {digest}, the manifest says {self.sha256}")
        return executable


def _apply_limits(limits, prctl):
    """Runs in the child before exec: death with the engine, then the [limits] the kernel
    enforces (the address-space limit last: nothing may allocate after it)."""
    if prctl is not None:
        pr_set_pdeathsig = 1
        prctl(pr_set_pdeathsig, signal.SIGKILL)
    if "cpu_seconds" in limits:
        seconds = int(limits["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    if "memory_mb" in limits:
        size = int(limits["memory_mb"]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))


def _linux_prctl():
    """libc's prctl, looked up in the parent (loading a library after fork is not safe)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


class RunningPlugin:
    """The plugin's process and a thread turning its stdout into frames (or a violation)."""

    def __init__(self, manifest):
        self.manifest = manifest
        limits, prctl = manifest.limits, _linux_prctl()
        self.process = subprocess.Popen(
            [str(manifest.executable()), *manifest.args],
            cwd=manifest.folder,
            env=manifest.environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
            preexec_fn=lambda: _apply_limits(limits, prctl),
        )
        self.frames = queue.Queue()
        self.stderr_lines = []
        threading.Thread(target=self._read_frames, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_frames(self):
        stream = self.process.stdout
        while True:
            prefix = stream.read(4)
            if not prefix:
                self.frames.put(("eof", None))
                return
            if len(prefix) < 4:
                self.frames.put(("violation", "stdout ended inside a frame's length"))
                return
            (length,) = struct.unpack(">I", prefix)
            if length > MAX_FRAME_BYTES:
                self.frames.put(("violation", f"a frame of {length} bytes (over 16 MiB); bytes {prefix!r}"))
                return
            body = stream.read(length)
            try:
                message = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self.frames.put(("violation", f"a frame that is not UTF-8 JSON: {body[:80]!r}"))
                return
            if not isinstance(message, dict) or message.get("type") not in PLUGIN_TYPES:
                self.frames.put(("violation", f"not a plugin message: {body[:120]!r}"))
                return
            self.frames.put(("message", message))

    def _read_stderr(self):
        for line in self.process.stderr:
            self.stderr_lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def send(self, message):
        body = json.dumps(message).encode("utf-8")
        try:
            self.process.stdin.write(struct.pack(">I", len(body)) + body)
            self.process.stdin.flush()
        except OSError as error:
            status = self.wait(1)
            raise Failed(f"sending {message['type']}: {error} (the plugin exited with status {status})") from None

    def receive(self, deadline, what):
        """The next message other than `log` (checked and kept in self.logs), before `deadline`."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                kind, value = self.frames.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise Failed(f"{what}: no answer in time") from None
            if kind == "eof":
                raise Failed(f"{what}: the plugin closed stdout (exit status {self.process.poll()})")
            if kind == "violation":
                raise Failed(f"{what}: the plugin wrote {value}")
            if value["type"] == "log":
                if value.get("level") not in LOG_LEVELS or not isinstance(value.get("message"), str):
                    raise Failed(f"{what}: a malformed log message {value}")
                continue
            return value

    def wait(self, seconds):
        try:
            return self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def handshake(plugin, manifest, config):
    plugin.send({
        "type": "hello",
        "protocol": 1,
        "engine": "flexcore-conformance 1",
        "plugin": {"name": manifest.name, "version": manifest.version},
        "config": config,
    })
    deadline = time.monotonic() + manifest.limits["handshake_timeout_ms"] / 1000
    # Section 2.1: nothing but ready or refuse before the handshake completes (not even log).
    kind, value = _next_frame(plugin, deadline, "handshake")
    if kind != "message":
        raise Failed(f"handshake: {value}")
    if value["type"] == "refuse":
        raise Failed(f"handshake: the plugin refused: {value.get('message')!r}")
    if value["type"] != "ready":
        raise Failed(f"handshake: expected ready or refuse, got {value['type']}")
    if value.get("protocol") != 1:
        raise Failed(f"handshake: ready speaks protocol {value.get('protocol')!r}, not 1")
    if (value.get("name"), value.get("version")) != (manifest.name, manifest.version):
        raise Failed(
            f"handshake: ready is {value.get('name')} {value.get('version')}, "
            f"the manifest {manifest.name} {manifest.version}"
        )
    offered = value.get("hooks") or {}
    if not isinstance(offered, dict) or set(offered) - set(HOOKS):
        raise Failed(f"handshake: ready's hooks {offered!r} are not the four hook kinds")
    for hook in HOOKS:
        if sorted(offered.get(hook, [])) != sorted(manifest.hooks[hook]):
            raise Failed(f"handshake: ready declares {hook} {offered.get(hook, [])}, the manifest {manifest.hooks[hook]}")
    return value


def _next_frame(plugin, deadline, what):
    try:
        return plugin.frames.get(timeout=max(deadline - time.monotonic(), 0.001))
    except queue.Empty:
        raise Failed(f"{what}: no answer in time") from None


def check_result(result, call):
    """Section 2.2: exactly one of ok and error; error is {code, message, errors?}; expectations."""
    has_ok, has_error = "ok" in result, "error" in result
    if has_ok == has_error:
        raise Failed(f"call {result['id']}: a result needs exactly one of ok and error: {result}")
    if has_error:
        error = result["error"]
        if not isinstance(error, dict) or not isinstance(error.get("code"), str) \
                or not isinstance(error.get("message"), str):
            raise Failed(f"call {result['id']}: error must be {{code, message}} strings: {error}")
        fields = error.get("errors", [])
        if not isinstance(fields, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("message"), str)
            for f in fields
        ):
            raise Failed(f"call {result['id']}: errors must be [{{path, message}}] strings: {fields}")
    expect = call.get("expect")
    if expect is None:
        return
    if "ok" in expect and result.get("ok") != expect["ok"]:
        raise Failed(f"call {result['id']} ({call['target']}): expected ok {expect['ok']}, got {result}")
    if "error" in expect:
        error = result.get("error") or {}
        wrong = {key: error.get(key) for key, value in expect["error"].items() if error.get(key) != value}
        if not has_error or wrong:
            raise Failed(f"call {result['id']} ({call['target']}): expected error {expect['error']}, got {result}")


def exchange_calls(plugin, manifest, calls, report):
    """Sends every call at once (the engine does not wait) and a ping behind them, then collects
    one result for each and the pong, in whatever order they come."""
    sent = {}
    for call_id, call in enumerate(calls, start=1):
        plugin.send({
            "type": "call",
            "id": call_id,
            "hook": call["hook"],
            "target": call["target"],
            "context": call.get("context") or {
                "correlation_id": f"conformance-{call_id}",
                "causation_id": None,
                "principal": None,
                "deadline_ms": manifest.limits["call_timeout_ms"],
            },
            "data": call.get("data", {}),
        })
        sent[call_id] = call
    ping_id = 1003
    plugin.send({"type": "ping", "id": ping_id})
    ponged = False
    deadline = time.monotonic() + manifest.limits["call_timeout_ms"] / 1000 + 0.5 * len(calls)
    answered = []
    while len(answered) < len(sent) or not ponged:
        result = plugin.receive(deadline, f"calls ({len(answered)} of {len(sent)} answered)")
        if result == {"type": "pong", "id": ping_id} and not ponged:
            ponged = True
            continue
        if result["type"] != "result":
            raise Failed(f"calls: expected a result, got {result['type']}")
        call_id = result.get("id")
        if call_id not in sent:
            raise Failed(f"calls: a result for id {call_id!r}, which was never sent")
        if call_id in answered:
            raise Failed(f"calls: a second result for id {call_id}")
        check_result(result, sent[call_id])
        answered.append(call_id)
        outcome = "ok" if "ok" in result else f"error {result['error']['code']}"
        report(f"call {call_id} {sent[call_id]['hook']} {sent[call_id]['target']}: {outcome}")
    if calls:
        order = "in order" if answered == sorted(answered) else f"in the order {answered}"
        report(f"{len(calls)} calls sent at once, each answered once ({order}); ping {ping_id} among them: pong")


def ping(plugin, manifest, ping_id):
    plugin.send({"type": "ping", "id": ping_id})
    deadline = time.monotonic() + manifest.limits["call_timeout_ms"] / 1000
    pong = plugin.receive(deadline, "ping")
    if pong != {"type": "pong", "id": ping_id}:
        raise Failed(f"ping: expected pong {ping_id}, got {pong}")


@contextlib.contextmanager
def started(manifest, report):
    """The plugin's process for one run of checks: killed (its group) at the end, its stderr
    shown when a check fails."""
    plugin = RunningPlugin(manifest)
    try:
        yield plugin
    except Failed:
        plugin.kill()
        time.sleep(0.1)  # the stderr thread reads the last lines
        for line in plugin.stderr_lines[-40:]:
            report(f"  plugin stderr: {line}")
        raise
    finally:
        plugin.kill()


def expect_exit_zero(plugin, seconds, what):
    status = plugin.wait(seconds)
    if status is None:
        raise Failed(f"{what}: still running {seconds} s later")
    if status != 0:
        raise Failed(f"{what}: exit status {status}, not 0")


def run_checks(manifest, calls, config, report):
    """Every check; raises Failed at the first that does not pass."""
    with started(manifest, report) as plugin:
        handshake(plugin, manifest, config)
        report(f"handshake: ready as {manifest.name} {manifest.version}, hooks as in plugin.toml")
        ping(plugin, manifest, 1001)
        report("ping 1001: pong")
        exchange_calls(plugin, manifest, calls, report)
        ping(plugin, manifest, 1002)
        report("ping 1002 after the calls: pong")
        plugin.send({"type": "shutdown", "deadline_ms": SHUTDOWN_DEADLINE_MS})
        plugin.process.stdin.close()
        expect_exit_zero(plugin, SHUTDOWN_DEADLINE_MS / 1000, "shutdown")
        kind, value = _next_frame(plugin, time.monotonic() + 1, "shutdown")
        while kind == "message" and value["type"] == "log":
            kind, value = _next_frame(plugin, time.monotonic() + 1, "shutdown")
        if kind != "eof":
            raise Failed(f"shutdown: the plugin wrote after answering everything: {value}")
        report("shutdown: exit status 0")

    with started(manifest, report) as plugin:
        handshake(plugin, manifest, config)
        plugin.process.stdin.close()
        expect_exit_zero(plugin, 5, "end of input")
        report("end of input without shutdown: exit status 0")


def load_calls(arguments, folder):
    script = arguments.script
    if script is None and not arguments.call and (folder / "conformance.json").exists():
        script = folder / "conformance.json"
    calls, config = [], None
    if script is not None:
        with open(script, encoding="utf-8") as file:
            loaded = json.load(file)
        calls = loaded.get("calls", [])
        config = loaded.get("config")
    for hook, target, data in arguments.call or []:
        calls.append({"hook": hook, "target": target, "data": json.loads(data)})
    for call in calls:
        if call.get("hook") not in HOOKS or not isinstance(call.get("target"), str):
            raise Failed(f"script: a call needs one of {HOOKS} as hook and a target: {call}")
    return calls, config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=pathlib.Path, help="the plugin's folder, holding plugin.toml")
    parser.add_argument("--script", type=pathlib.Path, help="a JSON script of calls (default: FOLDER/conformance.json)")
    parser.add_argument("--call", nargs=3, action="append", metavar=("HOOK", "TARGET", "DATA_JSON"), help="a call to send (repeatable)")
    parser.add_argument("--config", help="JSON sent as hello's config instead of the manifest's [config]")
    arguments = parser.parse_args(argv)

    def report(line):
        print(line, flush=True)

    try:
        manifest = Manifest(arguments.folder)
        calls, script_config = load_calls(arguments, manifest.folder)
        config = manifest.config
        if script_config is not None:
            config = script_config
        if arguments.config is not None:
            config = json.loads(arguments.config)
        report(f"plugin {manifest.name} {manifest.version} in {manifest.folder}")
        run_checks(manifest, calls, config, report)
    except Failed as failure:
        report(f"FAIL {failure}")
        return 1
    report("conformance: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
