"""A FlexCore test plugin, standard library only: it speaks protocol 1 and misbehaves on demand.

The handshake follows `plugin.toml` (name, version, hooks), except where `[config]` says to
claim something else (`claim_protocol`, `claim_name`, `claim_version`, `claim_hooks`) or to
`refuse`. Calls behave by their target:

  echo       answers {"payload", "version", "pid"} at once
  sleep      the same after data.delay_ms, on its own thread (answers out of order)
  reject     a validation_failed error with details
  crash      exits in the middle of the call
  hang       never answers
  allocate   allocates without bound (until the memory limit stops it; gives up at 1 GiB)
  flood      floods stderr, then answers
  garbage    writes a frame that is not JSON
  duplicate  answers twice

`ignore_pings = true` in [config] leaves pings unanswered. `ignore_eof = true` keeps the process alive after stdin closes and ignores
SIGTERM: only a kill stops it.
"""
import json
import os
import signal
import struct
import sys
import threading
import time
import tomllib

stdin = sys.stdin.buffer
stdout = sys.stdout.buffer
write_lock = threading.Lock()


def read_frame():
    header = stdin.read(4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    return json.loads(stdin.read(length))


def write_raw(data):
    with write_lock:
        stdout.write(data)
        stdout.flush()


def write_frame(message):
    body = json.dumps(message).encode()
    write_raw(struct.pack(">I", len(body)) + body)


def main():
    with open("plugin.toml", "rb") as manifest_file:
        manifest = tomllib.load(manifest_file)
    hello = read_frame()
    config = hello["config"]
    if config.get("ignore_eof"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "refuse" in config:
        write_frame({"type": "refuse", "message": config["refuse"]})
        return
    version = config.get("claim_version", manifest["version"])
    write_frame({
        "type": "ready",
        "protocol": config.get("claim_protocol", 1),
        "name": config.get("claim_name", manifest["name"]),
        "version": version,
        "hooks": config.get("claim_hooks", manifest.get("hooks", {})),
    })
    while True:
        message = read_frame()
        if message is None:
            break
        kind = message["type"]
        if kind == "ping" and not config.get("ignore_pings"):
            write_frame({"type": "pong", "id": message["id"]})
        elif kind == "shutdown":
            continue
        elif kind == "call":
            handle(message, version)
    if config.get("ignore_eof"):
        while True:
            time.sleep(1)


def answer(call, version):
    return {"type": "result", "id": call["id"],
            "ok": {"payload": call["data"].get("payload"), "version": version, "pid": os.getpid()}}


def handle(call, version):
    target = call["target"]
    if target == "echo":
        write_frame(answer(call, version))
    elif target == "sleep":
        def later():
            time.sleep(call["data"]["delay_ms"] / 1000)
            write_frame(answer(call, version))
        threading.Thread(target=later, daemon=True).start()
    elif target == "reject":
        write_frame({"type": "result", "id": call["id"], "error": {
            "code": "validation_failed", "message": "email is blocked",
            "errors": [{"path": "/email", "message": "domain is blocked"}]}})
    elif target == "crash":
        os._exit(3)
    elif target == "hang":
        pass
    elif target == "allocate":
        hoard = []
        for _ in range(1024):
            hoard.append(bytearray(1024 * 1024))
        write_frame(answer(call, version))
    elif target == "flood":
        line = "x" * 10000 + "\n"
        for _ in range(20000):
            sys.stderr.write(line)
        sys.stderr.write("y" * 200000)
        sys.stderr.flush()
        write_frame(answer(call, version))
    elif target == "garbage":
        write_raw(struct.pack(">I", 5) + b"hello")
    elif target == "duplicate":
        write_frame(answer(call, version))
        write_frame(answer(call, version))


if __name__ == "__main__":
    main()
