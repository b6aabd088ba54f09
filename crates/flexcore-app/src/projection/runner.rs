//! Runs projections: one follower task per generation, blue-green swaps, position waits.
//! (Queries read through [`ReadModel`]; followers resolve their SQL through
//! [`ResolvedTemplates`].)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flexcore_domain::{DomainError, EventEnvelope};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::read_model::ReadModel;
use super::templates::ResolvedTemplates;
use super::{
    Changes, Generation, Projection, ProjectionRecord, ReadModelStore, SqlStatement,
    checkpoint_name, physical_table, resolve_tables, validate_table_name,
};
use crate::store::EventReader;
use crate::subscription::{BACKGROUND_LINGER, Subscription, SubscriptionOptions, lag};
use crate::{Error, Result};

/// How long an old generation's tables stay after a swap, for queries still reading them.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// The longest backoff after a failed batch.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Hears about every batch the live generation of a projection committed (e.g. to invalidate
/// a query cache). Called after the commit and before waiters on the new position wake up.
#[async_trait]
pub trait ProjectionListener: Send + Sync {
    /// `events` were applied to the live read model of `projection`.
    async fn applied(&self, projection: &str, events: &[EventEnvelope]);

    /// A rebuilt generation of `projection` replaced the live one.
    async fn swapped(&self, _projection: &str) {}
}

/// Where a projection stands (serialised `live`, `building`, `rebuilding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionState {
    /// Queries read a caught-up generation; nothing is being built.
    Live,
    /// No generation has caught up yet: queries answer 503 until one has.
    Building,
    /// Queries read the live generation while a new one is built beside it.
    Rebuilding,
}

/// A projection's state, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// Whether queries can read it and whether a generation is being built.
    pub state: ProjectionState,
    /// The generation queries read.
    pub live: Option<Generation>,
    /// The live generation's checkpoint: every event before it is applied.
    pub position: Option<u64>,
    /// The generation being built.
    pub building: Option<Generation>,
    /// The building generation's checkpoint.
    pub building_position: Option<u64>,
    /// The last committed global position this process knows of.
    pub head: u64,
    /// Events not yet applied to the live generation (or to the building one, while there is
    /// no live generation).
    pub lag: u64,
    /// The last error, if the projection is retrying.
    pub error: Option<String>,
}

/// Registers projections and starts them.
pub struct Projections {
    store: Arc<dyn ReadModelStore>,
    reader: Arc<dyn EventReader>,
    projections: Vec<Arc<dyn Projection>>,
    listeners: Vec<Arc<dyn ProjectionListener>>,
    page_size: usize,
}

impl Projections {
    /// No projections yet, over a read-model store and the log.
    pub fn new(store: Arc<dyn ReadModelStore>, reader: Arc<dyn EventReader>) -> Self {
        Self {
            store,
            reader,
            projections: Vec::new(),
            listeners: Vec::new(),
            page_size: 1000,
        }
    }

    /// Adds a projection.
    pub fn register(&mut self, projection: Arc<dyn Projection>) -> Result<()> {
        if self
            .projections
            .iter()
            .any(|p| p.name() == projection.name())
        {
            return Err(Error::internal(format!(
                "projection '{}' is registered twice",
                projection.name()
            )));
        }
        for table in projection.tables() {
            validate_table_name(table)?;
            if self.projections.iter().any(|p| p.tables().contains(&table)) {
                return Err(Error::internal(format!(
                    "read-model table '{table}' belongs to two projections"
                )));
            }
        }
        self.projections.push(projection);
        Ok(())
    }

    /// Adds a listener of live commits.
    pub fn listen(&mut self, listener: Arc<dyn ProjectionListener>) {
        self.listeners.push(listener);
    }

    /// Sets the events read per batch (default 1000).
    pub fn with_page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// Loads every projection's record, starts (or resumes) builds and followers, and returns
    /// the handle queries and operators use. Tasks stop when `shutdown` turns true.
    pub async fn start(self, shutdown: watch::Receiver<bool>) -> Result<ProjectionsHandle> {
        let records: HashMap<String, ProjectionRecord> = self
            .store
            .load_projections()
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let shared = Arc::new(Shared {
            store: self.store,
            reader: self.reader,
            listeners: self.listeners,
            page_size: self.page_size,
            shutdown,
            entries: self
                .projections
                .iter()
                .map(|p| {
                    let record = records.get(p.name()).cloned().unwrap_or(ProjectionRecord {
                        name: p.name().to_owned(),
                        live: None,
                        building: None,
                    });
                    (
                        p.name().to_owned(),
                        Arc::new(Entry::new(Arc::clone(p), record)),
                    )
                })
                .collect(),
        });
        let handle = ProjectionsHandle { shared };
        for projection in &self.projections {
            handle.resume(projection.name()).await?;
        }
        Ok(handle)
    }
}

pub(super) struct Shared {
    pub(super) store: Arc<dyn ReadModelStore>,
    pub(super) reader: Arc<dyn EventReader>,
    listeners: Vec<Arc<dyn ProjectionListener>>,
    page_size: usize,
    shutdown: watch::Receiver<bool>,
    entries: HashMap<String, Arc<Entry>>,
}

pub(super) struct Entry {
    pub(super) projection: Arc<dyn Projection>,
    state: Mutex<EntryState>,
    /// The live generation's checkpoint (0 until one is live).
    live_position: watch::Sender<u64>,
    /// Held while a rebuild starts, so two requests cannot both start one.
    starting: tokio::sync::Mutex<()>,
}

pub(super) struct EntryState {
    pub(super) record: ProjectionRecord,
    pub(super) building_position: Option<u64>,
    error: Option<String>,
    /// Stops the live generation's follower.
    stop_live: Option<watch::Sender<bool>>,
}

impl Entry {
    fn new(projection: Arc<dyn Projection>, record: ProjectionRecord) -> Self {
        Self {
            projection,
            state: Mutex::new(EntryState {
                record,
                building_position: None,
                error: None,
                stop_live: None,
            }),
            live_position: watch::Sender::new(0),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn name(&self) -> &str {
        self.projection.name()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Live,
    Building,
}

/// Queries read models through it; operators see status and start rebuilds.
#[derive(Clone)]
pub struct ProjectionsHandle {
    pub(super) shared: Arc<Shared>,
}

impl ProjectionsHandle {
    /// Every projection's status, by name.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        let mut all: Vec<ProjectionStatus> = self
            .shared
            .entries
            .values()
            .map(|entry| self.entry_status(entry))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// One projection's status.
    pub fn status_of(&self, name: &str) -> Result<ProjectionStatus> {
        Ok(self.entry_status(self.entry(name)?))
    }

    fn entry_status(&self, entry: &Entry) -> ProjectionStatus {
        let head = *self.shared.reader.head().borrow();
        let state = entry.lock();
        let position = state.record.live.map(|_| *entry.live_position.borrow());
        let behind = |p: u64| lag(head, p);
        ProjectionStatus {
            name: entry.name().to_owned(),
            state: match (state.record.live, state.record.building) {
                (Some(_), Some(_)) => ProjectionState::Rebuilding,
                (None, _) => ProjectionState::Building,
                (Some(_), None) => ProjectionState::Live,
            },
            live: state.record.live,
            position,
            building: state.record.building,
            building_position: state.building_position,
            head,
            lag: position.or(state.building_position).map_or(head, behind),
            error: state.error.clone(),
        }
    }

    /// Starts a blue-green rebuild of `name`: a new generation is built from position 0 beside
    /// the live one and replaces it once caught up. Returns the new generation.
    pub async fn rebuild(&self, name: &str) -> Result<Generation> {
        let entry = Arc::clone(self.entry(name)?);
        let _starting = entry.starting.lock().await;
        if entry.lock().record.building.is_some() {
            return Err(Error::Contended(format!(
                "projection '{name}' is already being rebuilt"
            )));
        }
        self.start_build(&entry).await
    }

    /// Waits until the live read model of `name` has applied every event before
    /// `position + 1` (i.e. the event at `position`), for at most `timeout`.
    pub async fn wait_for(&self, name: &str, position: u64, timeout: Duration) -> Result<()> {
        let entry = self.entry(name)?;
        let mut live = entry.live_position.subscribe();
        let reached = tokio::time::timeout(timeout, live.wait_for(|p| *p > position)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::unavailable(format!(
                "read model '{name}' has not reached position {position} within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// A read model to query, by projection name.
    pub fn read_model(&self, name: &str) -> Result<ReadModel> {
        Ok(ReadModel {
            handle: self.clone(),
            entry: Arc::clone(self.entry(name)?),
        })
    }

    fn entry(&self, name: &str) -> Result<&Arc<Entry>> {
        self.shared.entries.get(name).ok_or_else(|| {
            DomainError::NotFound(format!("there is no projection called '{name}'")).into()
        })
    }

    /// Starts the followers a record asks for, and a build when none is live or the version
    /// changed.
    async fn resume(&self, name: &str) -> Result<()> {
        let entry = Arc::clone(self.entry(name)?);
        let version = entry.projection.version();
        let record = entry.lock().record.clone();
        if let Some(live) = record.live {
            let position = self
                .shared
                .store
                .load_checkpoint(&checkpoint_name(name, live.number))
                .await?
                .unwrap_or(0);
            entry.live_position.send_replace(position);
            self.spawn_follower(&entry, live, Role::Live);
        }
        match record.building {
            Some(building) if building.version == version => {
                let checkpoint = self
                    .shared
                    .store
                    .load_checkpoint(&checkpoint_name(name, building.number))
                    .await?;
                if checkpoint.is_none() {
                    // It may have crashed between saving the record and creating the tables.
                    self.create_generation(&entry, building).await?;
                }
                entry.lock().building_position = Some(checkpoint.unwrap_or(0));
                self.spawn_follower(&entry, building, Role::Building);
            }
            Some(stale) => {
                self.discard_generation(&entry, stale).await?;
                entry.lock().record.building = None;
                self.start_build(&entry).await?;
            }
            None if record.live.is_none_or(|live| live.version != version) => {
                if let Some(live) = record.live {
                    tracing::info!(
                        projection = name,
                        from = live.version,
                        to = version,
                        "projection version changed; rebuilding beside the live read model"
                    );
                }
                self.start_build(&entry).await?;
            }
            None => {}
        }
        Ok(())
    }

    async fn start_build(&self, entry: &Arc<Entry>) -> Result<Generation> {
        let generation = {
            let state = entry.lock();
            let last = [state.record.live, state.record.building]
                .into_iter()
                .flatten()
                .map(|g| g.number)
                .max()
                .unwrap_or(0);
            Generation {
                number: last + 1,
                version: entry.projection.version(),
            }
        };
        let before = entry.lock().record.clone();
        let mut record = before.clone();
        record.building = Some(generation);
        self.shared.store.save_projection(&record).await?;
        {
            let mut state = entry.lock();
            state.record = record;
            state.building_position = Some(0);
        }
        if let Err(error) = self.create_generation(entry, generation).await {
            // Not building after all: a later rebuild may try again. Should the record not
            // be saved back, the next start finds the generation without its checkpoint and
            // creates it then.
            if let Err(e) = self.shared.store.save_projection(&before).await {
                tracing::warn!(projection = entry.name(), error = %e,
                    "cannot record that the new generation was abandoned");
            }
            let mut state = entry.lock();
            state.record = before;
            state.building_position = None;
            return Err(error);
        }
        tracing::info!(
            projection = entry.name(),
            generation = generation.number,
            "building a read model from position 0"
        );
        self.spawn_follower(entry, generation, Role::Building);
        Ok(generation)
    }

    async fn create_generation(&self, entry: &Entry, generation: Generation) -> Result<()> {
        self.discard_generation(entry, generation).await?;
        let tables = entry.projection.tables();
        let ddl = entry
            .projection
            .schema()
            .iter()
            .map(|sql| resolve_tables(sql, &tables, generation.number))
            .collect();
        self.shared.store.create_tables(ddl).await
    }

    async fn discard_generation(&self, entry: &Entry, generation: Generation) -> Result<()> {
        let tables = entry
            .projection
            .tables()
            .iter()
            .map(|t| physical_table(t, generation.number))
            .collect();
        self.shared.store.drop_tables(tables).await?;
        self.shared
            .store
            .reset_checkpoint(&checkpoint_name(entry.name(), generation.number))
            .await
    }

    fn spawn_follower(
        &self,
        entry: &Arc<Entry>,
        generation: Generation,
        role: Role,
    ) -> JoinHandle<()> {
        let (stop_sender, stop) = watch::channel(false);
        if role == Role::Live
            && let Some(previous) = entry.lock().stop_live.replace(stop_sender.clone())
        {
            let _ = previous.send(true);
        }
        let follower = Follower {
            handle: self.clone(),
            entry: Arc::clone(entry),
            generation,
            role,
            stop,
            _stop_sender: stop_sender,
            progressed: false,
        };
        tokio::spawn(follower.run())
    }

    /// Makes a caught-up building generation live and retires the old one.
    async fn swap(&self, entry: &Arc<Entry>, generation: Generation, position: u64) -> Result<()> {
        let mut record = entry.lock().record.clone();
        let old = record.live.replace(generation);
        record.building = None;
        self.shared.store.save_projection(&record).await?;
        {
            // Under the lock a retired follower checks before it publishes (`committed`), so
            // once the new generation is live no position of the old one is published.
            let mut state = entry.lock();
            state.record = record;
            state.building_position = None;
            entry.live_position.send_replace(position);
        }
        tracing::info!(
            projection = entry.name(),
            generation = generation.number,
            position,
            "read model swapped in"
        );
        for listener in &self.shared.listeners {
            listener.swapped(entry.name()).await;
        }
        if let Some(old) = old {
            // The new live generation's follower has stopped the old one.
            let handle = self.clone();
            let entry = Arc::clone(entry);
            tokio::spawn(async move {
                tokio::time::sleep(DROP_GRACE).await;
                if let Err(e) = handle.discard_generation(&entry, old).await {
                    tracing::warn!(projection = entry.name(), generation = old.number, error = %e, "cannot drop a retired read model");
                }
            });
        }
        Ok(())
    }
}

/// Follows the log for one generation of one projection.
struct Follower {
    handle: ProjectionsHandle,
    entry: Arc<Entry>,
    generation: Generation,
    role: Role,
    stop: watch::Receiver<bool>,
    _stop_sender: watch::Sender<bool>,
    /// Set by every commit; a failure after progress starts the backoff afresh.
    progressed: bool,
}

impl Follower {
    async fn run(mut self) {
        let mut shutdown = self.handle.shared.shutdown.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let outcome = tokio::select! {
                _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => return,
                outcome = self.follow() => outcome,
            };
            if std::mem::take(&mut self.progressed) {
                backoff = Duration::from_millis(100);
            }
            match outcome {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(projection = self.entry.name(), generation = self.generation.number, error = %e.chain(), "projection failed; retrying");
                    self.entry.lock().error = Some(e.to_string());
                    tokio::select! {
                        _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Reads, applies and commits batches until the generation is retired (`Ok`) or a step
    /// fails (`Err`, the caller backs off and starts again from the stored checkpoint).
    async fn follow(&mut self) -> Result<()> {
        let shared = &self.handle.shared;
        let name = self.entry.name().to_owned();
        let checkpoint = checkpoint_name(&name, self.generation.number);
        let mut from = shared.store.load_checkpoint(&checkpoint).await?;
        if self.role == Role::Live
            && let Some(stored) = from
            && self.entry.lock().record.live == Some(self.generation)
        {
            // Another node may have moved the checkpoint (we lost the fence): report it, so
            // read-your-writes waits here see what the read model holds.
            self.entry
                .live_position
                .send_if_modified(|p| std::mem::replace(p, (*p).max(stored)) < stored);
        }
        let mut subscription = Subscription::new(
            Arc::clone(&shared.reader),
            from.unwrap_or(0),
            SubscriptionOptions {
                page_size: shared.page_size,
                filter: self.entry.projection.filter(),
                linger: BACKGROUND_LINGER,
                ..SubscriptionOptions::default()
            },
        );
        let mut templates = ResolvedTemplates::new(self.entry.projection.tables(), self.generation);
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            let events = tokio::select! {
                _ = async { self.stop.wait_for(|s| *s).await.map(|_| ()) } => return Ok(()),
                events = subscription.poll_batch() => events?,
            };
            let to = subscription.position();
            if to != from.unwrap_or(0) || from.is_none() {
                let mut changes = Changes::default();
                for event in &events {
                    self.entry
                        .projection
                        .apply(event, &mut changes)
                        .map_err(|e| {
                            Error::internal(format!(
                                "projection '{name}' cannot apply event {} at position {}: {e}",
                                event.event_id, event.global_position
                            ))
                        })?;
                }
                let statements: Vec<SqlStatement> = changes
                    .take()
                    .into_iter()
                    .map(|s| SqlStatement {
                        sql: templates.resolve(&s.sql),
                        params: s.params,
                    })
                    .collect();
                shared
                    .store
                    .commit(&checkpoint, from, to, statements)
                    .await?;
                self.progressed = true;
                from = Some(to);
                self.entry.lock().error = None;
                self.committed(&events, to).await;
            }
            if events.is_empty() && self.role == Role::Building {
                // Caught up with the log: swap in once level with the live generation.
                let live = self
                    .entry
                    .lock()
                    .record
                    .live
                    .map(|_| *self.entry.live_position.borrow());
                if live.is_none_or(|live| to >= live) {
                    self.handle.swap(&self.entry, self.generation, to).await?;
                    self.role = Role::Live;
                    let (stop_sender, stop) = watch::channel(false);
                    if let Some(previous) = self.entry.lock().stop_live.replace(stop_sender.clone())
                    {
                        let _ = previous.send(true);
                    }
                    self.stop = stop;
                    self._stop_sender = stop_sender;
                }
            }
            if events.is_empty() {
                tokio::select! {
                    _ = async { self.stop.wait_for(|s| *s).await.map(|_| ()) } => return Ok(()),
                    () = subscription.wait_for_more() => {}
                }
            }
        }
    }

    async fn committed(&self, events: &[EventEnvelope], to: u64) {
        let name = self.entry.name();
        let head = *self.handle.shared.reader.head().borrow();
        let behind = lag(head, to) as f64;
        match self.role {
            Role::Live => {
                if self.entry.lock().record.live != Some(self.generation) {
                    return; // retired by a swap a moment ago
                }
                if !events.is_empty() {
                    for listener in &self.handle.shared.listeners {
                        listener.applied(name, events).await;
                    }
                }
                {
                    // A swap may have retired this generation while the listeners ran: its
                    // position must not reach read-your-writes waits, which would then query
                    // the new generation before it holds these events.
                    let state = self.entry.lock();
                    if state.record.live != Some(self.generation) {
                        return;
                    }
                    self.entry.live_position.send_replace(to);
                }
                metrics::gauge!("flexcore_projection_lag", "projection" => name.to_owned())
                    .set(behind);
                metrics::gauge!("flexcore_projection_position", "projection" => name.to_owned())
                    .set(to as f64);
            }
            Role::Building => {
                self.entry.lock().building_position = Some(to);
                if self.entry.lock().record.live.is_none() {
                    metrics::gauge!("flexcore_projection_lag", "projection" => name.to_owned())
                        .set(behind);
                }
            }
        }
    }
}
