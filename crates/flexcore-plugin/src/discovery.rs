//! Finding plugins: every `<plugins_dir>/*/plugin.toml`, ordered so dependencies come first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::manifest::{MANIFEST_FILE, Manifest};

/// What a plugins folder holds: the plugins that can start, in start order, and the ones
/// left out with why.
#[derive(Debug)]
pub struct Discovery {
    /// Plugins whose manifests are valid and whose dependencies are satisfied, dependencies
    /// first (ties by name).
    pub plugins: Vec<Manifest>,
    /// Each plugin left out (by name, or by folder when its manifest is unreadable) and why.
    pub rejected: Vec<(String, Error)>,
}

/// Reads every `<plugins_dir>/*/plugin.toml` and resolves dependencies. Only an unreadable
/// `plugins_dir` is an error; a bad plugin is reported in [`Discovery::rejected`].
pub fn discover(plugins_dir: &Path) -> Result<Discovery> {
    let mut folders: Vec<_> = std::fs::read_dir(plugins_dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|folder| folder.join(MANIFEST_FILE).is_file())
        .collect();
    folders.sort();
    let mut rejected = Vec::new();
    let mut manifests = Vec::new();
    for folder in folders {
        match Manifest::load(&folder) {
            Ok(manifest) => manifests.push(manifest),
            Err(error) => {
                let label = folder
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default();
                rejected.push((label, error));
            }
        }
    }
    let (plugins, unresolved) = resolve(manifests);
    rejected.extend(unresolved);
    Ok(Discovery { plugins, rejected })
}

/// Orders `manifests` dependencies first and leaves out, with an error naming the plugins
/// involved, those with a missing dependency, one outside its range, one in a cycle, or a
/// dependency that is itself left out.
pub fn resolve(manifests: Vec<Manifest>) -> (Vec<Manifest>, Vec<(String, Error)>) {
    let mut rejected = Vec::new();
    let mut by_name: BTreeMap<String, Manifest> = BTreeMap::new();
    for manifest in manifests {
        if let Some(first) = by_name.get(&manifest.name) {
            let message = format!(
                "name already used by {}; {} is left out",
                first.path().display(),
                manifest.path().display()
            );
            rejected.push((
                manifest.name.clone(),
                dependency_error(&manifest.name, message),
            ));
        } else {
            by_name.insert(manifest.name.clone(), manifest);
        }
    }
    // Direct problems: missing dependencies and versions outside their range.
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for manifest in by_name.values() {
        for (dependency, range) in &manifest.dependencies {
            let problem = match by_name.get(dependency) {
                None => format!("depends on '{dependency}' ({range}), which is not installed"),
                Some(found) if !range.matches(&found.version) => format!(
                    "depends on '{dependency}' {range}, but '{dependency}' is {}",
                    found.version
                ),
                Some(_) => continue,
            };
            out.entry(manifest.name.clone()).or_insert(problem);
        }
    }
    // Kahn's algorithm over the rest: what never becomes ready is in a cycle or behind one.
    let mut order = Vec::new();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    loop {
        let ready: Vec<String> = by_name
            .values()
            .filter(|m| !placed.contains(&m.name) && !out.contains_key(&m.name))
            .filter(|m| m.dependencies.keys().all(|d| placed.contains(d)))
            .map(|m| m.name.clone())
            .collect();
        if ready.is_empty() {
            break;
        }
        for name in ready {
            placed.insert(name.clone());
            order.push(name);
        }
    }
    let stuck: Vec<String> = by_name
        .keys()
        .filter(|name| !placed.contains(*name) && !out.contains_key(*name))
        .cloned()
        .collect();
    for name in &stuck {
        if let Some(cycle) = find_cycle(name, &by_name) {
            out.insert(
                name.clone(),
                format!("dependency cycle: {}", cycle.join(" -> ")),
            );
        }
    }
    // The rest depend, directly or not, on a plugin left out above.
    for name in &stuck {
        if !out.contains_key(name) {
            let blocked: Vec<_> = by_name[name]
                .dependencies
                .keys()
                .filter(|d| !placed.contains(*d))
                .map(|d| format!("'{d}'"))
                .collect();
            out.insert(
                name.clone(),
                format!("depends on {}, which is left out", blocked.join(", ")),
            );
        }
    }
    for (name, message) in out {
        rejected.push((name.clone(), dependency_error(&name, message)));
    }
    let mut by_name = by_name;
    let plugins = order
        .into_iter()
        .filter_map(|name| by_name.remove(&name))
        .collect();
    (plugins, rejected)
}

/// The path `start -> … -> start` through dependencies, if `start` is on a cycle.
fn find_cycle(start: &str, by_name: &BTreeMap<String, Manifest>) -> Option<Vec<String>> {
    fn walk(
        current: &str,
        start: &str,
        by_name: &BTreeMap<String, Manifest>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let Some(manifest) = by_name.get(current) else {
            return false;
        };
        for dependency in manifest.dependencies.keys() {
            if dependency == start {
                path.push(dependency.clone());
                return true;
            }
            if seen.insert(dependency.clone()) {
                path.push(dependency.clone());
                if walk(dependency, start, by_name, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(start, start, by_name, &mut path, &mut BTreeSet::new()).then_some(path)
}

fn dependency_error(plugin: &str, message: String) -> Error {
    Error::Dependency {
        plugin: plugin.to_owned(),
        message,
    }
}
