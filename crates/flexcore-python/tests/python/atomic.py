"""Command handlers that decide over several streams: atomic appends and FlexCore.read_stream."""

from dataclasses import dataclass

from flexcore import Append, ConflictError, Event, FlexCore

RUNS = {}  # command type -> how many times its handler ran


def ran(command_type):
    RUNS[command_type] = RUNS.get(command_type, 0) + 1


@dataclass
class SeatBooked:  # event type `seat.booked`
    seat: str
    booking: str


@FlexCore.command_handler("book_pair")
def book_pair(cmd):
    # Two seats or none: each seat stream must not exist yet.
    ran("book_pair")
    return [
        Append(f"seat-{seat}", [SeatBooked(seat=seat, booking=cmd.booking)], expected=Append.NO_STREAM)
        for seat in cmd.seats
    ]


@FlexCore.command_handler("count")
def count(cmd):
    # Reads the counter, appends what it saw: no `expected`, so the version read is expected.
    ran("count")
    counter = FlexCore.read_stream(f"counter-{cmd.counter}")
    return Append(counter.stream_id, [Event("counter.counted", {"seen": counter.version})])


@FlexCore.command_handler("count_blindly")
def count_blindly(cmd):
    # Reads too, but says it accepts any version: the explicit expectation wins.
    ran("count_blindly")
    counter = FlexCore.read_stream(f"counter-{cmd.counter}")
    return Append(counter.stream_id, [Event("counter.counted", {"seen": counter.version})], expected=Append.ANY)


@FlexCore.command_handler("read_typed")
def read_typed(cmd):
    seat = FlexCore.read_stream(f"seat-{cmd.seat}", SeatBooked)
    missing = FlexCore.read_stream("seat-nowhere")
    return Event(
        "probe.read",
        {
            "types": [type(e).__name__ for e in seat.events],
            "booking": seat.events[0].booking,
            "version": seat.version,
            "exists": seat.exists,
            "missing": [missing.version, missing.exists, len(missing.events)],
        },
    )


@FlexCore.aggregate("order", id_field="order_id")
class Order:
    def __init__(self):
        self.placed = False

    @FlexCore.apply("order.placed")
    def on_placed(self, event):
        self.placed = True


@FlexCore.command_handler("place_order", aggregate=Order)
def place_order(cmd, order):
    # Its own event plus a claim on the voucher: both or neither.
    ran("place_order")
    if order.placed:
        raise ConflictError("already placed")
    voucher = FlexCore.read_stream(f"voucher-{cmd.voucher}")
    if voucher.exists:
        raise ConflictError(f"voucher {cmd.voucher} is used")
    return [
        Event("order.placed", {"voucher": cmd.voucher}),
        Append(voucher.stream_id, [Event("voucher.used", {"order_id": cmd.order_id})]),
    ]


@FlexCore.command_handler("own_stream_twice", aggregate=Order)
def own_stream_twice(cmd):
    return [Event("order.placed", {}), Append(f"order-{cmd.order_id}", [Event("order.noted", {})])]


@FlexCore.command_handler("count_carelessly")
def count_carelessly(cmd):
    # Swallows whatever reading raised: the store's failure must answer all the same.
    try:
        FlexCore.read_stream(f"counter-{cmd.counter}")
    except Exception:
        pass
    return Append(f"counter-{cmd.counter}", [Event("counter.counted", {"seen": None})])


@FlexCore.query_handler("runs")
def runs(params):
    return RUNS


@FlexCore.query_handler("read_outside")
def read_outside(params):
    return FlexCore.read_stream("seat-1a").version
