"""Spawns plugins as the engine would and talks to them over their stdin/stdout pipes."""

import os
import pathlib
import subprocess
import sys

import pytest

SDK_DIR = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SDK_DIR))

from flexcore_plugin import encode_frame, read_frame  # noqa: E402

REPO = SDK_DIR.parents[1]
EXAMPLES = REPO / "examples" / "plugins"


class PluginProcess:
    """A plugin started with stdin/stdout as pipes; frames go in and come out."""

    def __init__(self, script, cwd):
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(SDK_DIR), "FLEXCORE_PLUGIN_PROTOCOL": "1"}
        self.process = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def send(self, message):
        self.process.stdin.write(encode_frame(message))
        self.process.stdin.flush()

    def receive(self):
        return read_frame(self.process.stdout)

    def hello(self, config=None, protocol=1):
        self.send({"type": "hello", "protocol": protocol, "engine": "test", "plugin": {}, "config": config or {}})
        return self.receive()

    def call(self, call_id, hook, target, data):
        self.send(
            {
                "type": "call",
                "id": call_id,
                "hook": hook,
                "target": target,
                "context": {
                    "correlation_id": "c-1",
                    "causation_id": None,
                    "principal": {"sub": "ann", "roles": ["writer"], "tenant": None},
                    "deadline_ms": 2000,
                },
                "data": data,
            }
        )

    def close_stdin(self):
        self.process.stdin.close()

    def exit_status(self, timeout=10):
        return self.process.wait(timeout=timeout)

    def stderr(self):
        return self.process.stderr.read().decode()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            try:
                stream.close()
            except BrokenPipeError:
                pass


@pytest.fixture
def start_plugin():
    started = []

    def start(script, cwd=None):
        plugin = PluginProcess(script, cwd or pathlib.Path(script).parent)
        started.append(plugin)
        return plugin

    yield start
    for plugin in started:
        plugin.stop()
