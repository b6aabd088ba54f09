//! GDPR: the crypto-shredding layer `flexcore serve` puts around its store, and the
//! `flexcore gdpr export|forget` client commands (against `/v1/admin/gdpr/…`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use flexcore_app::gdpr::{KeyTable, PersonalDataPolicy, ShreddingStore, SubjectKeys};
use flexcore_app::module::Modules;
use flexcore_app::store::EventStore;
use flexcore_gdpr::{KeyVault, MasterKey, VaultOptions};
use flexcore_store_postgres::PostgresKeyTable;
use flexcore_store_sqlite::{SqliteConfig, SqliteKeyTable};

use crate::client::{Client, ClientError, ClientOptions};
use crate::config::GdprSettings;
use crate::operations::encode;

/// Wraps `store` in the crypto-shredding layer when a master key file is configured: opens
/// the store's key table, checks the master key against it, and seals what the configuration
/// declares (the modules' declarations come later, through [`declare_modules`]).
pub async fn shredding_store(
    settings: &GdprSettings,
    store_url: &str,
    store: Arc<dyn EventStore>,
) -> anyhow::Result<Option<Arc<ShreddingStore>>> {
    let Some(path) = &settings.master_key_file else {
        return Ok(None);
    };
    let master = MasterKey::from_file(path)?;
    let table = open_key_table(store_url).await?;
    let vault = KeyVault::open(
        table,
        master,
        VaultOptions {
            cache_ttl: Duration::from_secs(settings.key_cache_ttl_secs),
            ..VaultOptions::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}", e.chain()))
    .context("cannot open the GDPR key vault")?;
    let mut policy = PersonalDataPolicy::new();
    for declared in &settings.events {
        policy.overrule(declared.clone())?;
    }
    Ok(Some(Arc::new(ShreddingStore::new(
        store,
        Arc::new(vault) as Arc<dyn SubjectKeys>,
        policy,
    ))))
}

/// Adds the personal data the loaded modules declare (under the configuration's). Without
/// crypto-shredding, warns that it stays in clear.
pub fn declare_modules(
    shredding: Option<&ShreddingStore>,
    modules: &Modules,
) -> anyhow::Result<()> {
    let declared = modules.personal_data()?;
    match shredding {
        Some(store) => {
            store.declare(&declared);
            tracing::info!(
                event_types = ?store.policy().event_types(),
                "gdpr: personal fields are sealed with per-subject keys"
            );
        }
        None if !declared.is_empty() => tracing::warn!(
            event_types = ?declared.event_types(),
            "gdpr: the modules declare personal data, stored in clear: set [gdpr] \
             master_key_file (FLEXCORE_GDPR_MASTER_KEY_FILE) to seal it"
        ),
        None => {}
    }
    Ok(())
}

/// The key table of the store a URL names.
async fn open_key_table(store_url: &str) -> anyhow::Result<Arc<dyn KeyTable>> {
    if store_url.starts_with("sqlite:") {
        let path = SqliteConfig::from_url(store_url)?.path;
        let table = SqliteKeyTable::open(&path)
            .await
            .with_context(|| format!("cannot open the key table in {}", path.display()))?;
        return Ok(Arc::new(table));
    }
    let config = crate::store_url::postgres_config(store_url)?;
    let table = PostgresKeyTable::connect(config)
        .await
        .context("cannot open the PostgreSQL key table")?;
    Ok(Arc::new(table))
}

/// `flexcore gdpr …`.
#[derive(Debug, Clone, Subcommand)]
pub enum GdprCommand {
    /// Print every event about a data subject (written by it, or naming it in a declared
    /// subject field), personal fields opened, as JSON lines.
    Export {
        /// The subject, e.g. a user id.
        subject: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
    /// Destroy a subject's data key: its personal fields read as "[forgotten]" from now on,
    /// everywhere, and it takes no new personal data. Cannot be undone.
    Forget {
        /// The subject, e.g. a user id.
        subject: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
}

/// Runs `flexcore gdpr …`.
pub async fn run(command: GdprCommand) -> Result<(), ClientError> {
    match command {
        GdprCommand::Export { subject, options } => {
            let client = Client::new(&options)?;
            let path = format!("/v1/admin/gdpr/subjects/{}/events", encode(&subject));
            let lines = client.call_text(client.http.get(client.url(&path))).await?;
            print!("{lines}");
            Ok(())
        }
        GdprCommand::Forget { subject, options } => {
            let client = Client::new(&options)?;
            let path = format!("/v1/admin/gdpr/subjects/{}/forget", encode(&subject));
            let answer = client.call(client.http.post(client.url(&path))).await?;
            if options.json {
                println!("{answer}");
            } else if answer["key_destroyed"] == true {
                println!("subject {subject} forgotten: its data key is destroyed");
            } else {
                println!("subject {subject} forgotten (it had no data key)");
            }
            Ok(())
        }
    }
}
