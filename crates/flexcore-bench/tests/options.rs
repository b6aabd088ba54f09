//! The command line of `flexcore-bench`: one subcommand per benchmark, each taking only the
//! options it reads.

use clap::Parser;
use flexcore_bench::{Bench, Cli};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(["flexcore-bench"].iter().chain(args))
}

#[test]
fn a_benchmark_must_be_named() {
    assert!(parse(&[]).is_err());
    assert!(
        parse(&["--store", "sqlite"]).is_err(),
        "options follow a subcommand"
    );
}

#[test]
fn connections_are_only_taken_where_there_are_clients() {
    for with_clients in ["gateway", "python"] {
        let args = [with_clients, "--connections", "4,8"];
        assert!(parse(&args).is_ok(), "{args:?}");
    }
    for without_clients in ["appends", "subscriptions", "outbox"] {
        let error = parse(&[without_clients, "--connections", "4"]).unwrap_err();
        assert!(error.to_string().contains("--connections"), "{error}");
    }
}

#[test]
fn writers_and_events_per_append_belong_to_the_append_bench() {
    let cli = parse(&["appends", "--writers", "2,4", "--events-per-append", "5"]).unwrap();
    let Bench::Appends(args) = cli.bench else {
        panic!("parsed as {:?}", cli.bench)
    };
    assert_eq!(args.writers, [2, 4]);
    assert_eq!(args.events_per_append, [5]);
    for other in ["gateway", "python", "subscriptions", "outbox"] {
        assert!(parse(&[other, "--writers", "2"]).is_err(), "{other}");
        assert!(
            parse(&[other, "--events-per-append", "2"]).is_err(),
            "{other}"
        );
    }
}

#[test]
fn the_rate_and_the_load_share_belong_to_the_gateway_bench() {
    assert!(parse(&["gateway", "--rate", "100"]).is_ok());
    assert!(parse(&["python", "--rate", "100"]).is_err());
    assert!(parse(&["appends", "--load-share", "0.3"]).is_err());
    let error = parse(&["gateway", "--rate", "100", "--load-share", "0.3"]).unwrap_err();
    assert!(error.to_string().contains("--load-share"), "{error}");
}

#[test]
fn the_python_bench_runs_on_sqlite_only_so_takes_no_store() {
    let error = parse(&["python", "--store", "postgres://x@h/db"]).unwrap_err();
    assert!(error.to_string().contains("--store"), "{error}");
    assert!(parse(&["python", "--committers", "4"]).is_err());
}

#[test]
fn committers_tune_only_the_stores_a_bench_opens_itself() {
    for opens_itself in ["appends", "subscriptions", "outbox"] {
        assert!(
            parse(&[opens_itself, "--committers", "4"]).is_ok(),
            "{opens_itself}"
        );
    }
    // The gateway bench opens its stores from a URL, as `flexcore serve` does.
    assert!(parse(&["gateway", "--committers", "4"]).is_err());
}

#[test]
fn the_outbox_bench_has_no_duration() {
    assert!(parse(&["outbox", "--duration", "1"]).is_err());
    assert!(parse(&["outbox", "--read-events", "1000", "--repeat", "1"]).is_ok());
}

#[test]
fn shared_options_have_the_same_defaults_everywhere() {
    let cli = parse(&["subscriptions"]).unwrap();
    let Bench::Subscriptions(args) = cli.bench else {
        panic!("parsed as {:?}", cli.bench)
    };
    assert_eq!(args.store.store, "sqlite");
    assert_eq!(args.run.repeat, 3);
    assert!(!args.run.json);
    assert_eq!(args.duration, 5.0);
    assert_eq!(args.read_events, 200_000);
    let cli = parse(&["gateway", "--json", "--repeat", "1"]).unwrap();
    let Bench::Gateway(args) = cli.bench else {
        panic!("parsed as {:?}", cli.bench)
    };
    assert!(args.run.json);
    assert_eq!(args.run.repeat, 1);
    assert_eq!(args.connections, [1, 32]);
    assert_eq!(args.load_share, 0.5);
}
