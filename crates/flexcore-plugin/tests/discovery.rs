//! Discovery of a plugins folder: dependency order, and errors that name the plugins involved
//! while leaving the others in.

mod common;

use common::{install, set};

fn depends(manifest: &mut toml::Table, name: &str, dependency: &str, range: &str) {
    manifest.insert("name".into(), name.into());
    set(manifest, "dependencies", dependency, range);
}

#[test]
fn dependency_problems_leave_out_only_the_plugins_involved() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    install(root, "a", |m| {
        m.insert("name".into(), "a".into());
    });
    install(root, "g", |m| depends(m, "g", "a", "^1"));
    install(root, "h", |m| depends(m, "h", "g", ">=1.0.0"));
    install(root, "b", |m| depends(m, "b", "a", ">=2"));
    install(root, "c", |m| depends(m, "c", "zed", "1"));
    install(root, "d", |m| depends(m, "d", "e", "*"));
    install(root, "e", |m| depends(m, "e", "d", "*"));
    install(root, "f", |m| depends(m, "f", "b", "*"));
    std::fs::create_dir(root.join("broken")).unwrap();
    std::fs::write(root.join("broken/plugin.toml"), "name = \"broken\"\n").unwrap();

    let found = flexcore_plugin::discover(root).unwrap();
    let order: Vec<_> = found.plugins.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(order, ["a", "g", "h"]);
    let rejected: std::collections::BTreeMap<_, _> = found
        .rejected
        .iter()
        .map(|(name, error)| (name.as_str(), error.to_string()))
        .collect();
    let expect = [
        ("b", vec!["'b'", "'a' >=2", "is 1.0.0"]),
        ("c", vec!["'c'", "'zed'", "not installed"]),
        ("d", vec!["dependency cycle: d -> e -> d"]),
        ("e", vec!["dependency cycle: e -> d -> e"]),
        ("f", vec!["'f'", "'b'", "left out"]),
        (
            "broken",
            vec!["broken/plugin.toml", "missing field `version`"],
        ),
    ];
    assert_eq!(rejected.len(), expect.len(), "{rejected:?}");
    for (name, parts) in expect {
        let message = &rejected[name];
        for part in parts {
            assert!(
                message.contains(part),
                "{name}: '{message}' does not say '{part}'"
            );
        }
    }
}

#[test]
fn a_duplicate_name_keeps_the_first_folder() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "one", |_| {});
    install(dir.path(), "two", |_| {});
    let found = flexcore_plugin::discover(dir.path()).unwrap();
    assert_eq!(found.plugins.len(), 1);
    assert!(found.plugins[0].folder.ends_with("one"));
    let (name, error) = &found.rejected[0];
    assert_eq!(name, "testkit");
    assert!(error.to_string().contains("two/plugin.toml"), "{error}");
}
