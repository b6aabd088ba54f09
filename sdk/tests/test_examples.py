"""sdk/conformance.py against the four example plugins, each in a copy of its folder, and against
deliberately broken plugins (so a pass means something).

The compiled examples are built first: Go here with `go build`; the Rust one by
`cargo build -p flexcore-plugin-sdk --example user_stats` (into $CARGO_TARGET_DIR, default
target/), which .ci/run does before this. A missing tool, binary or Python SDK skips the example
with the command to run, unless FLEXCORE_REQUIRE_SERVICES is set (as in CI): then it fails.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFORMANCE = REPO / "sdk" / "conformance.py"
EXAMPLES = REPO / "examples" / "plugins"
RUST_SDK = REPO / "crates" / "flexcore-plugin-sdk"


def unavailable(reason):
    """Skips, or fails when CI requires everything the tests use."""
    if os.environ.get("FLEXCORE_REQUIRE_SERVICES"):
        pytest.fail(reason)
    pytest.skip(reason)


def conformance(folder, *extra):
    return subprocess.run(
        [sys.executable, str(CONFORMANCE), str(folder), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_conforms(folder):
    run = conformance(folder)
    assert run.returncode == 0, run.stdout + run.stderr
    for check in [
        "handshake: ready as",
        "each answered once",
        "shutdown: exit status 0",
        "end of input without shutdown: exit status 0",
        "conformance: all checks passed",
    ]:
        assert check in run.stdout, run.stdout
    return run.stdout


@pytest.fixture
def copy_example(tmp_path):
    def copy(name):
        folder = tmp_path / name
        shutil.copytree(EXAMPLES / name, folder, ignore=shutil.ignore_patterns("go-greeter", "user-stats", "*.jsonl"))
        return folder

    return copy


def require_python_sdk():
    # The engine passes only PATH (and HOME, LANG): the SDK must be installed in that python3.
    probe = subprocess.run(
        ["python3", "-c", "import flexcore_plugin"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        cwd="/",
    )
    if probe.returncode != 0:
        unavailable("the Python SDK is not installed in python3: run `python3 -m pip install ./sdk/python`")


def test_email_enricher_conforms(copy_example):
    require_python_sdk()
    assert "call 2 before_command create_user: error validation_failed" in assert_conforms(copy_example("email-enricher"))


def test_welcome_mailer_conforms_and_mails_a_redelivered_event_once(copy_example):
    require_python_sdk()
    folder = copy_example("welcome-mailer")
    assert_conforms(folder)
    mails = [json.loads(line) for line in (folder / "conformance-outbox.jsonl").read_text().splitlines()]
    assert [mail["event_id"] for mail in mails] == ["0192-e1"]


def test_go_greeter_conforms(copy_example):
    go = shutil.which("go")
    if go is None:
        unavailable("go is not installed: apt-get install -y golang-go")
    folder = copy_example("go-greeter")
    build = subprocess.run([go, "build", "-o", str(folder / "go-greeter"), "."], cwd=EXAMPLES / "go-greeter", capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert "call 3 command_handler greet_user: error not_found" in assert_conforms(folder)


def rust_example_binary():
    target_dir = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target_dir / "debug" / "examples" / "user_stats"
    build = "cargo build -p flexcore-plugin-sdk --example user_stats"
    if not binary.exists():
        unavailable(f"{binary} is missing: run `{build}`")
    sources = [RUST_SDK / "examples" / "user_stats.rs", *RUST_SDK.glob("src/**/*.rs")]
    if max(source.stat().st_mtime for source in sources) > binary.stat().st_mtime:
        unavailable(f"{binary} is older than the SDK's sources: run `{build}`")
    return binary


def test_user_stats_conforms(copy_example):
    binary = rust_example_binary()
    folder = copy_example("user-stats")
    shutil.copy2(binary, folder / "user-stats")
    assert "call 3 query_handler email_domain: error validation_failed" in assert_conforms(folder)


# --- plugins that break the protocol: the check must fail, and say why ----------------------

BROKEN_PLUGIN = """\
import json, struct, sys, time
FLAW = {flaw!r}
def read():
    prefix = sys.stdin.buffer.read(4)
    if len(prefix) < 4:
        if FLAW == "ignores_eof":
            time.sleep(30)
        sys.exit(0)
    return json.loads(sys.stdin.buffer.read(struct.unpack(">I", prefix)[0]))
def send(message):
    body = json.dumps(message).encode()
    sys.stdout.buffer.write(struct.pack(">I", len(body)) + body)
    sys.stdout.buffer.flush()
read()
hooks = {{"query_handler": ["other" if FLAW == "wrong_hooks" else "echo"]}}
send({{"type": "ready", "protocol": 1, "name": "broken", "version": "0.1.0", "hooks": hooks}})
while True:
    message = read()
    if message["type"] == "call":
        if FLAW == "print":
            print("hello from a stray print")
            sys.stdout.flush()
        reply = {{"type": "result", "id": message["id"] + (1 if FLAW == "wrong_id" else 0), "ok": {{"result": 1}}}}
        send(reply)
    elif message["type"] == "ping":
        send({{"type": "pong", "id": message["id"]}})
    elif message["type"] == "shutdown":
        sys.exit(3 if FLAW == "bad_exit" else 0)
"""


@pytest.mark.parametrize(
    "flaw, complaint",
    [
        ("wrong_hooks", "FAIL handshake: ready declares query_handler ['other'], the manifest ['echo']"),
        ("print", "FAIL calls (0 of 1 answered): the plugin wrote a frame of"),
        ("wrong_id", "FAIL calls: a result for id 2, which was never sent"),
        ("bad_exit", "FAIL shutdown: exit status 3, not 0"),
        ("ignores_eof", "FAIL end of input: still running 5 s later"),
    ],
)
def test_a_plugin_breaking_the_protocol_fails_the_check(tmp_path, flaw, complaint):
    (tmp_path / "plugin.py").write_text(BROKEN_PLUGIN.format(flaw=flaw))
    (tmp_path / "plugin.toml").write_text(
        textwrap.dedent(
            """\
            name = "broken"
            version = "0.1.0"
            [entry]
            command = "python3"
            args = ["plugin.py"]
            [hooks]
            query_handler = ["echo"]
            """
        )
    )
    run = conformance(tmp_path, "--call", "query_handler", "echo", "{}")
    assert run.returncode == 1
    assert complaint in run.stdout, run.stdout
