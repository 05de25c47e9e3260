//! A repository's `devcontainer.json`, read as the spec reads it (JSON with
//! comments and trailing commas) into typed settings, with every top-level key
//! classified as honoured, ignored (with why) or refused (it would weaken the
//! sandbox's wall, or needs what Warren does not do yet).
//!
//! Pure: no I/O, nothing run. The file is tenant-controlled input, so it is bounded
//! ([`MAX_FILE_BYTES`]) and only ever parsed here; its commands run later, inside the
//! sandbox, as its session user — never on the runner host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod dockerfile;

/// Where the file may be, in the order the spec looks.
pub const PATHS: [&str; 2] = [".devcontainer/devcontainer.json", ".devcontainer.json"];
/// The largest file read; real ones are a few KB.
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// Why a file was not used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("devcontainer.json is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    /// Bad JSONC, or a key of the wrong type; `line` is 1-based.
    #[error("devcontainer.json line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
}

/// A lifecycle command in any of the spec's three forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// Run by a shell (`sh -c`).
    Shell(String),
    /// Run as is, no shell.
    Args(Vec<String>),
    /// Named commands; the spec runs them in parallel, Warren one after another in
    /// name order (simpler to report, and the output does not interleave).
    Named(BTreeMap<String, Single>),
}

/// One command of the object form: a string or an argument list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Single {
    Shell(String),
    Args(Vec<String>),
}

impl Command {
    /// The argument vectors to run, in order, each with its name for reports
    /// (empty for the string and array forms). Empty commands are dropped.
    pub fn argvs(&self) -> Vec<(String, Vec<String>)> {
        let one = |name: &str, s: &Single| match s {
            Single::Shell(line) if line.trim().is_empty() => None,
            Single::Shell(line) => Some((
                name.to_owned(),
                vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()],
            )),
            Single::Args(args) if args.is_empty() => None,
            Single::Args(args) => Some((name.to_owned(), args.clone())),
        };
        match self {
            Command::Shell(line) => one("", &Single::Shell(line.clone())).into_iter().collect(),
            Command::Args(args) => one("", &Single::Args(args.clone())).into_iter().collect(),
            Command::Named(map) => map.iter().filter_map(|(name, s)| one(name, s)).collect(),
        }
    }

    fn strings_mut(&mut self) -> Vec<&mut String> {
        fn single(s: &mut Single) -> Vec<&mut String> {
            match s {
                Single::Shell(line) => vec![line],
                Single::Args(args) => args.iter_mut().collect(),
            }
        }
        match self {
            Command::Shell(line) => vec![line],
            Command::Args(args) => args.iter_mut().collect(),
            Command::Named(map) => map.values_mut().flat_map(single).collect(),
        }
    }
}

/// The lifecycle steps, in the order they run.
pub const CREATE_STEPS: [&str; 3] = [
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
];
/// The step that runs at every start, the first included.
pub const START_STEP: &str = "postStartCommand";

/// A port to forward: `3000` or `"host:port"` (kept as written).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Port {
    Number(u16),
    Named(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PortAttributes {
    pub label: Option<String>,
}

/// `hostRequirements`: `memory` as the spec writes it (`"4gb"`, `"512mb"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct HostRequirements {
    pub cpus: Option<u32>,
    pub memory: Option<String>,
}

impl HostRequirements {
    /// `memory` in MiB, if it is a size Warren reads (`tb`/`gb`/`mb`/`kb`, or
    /// bytes); fractions are allowed (`"1.5gb"`).
    pub fn memory_mb(&self) -> Option<u64> {
        let text = self.memory.as_deref()?.trim().to_ascii_lowercase();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().ok()?;
        let mb = match unit.trim() {
            "tb" => number * 1024.0 * 1024.0,
            "gb" => number * 1024.0,
            "mb" => number,
            "kb" => number / 1024.0,
            "" | "b" => number / (1024.0 * 1024.0),
            _ => return None,
        };
        // Bounded, so the cast cannot overflow; below 1 MiB means nothing useful.
        (mb.is_finite() && (1.0..1e12).contains(&mb)).then_some(mb as u64)
    }
}

/// The keys Warren acts on, typed. Others are only classified ([`Report`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DevContainer {
    pub image: Option<String>,
    pub container_env: BTreeMap<String, String>,
    /// `null` unsets a variable for sessions.
    pub remote_env: BTreeMap<String, Option<String>>,
    pub remote_user: Option<String>,
    pub container_user: Option<String>,
    pub workspace_folder: Option<String>,
    pub on_create_command: Option<Command>,
    pub update_content_command: Option<Command>,
    pub post_create_command: Option<Command>,
    pub post_start_command: Option<Command>,
    pub forward_ports: Vec<Port>,
    pub ports_attributes: BTreeMap<String, PortAttributes>,
    pub host_requirements: Option<HostRequirements>,
    pub build: Option<BuildSpec>,
    /// The old spelling of `build.dockerfile`.
    #[serde(rename = "dockerFile")]
    pub docker_file: Option<String>,
    /// The old spelling of `build.context`.
    pub context: Option<String>,
}

/// `build`: paths relative to the devcontainer.json's folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BuildSpec {
    pub dockerfile: Option<String>,
    pub context: Option<String>,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

impl DevContainer {
    /// The command of lifecycle step `step` (a name from [`CREATE_STEPS`] or
    /// [`START_STEP`]).
    pub fn step(&self, step: &str) -> Option<&Command> {
        match step {
            "onCreateCommand" => self.on_create_command.as_ref(),
            "updateContentCommand" => self.update_content_command.as_ref(),
            "postCreateCommand" => self.post_create_command.as_ref(),
            "postStartCommand" => self.post_start_command.as_ref(),
            _ => None,
        }
    }
}

/// The most ports forwarded from one file.
pub const MAX_PORTS: usize = 32;

/// A port the file asks to forward, with its `portsAttributes` label (made plain:
/// letters, digits, spaces and `-_./`, at most 40 characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub port: u16,
    pub label: Option<String>,
}

impl DevContainer {
    /// `forwardPorts` Warren can forward (numbers, or `localhost:N` and
    /// `127.0.0.1:N`), at most [`MAX_PORTS`], and what it left out (another host's
    /// port, such as a Compose service's, or port 0).
    pub fn forwards(&self) -> (Vec<Forward>, Vec<String>) {
        let mut kept: Vec<Forward> = Vec::new();
        let mut skipped = Vec::new();
        for port in &self.forward_ports {
            let number = match port {
                Port::Number(n) => Some(*n),
                Port::Named(text) => text
                    .strip_prefix("localhost:")
                    .or_else(|| text.strip_prefix("127.0.0.1:"))
                    .and_then(|n| n.parse().ok()),
            };
            let shown = match port {
                Port::Number(n) => n.to_string(),
                Port::Named(text) => plain(text, 64),
            };
            match number {
                Some(n) if n > 0 && kept.len() < MAX_PORTS => {
                    if kept.iter().all(|f| f.port != n) {
                        let label = self
                            .ports_attributes
                            .get(&n.to_string())
                            .and_then(|a| a.label.as_deref())
                            .map(|l| plain(l, 40))
                            .filter(|l| !l.is_empty());
                        kept.push(Forward { port: n, label });
                    }
                }
                _ => skipped.push(shown),
            }
        }
        (kept, skipped)
    }

    /// What to build, if the file builds its image (`build.dockerfile`, or the
    /// old top-level `dockerFile`) and names no `image`.
    pub fn build_spec(&self) -> Option<BuildSpec> {
        if self.image.is_some() {
            return None;
        }
        let mut spec = self.build.clone().unwrap_or_default();
        spec.dockerfile = spec.dockerfile.or_else(|| self.docker_file.clone());
        spec.context = spec.context.or_else(|| self.context.clone());
        spec.dockerfile.is_some().then_some(spec)
    }

    /// `workspaceFolder` with its variables replaced (`${containerWorkspaceFolder}`
    /// in it means `/workspace`).
    pub fn workspace_folder(&self, cx: &Context<'_>) -> Option<String> {
        let none = BTreeMap::new();
        let folder = self.workspace_folder.as_deref()?;
        let folder = substitute(folder, cx, &none);
        Some(folder.trim_end_matches('/').to_owned()).filter(|f| !f.is_empty())
    }
}

/// `text` with only letters, digits, spaces and `-_./:` kept, at most `max`
/// characters: tenant text bound for terminals and config files.
pub fn plain(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || " -_./:".contains(*c))
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// What happens to a top-level key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    Honoured,
    /// Harmless, but Warren does nothing with it.
    Ignored(&'static str),
    /// Never applied: it would weaken the wall, or needs what Warren lacks.
    Refused(&'static str),
}

/// What happens to each top-level key, by name. Unknown keys are ignored.
pub fn treatment(key: &str) -> Treatment {
    use Treatment::*;
    const WALL: &str = "it would weaken the sandbox's isolation";
    match key {
        "image"
        | "containerEnv"
        | "remoteEnv"
        | "onCreateCommand"
        | "updateContentCommand"
        | "postCreateCommand"
        | "postStartCommand"
        | "workspaceFolder"
        | "hostRequirements"
        | "forwardPorts"
        | "portsAttributes" => Honoured,
        // uid 0 is refused in `parse` (and by the image's accounts, later),
        // whatever this says.
        "remoteUser" | "containerUser" => Honoured,
        "privileged" | "capAdd" | "securityOpt" | "runArgs" | "mounts" | "workspaceMount" => {
            Refused(WALL)
        }
        "appPort" => Refused("it would publish ports on the runner host; use forwardPorts"),
        "initializeCommand" => {
            Refused("it runs on the host, and Warren runs nothing of a repository's there")
        }
        // Built only where the runner allows builds (`crate::devbuild`).
        "build" | "dockerFile" | "context" => Honoured,
        "features" => Refused(
            "features are not installed: they fetch code from registries while building, and \
             builds here have no network; install the tools in the Dockerfile or a lifecycle \
             command",
        ),
        "dockerComposeFile" | "service" | "runServices" => {
            Refused("Docker Compose is not supported")
        }
        "otherPortsAttributes" => Ignored("only the listed ports are forwarded"),
        "postAttachCommand" => {
            Ignored("Warren has no attach step; postStartCommand runs at every start")
        }
        "waitFor" => Ignored("a create waits for every create-time command"),
        "name" => Ignored("Warren names sandboxes itself"),
        "customizations" | "$schema" => Ignored("editor settings"),
        "overrideCommand" | "shutdownAction" | "init" => {
            Ignored("the sandbox's agent is its main process")
        }
        "userEnvProbe" | "updateRemoteUserUID" => Ignored("not applicable to Warren's sessions"),
        _ => Ignored("not a key Warren knows"),
    }
}

/// A key Warren does not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

/// What was read and how each key is treated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub honoured: Vec<String>,
    pub ignored: Vec<Skipped>,
    pub refused: Vec<Skipped>,
}

impl Report {
    /// One line per ignored or refused key, for a sandbox's events.
    pub fn lines(&self) -> Vec<String> {
        let refused = self
            .refused
            .iter()
            .map(|s| format!("devcontainer: {} refused: {}", shown_key(&s.key), s.reason));
        let ignored = self
            .ignored
            .iter()
            .map(|s| format!("devcontainer: {} ignored: {}", shown_key(&s.key), s.reason));
        refused.chain(ignored).collect()
    }
}

/// A key as an event shows it: a name as it is, anything else (the file's
/// author chose it) quoted and escaped, so that it cannot pass for another note
/// (`forwardPorts 22, …` read back as forwards) or carry lines of its own.
fn shown_key(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// Where the values of `${…}` come from.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The create request's env: `${localEnv:…}` reads only this, never the
    /// runner's or gateway's own environment.
    pub local_env: &'a BTreeMap<String, String>,
    /// The image's own environment (`ENV` lines), for `${containerEnv:PATH}`.
    pub image_env: &'a BTreeMap<String, String>,
    /// Where the repository is in the sandbox.
    pub workspace: &'a str,
    /// The repository's name (the URL's last part without `.git`), for
    /// `${localWorkspaceFolderBasename}`.
    pub repo_name: &'a str,
}

/// Parses `text`, classifies its keys and refuses uid 0; variables are left for
/// [`DevContainer::resolve`] (the image's environment is known only later).
pub fn parse(text: &str) -> Result<(DevContainer, Report), Error> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Error::TooLarge);
    }
    let options = jsonc_parser::ParseOptions::default();
    let syntax = |e: jsonc_parser::errors::ParseError| Error::Syntax {
        line: e.line_display(),
        column: e.column_display(),
        message: e.kind().to_string(),
    };
    // Twice: once for the keys, once typed (a wrong type is reported with its line).
    let keys: BTreeMap<String, serde::de::IgnoredAny> =
        jsonc_parser::parse_to_serde_value(text, &options).map_err(syntax)?;
    let mut dc: DevContainer =
        jsonc_parser::parse_to_serde_value(text, &options).map_err(syntax)?;
    let mut report = Report::default();
    for key in keys.keys() {
        match treatment(key) {
            Treatment::Honoured => report.honoured.push(key.clone()),
            Treatment::Ignored(reason) => report.ignored.push(Skipped {
                key: key.clone(),
                reason: reason.to_owned(),
            }),
            Treatment::Refused(reason) => report.refused.push(Skipped {
                key: key.clone(),
                reason: reason.to_owned(),
            }),
        }
    }
    for (key, user) in [
        ("remoteUser", &mut dc.remote_user),
        ("containerUser", &mut dc.container_user),
    ] {
        if user.as_deref().is_some_and(is_root) {
            *user = None;
            report.honoured.retain(|k| k != key);
            report.refused.push(Skipped {
                key: key.to_owned(),
                reason: "sessions never run as root (uid 0): root in the container is one \
                         kernel bug from the host; the sandbox's own user is used"
                    .to_owned(),
            });
        }
    }
    Ok((dc, report))
}

/// `root`, `0` or `0:<group>`, `root:<group>`.
fn is_root(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or(user).trim();
    name == "root" || name.parse::<u64>() == Ok(0)
}

impl DevContainer {
    /// Substitutes the variables of every honoured value: `${localEnv:…}` from
    /// the request's env, `${containerEnv:…}` from the image's env, the request's
    /// and `containerEnv` (in that order, later wins), the workspace folder.
    pub fn resolve(&mut self, cx: &Context<'_>) {
        // containerEnv may not refer to the container's env (the spec's rule).
        let none = BTreeMap::new();
        for value in self.container_env.values_mut() {
            *value = substitute(value, cx, &none);
        }
        let mut container_env = cx.image_env.clone();
        container_env.extend(cx.local_env.clone());
        container_env.extend(self.container_env.clone());
        resolve_rest(self, cx, &container_env);
    }
}

fn resolve_rest(dc: &mut DevContainer, cx: &Context<'_>, container_env: &BTreeMap<String, String>) {
    let sub = |s: &mut String| *s = substitute(s, cx, container_env);
    dc.remote_env.values_mut().flatten().for_each(sub);
    dc.image.iter_mut().for_each(sub);
    dc.remote_user.iter_mut().for_each(sub);
    dc.container_user.iter_mut().for_each(sub);
    for command in [
        &mut dc.on_create_command,
        &mut dc.update_content_command,
        &mut dc.post_create_command,
        &mut dc.post_start_command,
    ]
    .into_iter()
    .flatten()
    {
        command.strings_mut().into_iter().for_each(sub);
    }
}

/// Replaces `${localEnv:NAME[:default]}`, `${containerEnv:NAME[:default]}`,
/// `${containerWorkspaceFolder}` and `${containerWorkspaceFolderBasename}` in
/// `text`; anything else in `${…}` is left as written.
pub fn substitute(
    text: &str,
    cx: &Context<'_>,
    container_env: &BTreeMap<String, String>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &after[..end];
        match resolve(inner, cx, container_env) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn resolve(
    inner: &str,
    cx: &Context<'_>,
    container_env: &BTreeMap<String, String>,
) -> Option<String> {
    let lookup = |env: &BTreeMap<String, String>, spec: &str| {
        let (name, default) = spec.split_once(':').unwrap_or((spec, ""));
        env.get(name).cloned().unwrap_or_else(|| default.to_owned())
    };
    if let Some(spec) = inner.strip_prefix("localEnv:") {
        return Some(lookup(cx.local_env, spec));
    }
    if let Some(spec) = inner.strip_prefix("env:") {
        return Some(lookup(cx.local_env, spec));
    }
    if let Some(spec) = inner.strip_prefix("containerEnv:") {
        return Some(lookup(container_env, spec));
    }
    match inner {
        "localWorkspaceFolderBasename" => Some(cx.repo_name.to_owned()),
        "containerWorkspaceFolder" => Some(cx.workspace.to_owned()),
        "containerWorkspaceFolderBasename" => Some(
            cx.workspace
                .rsplit('/')
                .find(|s| !s.is_empty())
                .unwrap_or("")
                .to_owned(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
