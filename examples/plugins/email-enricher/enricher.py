"""The email-enricher plugin: before `create_user`, lower-case and trim the e-mail address and
refuse addresses at a domain of `config.domain_blocklist`."""

from flexcore_plugin import Plugin, ValidationError

plugin = Plugin("email-enricher", "1.2.0")
blocked_domains = set()


@plugin.initialize
def load_blocklist(config):
    blocklist = config.get("domain_blocklist", [])
    if not isinstance(blocklist, list) or not all(isinstance(d, str) for d in blocklist):
        raise ValueError("config.domain_blocklist must be a list of strings")
    blocked_domains.update(domain.strip().lower() for domain in blocklist)


@plugin.before_command("create_user")
def normalise_email(ctx, data):
    payload = data["payload"]
    email = payload.get("email")
    if not isinstance(email, str):
        raise ValidationError("email is required", [{"path": "/email", "message": "must be a string"}])
    email = email.strip().lower()
    local, at, domain = email.rpartition("@")
    if not (local and at and domain):
        raise ValidationError("email is not an address", [{"path": "/email", "message": "needs a name, @ and a domain"}])
    if domain in blocked_domains:
        raise ValidationError("email is blocked", [{"path": "/email", "message": f"domain {domain} is blocked"}])
    return {"payload": {**payload, "email": email}}


if __name__ == "__main__":
    plugin.run()
