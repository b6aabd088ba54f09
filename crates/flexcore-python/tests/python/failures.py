"""Handlers that go wrong in every way the bridge must report."""

import time

from flexcore import Event, FlexCore


@FlexCore.aggregate("job", id_field="job_id")
class Job:
    def __init__(self):
        self.count = 0

    @FlexCore.apply("job.counted")
    def counted(self, event):
        self.count += 1


def helper_that_divides(n):
    return 1 / n


@FlexCore.command_handler("explode", aggregate=Job)
def explode(cmd):
    return helper_that_divides(0)


@FlexCore.command_handler("spin", aggregate=Job)
def spin(cmd):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return {"type": "job.spun", "data": {}}


@FlexCore.command_handler("sleep_a_second", aggregate=Job)
def sleep_a_second(cmd):
    time.sleep(1)
    return {"type": "job.slept", "data": {}}


@FlexCore.command_handler("count", aggregate=Job)
def count(cmd, state):
    time.sleep(0.002)  # widen the race window
    return {"type": "job.counted", "data": {"count_before": state.count}}


@FlexCore.command_handler("return_number", aggregate=Job)
def return_number(cmd):
    return 42


@FlexCore.command_handler("return_empty_type", aggregate=Job)
def return_empty_type(cmd):
    return {"type": "", "data": {}}


@FlexCore.command_handler("return_non_string_type", aggregate=Job)
def return_non_string_type(cmd):
    return {"type": 7, "data": {}}


@FlexCore.command_handler("return_list_data", aggregate=Job)
def return_list_data(cmd):
    return {"type": "job.listed", "data": [1, 2]}


@FlexCore.command_handler("return_unserialisable_data", aggregate=Job)
def return_unserialisable_data(cmd):
    return {"type": "job.odd", "data": {"when": object()}}


@FlexCore.command_handler("return_none_data", aggregate=Job)
def return_none_data(cmd):
    return {"type": "job.empty", "data": None}


@FlexCore.command_handler("optional_fields", aggregate=Job)
def optional_fields(cmd):
    # Missing fields: hasattr/getattr-with-default/get work; reading one is a ValidationError.
    assert not hasattr(cmd, "note")
    assert getattr(cmd, "note", "none") == "none"
    return Event("job.noted", {"note": cmd.get("note", "none"), "level": cmd.level})
