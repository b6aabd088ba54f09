//! Reading a projection's live read model, with read-your-writes.

use std::sync::Arc;

use super::SqlValue;
use super::resolve_tables;
use super::runner::{Entry, ProjectionsHandle};
use crate::query::{QueryContext, READ_YOUR_WRITES_TIMEOUT};
use crate::{Error, Result};

/// Reads one projection's live read model.
#[derive(Clone)]
pub struct ReadModel {
    pub(super) handle: ProjectionsHandle,
    pub(super) entry: Arc<Entry>,
}

impl ReadModel {
    /// Runs a query (`{table}` names, `$n` parameters) against the live generation — for a
    /// read-your-writes query ([`QueryContext::min_position`]) after waiting, at most
    /// [`READ_YOUR_WRITES_TIMEOUT`], until it has applied the event at that position. Fails as
    /// unavailable while no generation has caught up yet.
    pub async fn query(
        &self,
        ctx: &QueryContext,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Vec<SqlValue>>> {
        let name = self.entry.name();
        if let Some(position) = ctx.min_position {
            self.handle
                .wait_for(name, position, READ_YOUR_WRITES_TIMEOUT)
                .await?;
        }
        let live = self.entry.lock().record.live;
        let Some(live) = live else {
            let building = self.entry.lock().building_position.unwrap_or(0);
            let head = *self.handle.shared.reader.head().borrow();
            return Err(Error::unavailable(format!(
                "read model '{name}' is being built (position {building} of {head}); try again shortly"
            )));
        };
        let sql = resolve_tables(sql, &self.entry.projection.tables(), live.number);
        self.handle.shared.store.query(sql, params).await
    }
}
