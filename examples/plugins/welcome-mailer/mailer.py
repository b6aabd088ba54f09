"""The welcome-mailer plugin: on `user.created`, "send" a welcome mail by appending one JSON line
to `config.outbox_file`. Delivery is at least once, so a re-delivered event (same `event_id`)
writes nothing new: the ids already sent are read back from the file at start."""

import json
import os
import threading

from flexcore_plugin import Plugin, ValidationError

plugin = Plugin("welcome-mailer", "0.1.0")
settings = {}
sent_event_ids = set()
# Calls run on several threads: one writer at a time keeps the check-then-append atomic.
outbox_lock = threading.Lock()


@plugin.initialize
def open_outbox(config):
    outbox_file = config.get("outbox_file")
    if not isinstance(outbox_file, str) or not outbox_file:
        raise ValueError("config.outbox_file must name a file")
    settings["outbox_file"] = outbox_file
    folder = os.path.dirname(outbox_file)
    if folder:
        os.makedirs(folder, exist_ok=True)
    settings["sender"] = config.get("sender", "welcome@flexcore.example")
    try:
        with open(outbox_file, encoding="utf-8") as lines:
            sent_event_ids.update(json.loads(line)["event_id"] for line in lines if line.strip())
    except FileNotFoundError:
        pass


@plugin.event_handler("user.created")
def send_welcome(ctx, envelope):
    event_id = envelope.get("event_id")
    email = (envelope.get("data") or {}).get("email")
    if not event_id or not isinstance(email, str):
        raise ValidationError(
            "user.created needs an event_id and data.email",
            [{"path": "/data/email", "message": "must be a string"}],
        )
    with outbox_lock:
        if event_id in sent_event_ids:
            return {}
        mail = {"event_id": event_id, "from": settings["sender"], "to": email, "subject": "Welcome to FlexCore"}
        with open(settings["outbox_file"], "a", encoding="utf-8") as outbox:
            outbox.write(json.dumps(mail) + "\n")
        sent_event_ids.add(event_id)
    ctx.log("info", f"welcome mail queued for {email}")
    return {}


if __name__ == "__main__":
    plugin.run()
