//! Logging: `tracing` to standard error, text or JSON lines, with sensitive values masked.
//!
//! Every formatted line passes through a [`Masker`] before it is written: the values of the
//! configured fields (`email=…`, `"password":"…"`) become `***`, and when `email` is one of
//! them, anything shaped like an email address anywhere in the line (an error message that
//! quotes one, say) becomes `***@***`.

use std::borrow::Cow;
use std::io::{self, IsTerminal, Write};

use anyhow::Context;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, Settings};
use crate::telemetry::Telemetry;

/// Masks sensitive values in log lines.
#[derive(Debug, Clone)]
pub struct Masker {
    fields: Vec<String>,
    mask_emails: bool,
}

impl Masker {
    /// Masks the values of these fields (and email addresses, if `email` is among them).
    pub fn new(fields: &[String]) -> Self {
        let fields: Vec<String> = fields
            .iter()
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect();
        Self {
            mask_emails: fields.iter().any(|f| f.eq_ignore_ascii_case("email")),
            fields,
        }
    }

    /// The line with every sensitive value replaced.
    pub fn mask<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(line);
        for field in &self.fields {
            for pattern in [format!("\"{field}\":"), format!("{field}=")] {
                if out.contains(&pattern) {
                    out = Cow::Owned(mask_values(&out, &pattern));
                }
            }
        }
        if self.mask_emails && out.contains('@') {
            out = Cow::Owned(mask_emails(&out));
        }
        out
    }
}

/// Replaces the value after each `pattern` (a quoted string up to its closing quote, or a bare
/// word up to whitespace or a comma) with `***`.
fn mask_values(line: &str, pattern: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(pattern) {
        let preceded_by_name_char = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let value_start = at + pattern.len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        if preceded_by_name_char {
            continue;
        }
        let value_len = if let Some(quoted) = rest.strip_prefix('"') {
            let mut escaped = false;
            let end = quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(quoted.len(), |(i, _)| i + 1);
            out.push('"');
            out.push_str("***");
            if end <= quoted.len() && quoted[..end].ends_with('"') {
                out.push('"');
            }
            1 + end
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ',' || c == '}')
                .unwrap_or(rest.len());
            out.push_str("***");
            end
        };
        rest = &rest[value_len..];
    }
    out.push_str(rest);
    out
}

/// Replaces everything shaped like `local@domain.tld` with `***@***`.
fn mask_emails(line: &str) -> String {
    let local = |c: char| c.is_alphanumeric() || "._%+-".contains(c);
    let domain = |c: char| c.is_alphanumeric() || ".-".contains(c);
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find('@') {
        let start = rest[..at]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| local(c))
            .last()
            .map_or(at, |(i, _)| i);
        let end = rest[at + 1..]
            .char_indices()
            .take_while(|&(_, c)| domain(c))
            .last()
            .map_or(at + 1, |(i, c)| at + 1 + i + c.len_utf8());
        let host = &rest[at + 1..end];
        if start < at && host.contains('.') && !host.starts_with('.') {
            out.push_str(&rest[..start]);
            out.push_str("***@***");
        } else {
            out.push_str(&rest[..end]);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Writes log lines to standard error, masked.
#[derive(Clone)]
struct MaskingStderr {
    masker: Masker,
}

impl<'a> MakeWriter<'a> for MaskingStderr {
    type Writer = MaskedLine;

    fn make_writer(&'a self) -> Self::Writer {
        MaskedLine {
            masker: self.masker.clone(),
            buffer: Vec::new(),
        }
    }
}

/// Collects one formatted event and writes it masked when dropped.
struct MaskedLine {
    masker: Masker,
    buffer: Vec<u8>,
}

impl Write for MaskedLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedLine {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.buffer);
        let _ = io::stderr().write_all(self.masker.mask(&line).as_bytes());
    }
}

/// The filter of a `log` setting. A list of `target=level` directives (`info`,
/// `flexcore=debug,tower=warn`) becomes a [`Targets`] filter, decided once per call site; only
/// directives on spans or their fields (`[command{command_type=create_user}]=debug`) need an
/// [`EnvFilter`], which also tracks every entry into every span (a lock per poll of each
/// instrumented future, several percent of a request's CPU).
pub fn log_filter<S>(log: &str) -> anyhow::Result<Box<dyn Layer<S> + Send + Sync>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if let Some(targets) = static_targets(log) {
        return Ok(Box::new(targets));
    }
    let filter = EnvFilter::try_new(log).with_context(|| format!("invalid log filter '{log}'"))?;
    Ok(Box::new(filter))
}

/// `log` as a [`Targets`] filter when it is nothing but `target=level`, bare `level` or bare
/// `target` directives; `None` for anything [`EnvFilter`] reads differently (span names and
/// fields in brackets, blanks, empty directives).
fn static_targets(log: &str) -> Option<Targets> {
    let plain = |directive: &str| {
        !directive.is_empty()
            && directive
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '='))
    };
    if !log.split(',').all(plain) {
        return None;
    }
    log.parse().ok()
}

/// Installs the global subscriber: filter, format and masking from the settings, plus OTLP
/// export when an endpoint is configured (the returned [`Telemetry`] flushes it at exit).
pub fn init(settings: &Settings) -> anyhow::Result<Option<Telemetry>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = log_filter(&settings.log)?;
    let writer = MaskingStderr {
        masker: Masker::new(&settings.log_mask),
    };
    let ansi = io::stderr().is_terminal() && settings.log_format == LogFormat::Text;
    let (text, json) = match settings.log_format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(tracing_subscriber::fmt::layer().json().with_writer(writer)),
        ),
    };
    let (telemetry, otlp) = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let (telemetry, layer) = Telemetry::otlp(endpoint)?;
            (Some(telemetry), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otlp)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(telemetry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_keep_their_meaning_whichever_filter_runs_them() {
        use tracing::Level;
        use tracing_subscriber::layer::SubscriberExt;
        let targets =
            tracing_subscriber::registry().with(log_filter("flexcore=debug,warn").unwrap());
        tracing::subscriber::with_default(targets, || {
            assert!(tracing::enabled!(target: "flexcore::server", Level::DEBUG));
            assert!(!tracing::enabled!(target: "flexcore::server", Level::TRACE));
            assert!(tracing::enabled!(target: "hyper", Level::WARN));
            assert!(!tracing::enabled!(target: "hyper", Level::INFO));
        });
        for plain in ["info", "flexcore=debug,warn", "flexcore::server", "off"] {
            assert!(static_targets(plain).is_some(), "{plain}");
        }
        // What EnvFilter reads differently stays with it: spans, fields, blanks, empty parts.
        for other in [
            "[command]=debug",
            "flexcore[{user_id}]=debug",
            "",
            " info",
            "info,",
        ] {
            assert!(static_targets(other).is_none(), "{other:?}");
        }
        // Span directives need the EnvFilter; they parse.
        assert!(
            log_filter::<tracing_subscriber::Registry>("[command{command_type=x}]=debug,info")
                .is_ok()
        );
        let error = log_filter::<tracing_subscriber::Registry>("flexcore=loud")
            .err()
            .unwrap();
        assert!(
            format!("{error:#}").contains("invalid log filter 'flexcore=loud'"),
            "{error:#}"
        );
    }

    fn masker() -> Masker {
        Masker::new(&["email".into(), "password".into(), "token".into()])
    }

    #[test]
    fn field_values_are_masked_in_text_and_json() {
        let m = masker();
        assert_eq!(
            m.mask("login email=ann@x.io token=abc ok=1"),
            "login email=*** token=*** ok=1"
        );
        assert_eq!(
            m.mask(r#"{"fields":{"password":"s3\"cret","user":"ann"}}"#),
            r#"{"fields":{"password":"***","user":"ann"}}"#
        );
        assert_eq!(
            m.mask("my_token=abc"),
            "my_token=abc",
            "only whole field names"
        );
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[test]
    fn email_addresses_are_masked_anywhere() {
        let m = masker();
        assert_eq!(
            m.mask("conflict: email Ann.Lee+x@mail.example.com is already in use"),
            "conflict: email ***@*** is already in use"
        );
        assert_eq!(m.mask("at @ home, a@b"), "at @ home, a@b", "not an address");
        let no_email = Masker::new(&["token".into()]);
        assert_eq!(no_email.mask("a@b.io"), "a@b.io");
    }
}
