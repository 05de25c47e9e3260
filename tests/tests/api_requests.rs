//! What the HTTP API takes and answers: bad inputs are refused and change nothing,
//! API keys are shown once and revocable, a key guesser is slowed down, and the
//! OpenAPI document lists every route.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use warren_keys::SandboxId;
use warren_tests::stack::{ApiStack, check_error};

const FAST_RECONCILE: Duration = Duration::from_millis(500);

#[test]
fn bad_inputs_are_refused_with_4xx_and_change_nothing() -> Result<()> {
    let stack = ApiStack::start(&[], FAST_RECONCILE)?;
    let alice = stack.account("alice")?;
    let made = stack.create_sandbox(&alice.key, json!({}))?;
    let id = made["id"].as_str().context("id")?.to_owned();
    let before = stack.sandbox_states(&alice.key)?;
    let users_before = stack.rt.block_on(stack.store.list_users())?;
    let url = |path: &str| format!("{}{path}", stack.api.base);

    // Unreadable bodies.
    let raw = |body: &str, content_type: &str| {
        stack
            .api
            .http
            .post(url("/v1/sandboxes"))
            .bearer_auth(&alice.key)
            .header("content-type", content_type)
            .body(body.to_owned())
    };
    check_error(
        &stack.send(raw("{\"cpus\": ", "application/json"))?,
        400,
        "invalid_request",
    )?;
    check_error(
        &stack.send(raw("{\"cpus\" 1}", "application/json"))?,
        400,
        "invalid_request",
    )?;
    check_error(
        &stack.send(raw("{}", "text/plain"))?,
        415,
        "unsupported_media_type",
    )?;
    let big = format!("{{\"image\": \"{}\"}}", "a".repeat(70 * 1024));
    check_error(
        &stack.send(raw(&big, "application/json"))?,
        413,
        "payload_too_large",
    )?;

    // Well-formed but refused: wrong types, unknown fields, out of range, injection.
    let long_value = "x".repeat(33 * 1024);
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("V{i}"), json!("1"))).collect();
    for body in [
        json!({"cpus": "two"}),
        json!({"imagee": "debian"}),
        json!({"cpus": 0}),
        json!({"cpus": 0.05}),
        json!({"cpus": 17}),
        json!({"cpus": -1}),
        json!({"memory_mb": 64}),
        json!({"memory_mb": 65537}),
        json!({"memory_mb": 4_294_967_296_u64}),
        json!({"idle_timeout_s": 59}),
        json!({"idle_timeout_s": 604_801}),
        json!({"ttl_s": 0}),
        json!({"image": "'; DROP TABLE sandboxes; --"}),
        json!({"image": "../../etc/passwd"}),
        json!({"image": "Debian:Latest"}),
        json!({"repo": "../../etc"}),
        json!({"repo": "--upload-pack=touch /tmp/pwned"}),
        json!({"repo": "https://github.com/o/r", "branch": "../../etc"}),
        json!({"repo": "https://github.com/o/r", "branch": "'; DROP TABLE sandboxes; --"}),
        json!({"branch": "main"}),
        json!({"env": {"'; DROP TABLE sandboxes; --": "x"}}),
        json!({"env": {"WARREN_SANDBOX_ID": "sbx-other"}}),
        json!({"env": {"A": long_value}}),
        json!({"env": many}),
        json!({"network": {"mode": "allow", "cidrs": ["../../etc"]}}),
        json!({"network": {"mode": "everything"}}),
    ] {
        let reply = stack.post("/v1/sandboxes", &alice.key, body.clone())?;
        ensure!(
            reply.status == 400 || reply.status == 422 || reply.status == 413,
            "{body}: {reply:?}"
        );
        let code = reply.error_code();
        ensure!(
            code == "invalid_request" || code == "payload_too_large",
            "{body}: {reply:?}"
        );
        check_error(&reply, reply.status, &code)?;
    }

    // Bad ids: every one is a plain 404, like an unknown sandbox.
    for path in [
        "/v1/sandboxes/..%2F..%2Fetc%2Fpasswd",
        "/v1/sandboxes/'%3B%20DROP%20TABLE%20sandboxes%3B%20--",
        "/v1/sandboxes/SBX-UPPER",
        "/v1/sandboxes/sbx-",
        "/v1/sandboxes/%00",
        &format!("/v1/sandboxes/{id}x"),
        &format!("/v1/sandboxes/{}", "a".repeat(300)),
    ] {
        let reply = stack.get(path, &alice.key)?;
        check_error(&reply, 404, "not_found").with_context(|| path.to_owned())?;
        let reply = stack.delete(path, &alice.key)?;
        check_error(&reply, 404, "not_found").with_context(|| path.to_owned())?;
    }
    for path in [
        "/v1/ssh-keys/'%3B%20DROP",
        "/v1/api-keys/..%2Fx",
        "/v1/nothing-here",
    ] {
        let reply = stack.delete(path, &alice.key)?;
        check_error(&reply, 404, "not_found").with_context(|| path.to_owned())?;
    }
    let reply = stack.call(
        "PUT",
        &format!("/v1/sandboxes/{id}"),
        Some(&alice.key),
        None,
    )?;
    check_error(&reply, 405, "method_not_allowed")?;

    // Listing limits and cursors.
    for query in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=abc",
        "limit=99999999999",
        "cursor=garbage",
        "cursor=1.'%3B%20DROP",
        "bogus=1",
    ] {
        let reply = stack.get(&format!("/v1/sandboxes?{query}"), &alice.key)?;
        check_error(&reply, 400, "invalid_request").with_context(|| query.to_owned())?;
    }

    // Accounts and keys.
    for name in ["'; DROP TABLE users; --", "../../etc", "", "a b"] {
        let reply = stack.post("/v1/users", &stack.admin, json!({"name": name}))?;
        check_error(&reply, 422, "invalid_request").with_context(|| name.to_owned())?;
    }
    let reply = stack.post("/v1/users", &stack.admin, json!({"name": "alice"}))?;
    check_error(&reply, 409, "conflict")?;
    for key in ["ssh-ed25519 '; DROP TABLE", "not a key", ""] {
        let reply = stack.post(
            "/v1/ssh-keys",
            &alice.key,
            json!({"name": "x", "public_key": key}),
        )?;
        check_error(&reply, 422, "invalid_request").with_context(|| key.to_owned())?;
    }

    // No credentials, or wrong ones.
    check_error(
        &stack.call("GET", "/v1/sandboxes", None, None)?,
        401,
        "unauthorized",
    )?;
    let fake = format!("wk_{}", "A".repeat(43));
    check_error(&stack.get("/v1/sandboxes", &fake)?, 401, "unauthorized")?;
    check_error(
        &stack.get("/v1/sandboxes", "'; DROP TABLE api_keys; --")?,
        401,
        "unauthorized",
    )?;

    // Nothing changed.
    ensure!(
        stack.sandbox_states(&alice.key)? == before,
        "the sandboxes changed"
    );
    ensure!(stack.state_of(&alice.key, &id)? == "running");
    let users_after = stack.rt.block_on(stack.store.list_users())?;
    ensure!(users_after == users_before, "the users changed");
    let keys = stack.get("/v1/ssh-keys", &alice.key)?;
    ensure!(
        keys.json()["ssh_keys"].as_array().map(Vec::len) == Some(1),
        "{keys:?}"
    );
    Ok(())
}

#[test]
fn api_keys_are_shown_once_listed_by_prefix_and_revocable() -> Result<()> {
    let stack = ApiStack::without_runner(FAST_RECONCILE)?;
    let made = stack.post("/v1/users", &stack.admin, json!({"name": "carol"}))?;
    let first = made.json()["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();

    let second = stack.post("/v1/api-keys", &first, json!({"name": "ci"}))?;
    ensure!(second.status == 201, "{second:?}");
    let second_key = second.json()["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    let second_id = second.json()["id"].as_str().context("id")?.to_owned();
    let unnamed = stack.post_empty("/v1/api-keys", &first)?;
    ensure!(unnamed.status == 201, "{unnamed:?}");

    let listed = stack.get("/v1/api-keys", &second_key)?;
    ensure!(listed.status == 200, "{listed:?}");
    ensure!(
        !listed.text.contains(&first) && !listed.text.contains(&second_key),
        "a listing shows a secret"
    );
    let keys = listed.json()["api_keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(keys.len() == 3, "{listed:?}");
    ensure!(
        keys.iter().any(|k| k["id"] == second_id.as_str()
            && second_key.starts_with(k["prefix"].as_str().unwrap_or("-"))),
        "{listed:?}"
    );

    let revoked = stack.delete(&format!("/v1/api-keys/{second_id}"), &first)?;
    ensure!(revoked.status == 204, "{revoked:?}");
    check_error(
        &stack.get("/v1/sandboxes", &second_key)?,
        401,
        "unauthorized",
    )?;
    let ok = stack.get("/v1/api-keys", &first)?;
    ensure!(ok.status == 200, "{ok:?}");
    let entry = ok.json()["api_keys"]
        .as_array()
        .and_then(|a| a.iter().find(|k| k["id"] == second_id.as_str()).cloned())
        .context("revoked key listed")?;
    ensure!(entry["revoked_at"].is_i64(), "{entry}");
    Ok(())
}

#[test]
fn an_address_guessing_api_keys_is_slowed_down() -> Result<()> {
    let stack = ApiStack::without_runner(FAST_RECONCILE)?;
    let guess = format!("wk_{}", "B".repeat(43));
    let mut refused = None;
    for i in 0..40 {
        let reply = stack.get("/v1/sandboxes", &guess)?;
        if reply.status == 429 {
            refused = Some(i);
            check_error(&reply, 429, "too_many_requests")?;
            break;
        }
        check_error(&reply, 401, "unauthorized")?;
    }
    ensure!(refused == Some(30), "429 after {refused:?} failures");
    // The address is blocked even with a good key, for the rest of the minute.
    let reply = stack.get("/v1/sandboxes", &stack.admin)?;
    check_error(&reply, 429, "too_many_requests")?;
    // Routes without authentication still answer.
    let health = stack.call("GET", "/healthz", None, None)?;
    ensure!(health.status == 200, "{health:?}");
    Ok(())
}

/// Every `"$ref"` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_openapi_document_is_generated_valid_and_lists_every_route() -> Result<()> {
    let stack = ApiStack::without_runner(FAST_RECONCILE)?;
    let served = stack.call("GET", "/v1/openapi.json", None, None)?;
    ensure!(served.status == 200, "{served:?}");
    let doc = served.json();
    let generated = serde_json::to_value(warren_gateway::api::openapi())?;
    ensure!(
        doc == generated,
        "the served document is not the generated one"
    );
    ensure!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    ensure!(doc["info"]["title"] == "Warren", "{}", doc["info"]);
    ensure!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"] == "bearer",
        "{}",
        doc["components"]
    );

    // Every route the API has, and nothing else.
    let expected = [
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/v1/openapi.json"),
        ("post", "/v1/users"),
        ("get", "/v1/runners"),
        ("post", "/v1/sandboxes"),
        ("get", "/v1/sandboxes"),
        ("get", "/v1/sandboxes/{id}"),
        ("delete", "/v1/sandboxes/{id}"),
        ("post", "/v1/sandboxes/{id}/stop"),
        ("post", "/v1/sandboxes/{id}/start"),
        ("post", "/v1/sandboxes/{id}/keepalive"),
        ("post", "/v1/sandboxes/{id}/token"),
        ("get", "/v1/sandboxes/{id}/events"),
        ("get", "/v1/sandboxes/{id}/ssh-config"),
        ("get", "/v1/sandboxes/{id}/sessions"),
        ("get", "/v1/sessions/{id}/recording"),
        ("post", "/v1/sandboxes/{id}/shares"),
        ("get", "/v1/sandboxes/{id}/shares"),
        ("delete", "/v1/sandboxes/{id}/shares/{user}"),
        ("post", "/v1/sandboxes/{id}/pull-requests"),
        ("post", "/v1/sandboxes/{id}/pull-requests/{number}/merge"),
        ("post", "/v1/sandboxes/{id}/snapshots"),
        ("post", "/v1/sandboxes/{id}/fork"),
        ("get", "/v1/snapshots"),
        ("get", "/v1/snapshots/{id}"),
        ("delete", "/v1/snapshots/{id}"),
        ("get", "/v1/host-keys"),
        ("post", "/v1/ssh-keys"),
        ("get", "/v1/ssh-keys"),
        ("delete", "/v1/ssh-keys/{id}"),
        ("post", "/v1/api-keys"),
        ("get", "/v1/api-keys"),
        ("delete", "/v1/api-keys/{id}"),
    ];
    let paths = doc["paths"].as_object().context("paths")?;
    let mut listed = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().context("path item")? {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            listed.push((method.clone(), path.clone()));
            // Valid enough to use: responses given, path parameters declared.
            ensure!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
            if path.contains("{id}") {
                let declared = op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["name"] == "id" && p["in"] == "path" && p["required"] == true)
                });
                ensure!(declared, "{method} {path}: {{id}} is not declared");
            }
            ensure!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path}: no tag"
            );
        }
    }
    let mut ids: Vec<&str> = paths
        .values()
        .filter_map(Value::as_object)
        .flat_map(|item| item.values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    ensure!(
        ids.len() == count && count == expected.len(),
        "operation ids: {ids:?}"
    );
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    want.sort();
    listed.sort();
    ensure!(listed == want, "listed {listed:?}\nexpected {want:?}");

    // Every reference resolves.
    let mut found = Vec::new();
    refs(&doc, &mut found);
    ensure!(!found.is_empty(), "no schemas referenced");
    for r in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .with_context(|| format!("unexpected $ref {r}"))?;
        ensure!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {r}"
        );
    }

    // And the server really has each listed route (an unknown id, not an unknown
    // route; the method is allowed).
    let unknown = SandboxId::generate();
    for (method, path) in &listed {
        let path = path.replace("{id}", unknown.as_str());
        let reply = stack.call(&method.to_uppercase(), &path, Some(&stack.admin), None)?;
        ensure!(
            reply.status != 405 && !reply.text.contains("route not found"),
            "{method} {path} is listed but not served: {reply:?}"
        );
    }
    Ok(())
}
