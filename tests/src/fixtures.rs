//! The Jira fixtures copied into the repository, `fixtures/jira` (override with `HOOKLINE_FIXTURES_DIR`).

use std::path::PathBuf;

/// The fixtures directory.
pub fn dir() -> PathBuf {
    match std::env::var_os("HOOKLINE_FIXTURES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/jira"),
    }
}

/// A fixture's exact bytes.
pub fn bytes(name: &str) -> Vec<u8> {
    let path = dir().join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("fixture {}: {error}", path.display()))
}

/// A fixture parsed as JSON.
pub fn json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&bytes(name)).unwrap_or_else(|error| panic!("fixture {name}: {error}"))
}

/// The names of every webhook body fixture (`webhook_*.json`, not the header files).
pub fn webhook_bodies() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .expect("fixtures directory")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("webhook_") && name.ends_with(".json"))
        .filter(|name| !name.contains("_headers"))
        .collect();
    names.sort();
    names
}
