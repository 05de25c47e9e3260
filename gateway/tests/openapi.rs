//! `docs/openapi.json` is the API's OpenAPI document exactly as the gateway serves
//! it (`GET /v1/openapi.json`); the Python SDK's tests check their types against it.
//! It is generated from the handlers and `warren-api`'s types; these tests fail
//! when the committed copy is stale.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

/// Set to write the document instead of comparing it.
const WRITE_VAR: &str = "WARREN_WRITE_OPENAPI";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

fn generated() -> String {
    let mut json = warren_gateway::api::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    json.push('\n');
    json
}

#[test]
fn the_committed_document_is_current() {
    let path = committed_path();
    let generated = generated();
    if std::env::var_os(WRITE_VAR).is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale (the API's handlers or warren-api's types changed). Regenerate it \
         and commit the result:\n    {WRITE_VAR}=1 cargo nextest run -p warren-gateway \
         --test openapi",
        path.display()
    );
}

#[test]
fn the_document_lists_every_error_code() {
    let document: serde_json::Value = serde_json::from_str(&generated()).unwrap();
    let listed: Vec<&str> = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("an ErrorCode schema with its values")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let known: Vec<&str> = warren_api::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(listed, known);
}
