//! The domain-module contract: modules register side by side, clashes are refused naming both
//! modules, and read-your-writes is the engine's (`min_position` never reaches a handler).

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_app::command::{Command, CommandBus, CommandContext, CommandHandler, CommandRouter};
use flexcore_app::module::{
    DomainModule, ModuleContext, ModuleRegistry, Modules, ReadSideDeclaration,
};
use flexcore_app::projection::{Changes, Projection, Projections};
use flexcore_app::query::{Query, QueryBus, QueryContext, QueryHandler, QueryRouter};
use flexcore_app::repository::Repository;
use flexcore_app::store::{EventStore, InMemoryStore, StreamWriteResult};
use flexcore_app::{Error, ErrorKind, Result};
use flexcore_domain::{EventEnvelope, StreamId};
use flexcore_store_sqlite::SqliteReadModels;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

/// Answers with its module's name, so a test sees who handled a command or a query.
struct Named(&'static str);

#[async_trait]
impl CommandHandler for Named {
    async fn handle(&self, _: &CommandContext, _: &Value) -> Result<StreamWriteResult> {
        Ok(StreamWriteResult {
            stream_id: StreamId::new(format!("{}-1", self.0))?,
            current_version: None,
            events: Vec::new(),
        })
    }
}

#[async_trait]
impl QueryHandler for Named {
    async fn handle(&self, ctx: &QueryContext, params: &Value) -> Result<Value> {
        Ok(json!({"module": self.0, "params": params, "min_position": ctx.min_position}))
    }
}

struct Table(&'static str);

impl Projection for Table {
    fn name(&self) -> &str {
        self.0
    }
    fn version(&self) -> u32 {
        1
    }
    fn tables(&self) -> Vec<&'static str> {
        vec![self.0]
    }
    fn schema(&self) -> Vec<String> {
        vec![format!("CREATE TABLE {{{}}} (id TEXT)", self.0)]
    }
    fn apply(&self, _: &EventEnvelope, _: &mut Changes) -> Result<()> {
        Ok(())
    }
}

/// A module claiming the given command and query types and projections.
struct TestModule {
    name: &'static str,
    commands: Vec<&'static str>,
    queries: Vec<&'static str>,
    projections: Vec<&'static str>,
}

impl TestModule {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            commands: Vec::new(),
            queries: Vec::new(),
            projections: Vec::new(),
        }
    }
    fn commands(mut self, types: &[&'static str]) -> Self {
        self.commands = types.to_vec();
        self
    }
    fn queries(mut self, types: &[&'static str]) -> Self {
        self.queries = types.to_vec();
        self
    }
    fn projections(mut self, names: &[&'static str]) -> Self {
        self.projections = names.to_vec();
        self
    }
}

#[async_trait]
impl DomainModule for TestModule {
    fn name(&self) -> &str {
        self.name
    }

    fn declare(&self, read_side: &mut ReadSideDeclaration) -> Result<()> {
        for name in &self.projections {
            read_side.projection(Arc::new(Table(name)));
        }
        Ok(())
    }

    async fn register(&self, _: &ModuleContext, registry: &mut ModuleRegistry) -> Result<()> {
        for command_type in &self.commands {
            registry.command(*command_type, Arc::new(Named(self.name)));
        }
        for query_type in &self.queries {
            registry.query(*query_type, Arc::new(Named(self.name)));
        }
        Ok(())
    }

    fn health(&self) -> Map<String, Value> {
        let mut details = Map::new();
        details.insert(self.name.to_owned(), json!({"ok": true}));
        details
    }
}

/// The engine a module registers against: an in-memory log, SQLite read models in a temp dir.
struct Engine {
    context: ModuleContext,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start_engine(modules: &Modules) -> Result<Engine> {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let read_models = Arc::new(SqliteReadModels::open(dir.path().join("rm.db")).await?);
    let (stop, shutdown) = watch::channel(false);
    let mut projections = Projections::new(read_models.clone(), Arc::clone(&store) as Arc<_>);
    for (_, projection) in modules.declare()?.projections {
        projections.register(projection)?;
    }
    let projections = projections.start(shutdown.clone()).await?;
    Ok(Engine {
        context: ModuleContext {
            repository: Repository::new(Arc::clone(&store)),
            store,
            projections,
            read_models,
            shutdown,
        },
        _stop: stop,
        _dir: dir,
    })
}

fn modules(list: Vec<TestModule>) -> Modules {
    Modules::new(
        list.into_iter()
            .map(|m| Arc::new(m) as Arc<dyn DomainModule>)
            .collect(),
    )
}

async fn send(commands: &CommandRouter, command_type: &str) -> String {
    let command = Command {
        command_type: command_type.into(),
        payload: json!({}),
    };
    let outcome = commands
        .send(&CommandContext::default(), &command)
        .await
        .unwrap();
    outcome.stream_id.as_str().to_owned()
}

async fn ask(queries: &QueryRouter, query_type: &str, params: Value) -> Result<Value> {
    let query = Query {
        query_type: query_type.into(),
        params,
    };
    queries.ask(&QueryContext::default(), &query).await
}

fn configuration_error(result: Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(e @ Error::Configuration(_)) => e.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn modules_with_distinct_types_register_side_by_side() {
    let modules = modules(vec![
        TestModule::new("rust")
            .commands(&["create_user"])
            .queries(&["get_user"])
            .projections(&["users"]),
        TestModule::new("python")
            .commands(&["send_greeting"])
            .queries(&["greeted"]),
    ]);
    let engine = start_engine(&modules).await.unwrap();
    let registrations = modules.register(&engine.context).await.unwrap();
    assert_eq!(
        registrations.commands.command_types(),
        ["create_user", "send_greeting"]
    );
    assert_eq!(send(&registrations.commands, "create_user").await, "rust-1");
    assert_eq!(
        send(&registrations.commands, "send_greeting").await,
        "python-1"
    );
    let answer = ask(&registrations.queries, "greeted", json!({}))
        .await
        .unwrap();
    assert_eq!(answer["module"], "python");
    assert_eq!(
        Value::Object(modules.health()),
        json!({"rust": {"ok": true}, "python": {"ok": true}})
    );
}

#[tokio::test]
async fn a_type_claimed_by_two_modules_is_an_error_naming_both() {
    let clash = modules(vec![
        TestModule::new("users").commands(&["create_user"]),
        TestModule::new("python").commands(&["send_greeting", "create_user"]),
    ]);
    let engine = start_engine(&clash).await.unwrap();
    let error = configuration_error(clash.register(&engine.context).await.map(|_| ()));
    assert_eq!(
        error,
        "invalid configuration: command type 'create_user' is claimed by two modules: 'users' and 'python'"
    );

    let clash = modules(vec![
        TestModule::new("a").queries(&["get_user"]),
        TestModule::new("b").queries(&["get_user"]),
    ]);
    let engine = start_engine(&clash).await.unwrap();
    let error = configuration_error(clash.register(&engine.context).await.map(|_| ()));
    assert!(
        error.contains("query type 'get_user' is claimed by two modules: 'a' and 'b'"),
        "{error}"
    );

    let clash = modules(vec![
        TestModule::new("a").projections(&["users"]),
        TestModule::new("b").projections(&["users"]),
    ]);
    let error = configuration_error(clash.declare().map(|_| ()));
    assert!(
        error.contains("projection 'users' is claimed by two modules: 'a' and 'b'"),
        "{error}"
    );

    let twice = modules(vec![TestModule::new("a").commands(&["x", "x"])]);
    let engine = start_engine(&twice).await.unwrap();
    let error = configuration_error(twice.register(&engine.context).await.map(|_| ()));
    assert!(
        error.contains("command type 'x' is registered twice by module 'a'"),
        "{error}"
    );
}

#[tokio::test]
async fn min_position_is_the_engines_parameter_not_the_handlers() {
    let mut queries = QueryRouter::new();
    queries.register("q", Arc::new(Named("m"))).unwrap();

    let answer = ask(&queries, "q", json!({"page": 2, "min_position": 7}))
        .await
        .unwrap();
    assert_eq!(
        answer["params"],
        json!({"page": 2}),
        "taken out of the parameters"
    );
    assert_eq!(answer["min_position"], 7, "into the context");

    let query = Query {
        query_type: "q".into(),
        params: json!({"min_position": 3}),
    };
    let ctx = QueryContext {
        min_position: Some(9),
        ..QueryContext::default()
    };
    let answer = queries.ask(&ctx, &query).await.unwrap();
    assert_eq!(
        answer["min_position"], 9,
        "the later of header and parameter"
    );

    let answer = ask(&queries, "q", json!({"min_position": null}))
        .await
        .unwrap();
    assert_eq!(answer["params"], json!({}));
    assert_eq!(answer["min_position"], Value::Null);

    for bad in [json!(-1), json!("7"), json!(1.5)] {
        let error = ask(&queries, "q", json!({"min_position": bad}))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Validation, "{bad}: {error}");
        assert!(error.to_string().contains("min_position"), "{error}");
    }
}
