//! The out-of-process plugin of the `http+plugin` case: a Python SDK plugin that owns a
//! command type and decides its event, as a plugins folder for `flexcore serve`.

use std::path::{Path, PathBuf};

/// The command type the plugin owns (the bench's clients send it the `create_user` payload).
pub(super) const COMMAND_TYPE: &str = "register_member";

const MANIFEST: &str = r#"name = "bench-members"
version = "1.0.0"

[entry]
command = "python3"
args = ["members.py"]

[hooks]
command_handler = ["register_member"]

[commands.register_member]
category = "member"
id_field = "email"
creates = true

[limits]
memory_mb = 1024
call_timeout_ms = 10000
"#;

const PLUGIN: &str = r#"from flexcore_plugin import Plugin, ValidationError

plugin = Plugin("bench-members", "1.0.0")


@plugin.command_handler("register_member")
def register_member(ctx, data):
    email = data["payload"].get("email")
    if not isinstance(email, str) or "@" not in email:
        raise ValidationError("email is required", [{"path": "/email", "message": "missing"}])
    return {"events": [{"event_type": "member.registered", "data": {"email": email.lower()}}]}


plugin.run()
"#;

/// The plugins folder under `root` (written on first use).
pub(super) fn folder(root: &Path) -> anyhow::Result<PathBuf> {
    let plugins = root.join("plugins");
    let folder = plugins.join("bench-members");
    if !folder.join("plugin.toml").is_file() {
        std::fs::create_dir_all(&folder)?;
        std::fs::write(folder.join("members.py"), PLUGIN)?;
        std::fs::write(folder.join("plugin.toml"), MANIFEST)?;
    }
    Ok(plugins)
}
