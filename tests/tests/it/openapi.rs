//! The committed OpenAPI document matches what the code generates.
//!
//! After an intended API change: `UPDATE_OPENAPI=1 cargo test -p tests openapi` rewrites it.

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.json");
    let generated = format!("{}\n", api::openapi_spec());
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test -p tests openapi` and commit it"
    );
}

#[test]
fn every_operation_has_a_summary_a_tag_and_an_operation_id() {
    let spec: serde_json::Value = serde_json::from_str(&api::openapi_spec()).expect("json");
    for (path, operations) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            let at = format!("{method} {path}");
            assert!(
                operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{at}: summary"
            );
            assert!(
                operation["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{at}: tag"
            );
            assert!(
                operation["operationId"].as_str().is_some(),
                "{at}: operationId"
            );
        }
    }
}

#[test]
fn the_document_accepts_no_xml() {
    assert!(!api::openapi_spec().contains("xml"));
}
