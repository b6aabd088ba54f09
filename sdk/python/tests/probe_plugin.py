"""A plugin exercising every SDK path the tests drive over pipes (not an example to copy)."""

import sys
import threading

from flexcore_plugin import Conflict, Forbidden, NotFound, Plugin, ValidationError

plugin = Plugin("probe", "0.0.1")
slow_call_released = threading.Event()
never = threading.Event()


@plugin.initialize
def check_config(config):
    if config.get("refuse"):
        raise ValueError(config["refuse"])


@plugin.query_handler("slow")
def slow(ctx, data):
    # Answers only once a later "release" call has run: impossible one call at a time.
    if not slow_call_released.wait(timeout=5):
        raise RuntimeError("never released")
    return {"result": "slow"}


@plugin.query_handler("fast")
def fast(ctx, data):
    return {"result": "fast"}


@plugin.query_handler("release")
def release(ctx, data):
    slow_call_released.set()
    return {"result": "released"}


@plugin.query_handler("sleep")
def sleep(ctx, data):
    threading.Event().wait(data["params"]["seconds"])
    return {"result": "slept"}


@plugin.query_handler("block_forever")
def block_forever(ctx, data):
    never.wait()


@plugin.query_handler("refuse")
def refuse(ctx, data):
    kind = data["params"]["kind"]
    if kind == "validation":
        raise ValidationError("bad input", [{"path": "/name", "message": "too short"}])
    if kind == "not_found":
        raise NotFound("no such thing")
    if kind == "conflict":
        raise Conflict("already there")
    if kind == "forbidden":
        raise Forbidden("not yours")
    raise KeyError("a bug")


@plugin.query_handler("chatty")
def chatty(ctx, data):
    print("a stray print that must not reach the protocol stream")
    sys.stdout.write("and a direct write\n")
    ctx.log("info", "chatty ran")
    return {"result": {"principal": ctx.principal["sub"], "deadline_ms": ctx.deadline_ms}}


@plugin.query_handler("not_json")
def not_json(ctx, data):
    return {"result": {1, 2}}


@plugin.before_command("create_user")
def only_validate(ctx, data):
    return None


@plugin.event_handler("user.*")
def any_user_event(ctx, envelope):
    return {"seen": ctx.target}


if __name__ == "__main__":
    plugin.run()
