//! The gateway and Python benches measure every case over the real wiring (tiny settings).

use clap::Parser;
use flexcore_bench::gateway::{self, Layer};
use flexcore_bench::{Bench, Cli, GatewayArgs, PythonArgs, python};

fn gateway_args(args: &[&str]) -> GatewayArgs {
    match Cli::parse_from(["flexcore-bench", "gateway"].iter().chain(args)).bench {
        Bench::Gateway(args) => args,
        other => panic!("parsed as {other:?}"),
    }
}

fn python_args(args: &[&str]) -> PythonArgs {
    match Cli::parse_from(["flexcore-bench", "python"].iter().chain(args)).bench {
        Bench::Python(args) => args,
        other => panic!("parsed as {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_layer_is_measured_over_a_real_server() {
    let args = gateway_args(&[
        "--connections",
        "2,2,3",
        "--duration",
        "0.3",
        "--repeat",
        "1",
        "--json",
    ]);
    let report = gateway::measure_all(&args).await.unwrap();
    let saturation = report.saturation.as_ref().expect("back to back by default");
    let equal_load = report.equal_load.as_ref().expect("then at equal load");
    for phase in [saturation, equal_load] {
        assert_eq!(
            phase.cases.len(),
            8,
            "4 layers × 2 distinct connection counts"
        );
        assert_eq!(phase.ratios.len(), 2);
        for case in &phase.cases {
            assert!(case.commands > 0, "{case:?}");
            assert!(case.p99_ms >= case.p50_ms, "{case:?}");
            assert!(case.appends_p99_ms > 0.0, "appends are timed: {case:?}");
        }
    }
    // Half the HTTP gateway's throughput back to back, offered to every layer.
    for case in &equal_load.cases {
        let http = saturation.find(Layer::Http, case.connections).unwrap();
        assert_eq!(case.offered_rate, Some(0.5 * http.commands_per_s));
    }
    let store = saturation.find(Layer::Store, 2).unwrap();
    assert_eq!(
        store.p99_over_appends_ms, 0.0,
        "the store's commands are its appends"
    );
    assert!(report.targets.is_empty(), "no 32-connection case");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mode"], "gateway");
    assert_eq!(json["saturation"]["cases"][2]["layer"], "http");
    assert_eq!(json["equal_load"]["cases"][2]["layer"], "http");
}

#[tokio::test]
async fn the_load_share_is_a_share() {
    let error = gateway::measure_all(&gateway_args(&["--load-share", "2"]))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("--load-share must be between 0 and 1"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_domains_are_measured_and_compared() {
    let report = python::measure_all(&python_args(&[
        "--connections",
        "2",
        "--duration",
        "0.3",
        "--repeat",
        "1",
    ]))
    .await
    .unwrap();
    let domains: Vec<&str> = report.cases.iter().map(|c| c.domain).collect();
    assert_eq!(domains, ["rust", "python"]);
    for case in &report.cases {
        assert!(case.commands_per_s > 0.0, "{case:?}");
        assert_eq!(case.connections, 2);
    }
    assert_eq!(report.ratios.len(), 1);
    assert!(report.ratios[0].ratio > 0.0);
}
