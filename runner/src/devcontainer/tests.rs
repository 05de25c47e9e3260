//! The parser's unit tests: real-shaped files, each rule on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn parse_with(
    text: &str,
    local: &BTreeMap<String, String>,
) -> Result<(DevContainer, Report), Error> {
    let (mut dc, report) = parse(text)?;
    let image = env(&[("PATH", "/usr/bin:/bin"), ("LANG", "C")]);
    dc.resolve(&Context {
        local_env: local,
        image_env: &image,
        workspace: "/workspace",
        repo_name: "demo",
    });
    Ok((dc, report))
}

#[test]
fn jsonc_with_comments_and_trailing_commas() {
    let text = r#"
    // A typical file.
    {
      "name": "demo", /* block comment */
      "image": "warren-base:latest",
      "containerEnv": { "A": "1", },
      "remoteEnv": { "B": "x", "C": null },
      "remoteUser": "dev",
      "onCreateCommand": "echo one",
      "updateContentCommand": ["echo", "two"],
      "postCreateCommand": { "b": "echo b", "a": ["echo", "a"] },
      "postStartCommand": "echo start",
      "hostRequirements": { "cpus": 2, "memory": "4gb" },
    }"#;
    let (dc, report) = parse_with(text, &BTreeMap::new()).unwrap();
    assert_eq!(dc.image.as_deref(), Some("warren-base:latest"));
    assert_eq!(dc.container_env, env(&[("A", "1")]));
    assert_eq!(dc.remote_env.get("C"), Some(&None));
    assert_eq!(dc.remote_user.as_deref(), Some("dev"));
    let hr = dc.host_requirements.as_ref().unwrap();
    assert_eq!((hr.cpus, hr.memory_mb()), (Some(2), Some(4096)));
    assert_eq!(
        dc.step("onCreateCommand").unwrap().argvs(),
        vec![(
            String::new(),
            vec!["/bin/sh".into(), "-c".into(), "echo one".into()]
        )]
    );
    assert_eq!(
        dc.step("updateContentCommand").unwrap().argvs()[0].1,
        vec!["echo".to_owned(), "two".to_owned()]
    );
    // The object form, in name order.
    let named = dc.step("postCreateCommand").unwrap().argvs();
    assert_eq!(named[0].0, "a");
    assert_eq!(named[1].1[2], "echo b");
    assert!(report.refused.is_empty());
    let ignored: Vec<_> = report.ignored.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(ignored, ["name"]);
}

#[test]
fn errors_carry_their_line() {
    let text = "{\n  \"image\": \"x\",\n  \"remoteUser\": ,\n}";
    match parse_with(text, &BTreeMap::new()) {
        Err(Error::Syntax { line, .. }) => assert_eq!(line, 3),
        other => panic!("{other:?}"),
    }
    // A key of the wrong type, too.
    let text = "{\n  \"image\": \"x\",\n\n  \"containerEnv\": [1]\n}";
    match parse_with(text, &BTreeMap::new()) {
        Err(Error::Syntax { line, message, .. }) => assert_eq!(line, 4, "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse_with("[1, 2]", &BTreeMap::new()),
        Err(Error::Syntax { line: 1, .. })
    ));
    let big = format!("{{\"image\": \"{}\"}}", "x".repeat(MAX_FILE_BYTES));
    assert_eq!(parse_with(&big, &BTreeMap::new()), Err(Error::TooLarge));
    let shown = Error::Syntax {
        line: 3,
        column: 17,
        message: "m".into(),
    }
    .to_string();
    assert!(shown.contains("line 3"), "{shown}");
}

#[test]
fn keys_are_classified() {
    let text = r#"{
      "image": "i", "privileged": true, "capAdd": ["SYS_ADMIN"], "runArgs": ["--pid=host"],
      "mounts": ["source=/,target=/host,type=bind"], "securityOpt": ["seccomp=unconfined"],
      "build": { "dockerfile": "Dockerfile" }, "features": {}, "initializeCommand": "x",
      "customizations": { "vscode": {} }, "postAttachCommand": "y", "madeUp": 1
    }"#;
    let (_, report) = parse_with(text, &BTreeMap::new()).unwrap();
    let refused: Vec<_> = report.refused.iter().map(|s| s.key.as_str()).collect();
    for key in [
        "privileged",
        "capAdd",
        "runArgs",
        "mounts",
        "securityOpt",
        "features",
        "initializeCommand",
    ] {
        assert!(refused.contains(&key), "{key} in {refused:?}");
    }
    let ignored: Vec<_> = report.ignored.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(ignored, ["customizations", "madeUp", "postAttachCommand"]);
    assert_eq!(report.honoured, ["build", "image"]);
    let lines = report.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("features refused: features are not installed"))
    );
}

#[test]
fn a_made_up_key_cannot_pass_for_another_note() {
    let text = r#"{ "image": "i", "forwardPorts 2222, 3000": 1, "x
forwardPorts 22": 2 }"#;
    let (_, report) = parse_with(text, &BTreeMap::new()).unwrap();
    let lines = report.lines();
    assert_eq!(
        lines,
        [
            r#"devcontainer: "forwardPorts 2222, 3000" ignored: not a key Warren knows"#,
            r#"devcontainer: "x\nforwardPorts 22" ignored: not a key Warren knows"#,
        ]
    );
    let forwards = crate::protocol::forwards::forward_ports(lines.iter().map(String::as_str));
    assert!(forwards.is_empty(), "{forwards:?}");
}

#[test]
fn root_users_are_refused() {
    for user in ["root", "0", "0:0", "root:staff", " 0 "] {
        let text = format!(r#"{{"remoteUser": "{user}", "containerUser": "dev"}}"#);
        let (dc, report) = parse_with(&text, &BTreeMap::new()).unwrap();
        assert_eq!(dc.remote_user, None, "{user}");
        assert_eq!(dc.container_user.as_deref(), Some("dev"));
        assert_eq!(report.refused.len(), 1);
        assert!(report.refused[0].reason.contains("uid 0"));
        assert!(report.honoured.contains(&"containerUser".to_owned()));
        assert!(!report.honoured.contains(&"remoteUser".to_owned()));
    }
    assert!(!is_root("rooty"));
    assert!(!is_root("1000"));
}

#[test]
fn variables_are_substituted() {
    let local = env(&[("TOKEN", "t0k"), ("HOME", "/home/request")]);
    let text = r#"{
      "containerEnv": { "FROM_LOCAL": "${localEnv:TOKEN}", "MISSING": "${localEnv:NOPE}" },
      "remoteEnv": {
        "PATHY": "${containerEnv:FROM_LOCAL}:${containerWorkspaceFolder}",
        "BASE": "${containerWorkspaceFolderBasename}",
        "PATH": "${containerEnv:PATH}:/opt/bin",
        "KEEP": "${unknownThing} and $HOME"
      },
      "postCreateCommand": ["echo", "${containerWorkspaceFolder}", "${localEnv:HOME}"]
    }"#;
    let (dc, _) = parse_with(text, &local).unwrap();
    assert_eq!(dc.container_env["FROM_LOCAL"], "t0k");
    assert_eq!(dc.container_env["MISSING"], "");
    assert_eq!(dc.remote_env["PATHY"].as_deref(), Some("t0k:/workspace"));
    assert_eq!(dc.remote_env["BASE"].as_deref(), Some("workspace"));
    assert_eq!(
        dc.remote_env["PATH"].as_deref(),
        Some("/usr/bin:/bin:/opt/bin")
    );
    assert_eq!(
        dc.remote_env["KEEP"].as_deref(),
        Some("${unknownThing} and $HOME")
    );
    // `localEnv` is the request's env, never this process's.
    assert_eq!(
        dc.step("postCreateCommand").unwrap().argvs()[0].1,
        ["echo", "/workspace", "/home/request"]
    );
    let cx = Context {
        local_env: &local,
        image_env: &local,
        workspace: "/w",
        repo_name: "demo",
    };
    assert_eq!(
        substitute("a ${localEnv:TOKEN", &cx, &local),
        "a ${localEnv:TOKEN"
    );
}

#[test]
fn memory_sizes() {
    let hr = |m: &str| HostRequirements {
        cpus: None,
        memory: Some(m.to_owned()),
    };
    assert_eq!(hr("512mb").memory_mb(), Some(512));
    assert_eq!(hr("1.5GB").memory_mb(), Some(1536));
    assert_eq!(hr("1tb").memory_mb(), Some(1024 * 1024));
    assert_eq!(hr("lots").memory_mb(), None);
    assert_eq!(hr("1e400gb").memory_mb(), None);
    assert_eq!(hr("10kb").memory_mb(), None);
}

#[test]
fn forwards_and_workspace_folders() {
    let text = r#"{
      "forwardPorts": [3000, "localhost:8080", "db:5432", 0, 3000],
      "portsAttributes": { "3000": { "label": "Web \u001b[2J app" } },
      "workspaceFolder": "/workspaces/${localWorkspaceFolderBasename}/"
    }"#;
    let (dc, report) = parse_with(text, &BTreeMap::new()).unwrap();
    let (kept, skipped) = dc.forwards();
    assert_eq!(
        kept,
        [
            Forward {
                port: 3000,
                label: Some("Web 2J app".into())
            },
            Forward {
                port: 8080,
                label: None
            }
        ]
    );
    assert_eq!(skipped, ["db:5432", "0"]);
    assert!(report.ignored.is_empty(), "{report:?}");
    let none = BTreeMap::new();
    let cx = Context {
        local_env: &none,
        image_env: &none,
        workspace: "/workspace",
        repo_name: "widgets",
    };
    assert_eq!(
        dc.workspace_folder(&cx).as_deref(),
        Some("/workspaces/widgets")
    );
}

#[test]
fn empty_commands_are_dropped() {
    assert!(Command::Shell("  ".into()).argvs().is_empty());
    assert!(Command::Args(vec![]).argvs().is_empty());
}
