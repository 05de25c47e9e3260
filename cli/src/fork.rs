//! `warren fork`, `warren snapshot` and `warren snapshots` (issue 26): thin calls
//! of [`warren_client::Client`], shown as a person reads them (sizes in MiB, times
//! as dates and spans); `--json` prints the API's answer as it is.

use warren_api::{ForkSandbox, SnapshotView, TakeSnapshot};
use warren_client::Client;

use crate::show;

/// `warren fork`.
#[derive(clap::Args)]
pub struct ForkArgs {
    /// The sandbox to fork (`sbx-…`); it keeps running, frozen only while its file
    /// system is captured.
    id: String,
    /// How many forks, 1 to 16.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Name each fork's branch `<PREFIX>-<n>` (n from 1) instead of
    /// `warren/<fork-id>`.
    #[arg(long, value_name = "PREFIX")]
    branch_prefix: Option<String>,
    /// Print the API's answer as JSON (each fork's token included) instead.
    #[arg(long)]
    json: bool,
}

/// `warren snapshot`.
#[derive(clap::Args)]
pub struct SnapshotArgs {
    /// The sandbox to snapshot (`sbx-…`); it keeps running.
    id: String,
    /// A name to recognise the snapshot by (at most 128 characters).
    #[arg(long)]
    name: Option<String>,
    /// Print the API's answer as JSON instead.
    #[arg(long)]
    json: bool,
}

/// `warren snapshots [rm <id>]`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SnapshotsArgs {
    #[command(subcommand)]
    action: Option<SnapshotsAction>,
    /// Print the API's JSON (`GET /v1/snapshots`; times in Unix seconds).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum SnapshotsAction {
    /// Delete a snapshot; sandboxes made from it keep running (its storage goes
    /// with the last of them).
    Rm {
        /// The snapshot's id (`snp_…`).
        id: String,
    },
}

pub async fn fork(api: Client, args: ForkArgs) -> anyhow::Result<()> {
    let request = ForkSandbox {
        count: args.count,
        branch_prefix: args.branch_prefix,
    };
    if !args.json {
        eprintln!(
            "forking {} into {}…",
            args.id,
            plural(args.count, "sandbox")
        );
    }
    let forked = api.fork_sandbox(&args.id, &request).await?;
    if args.json {
        return crate::print_json(&forked);
    }
    println!(
        "{} from {} (it was frozen {})",
        plural(forked.sandboxes.len() as u32, "fork"),
        args.id,
        show::millis(forked.frozen_ms)
    );
    println!("{:<18} {:<32} SSH", "ID", "BRANCH");
    for created in &forked.sandboxes {
        let s = &created.sandbox;
        println!(
            "{:<18} {:<32} {}",
            s.id,
            show::printable(s.branch.as_deref().unwrap_or("-")),
            crate::ssh_line(s)
        );
    }
    println!("(their tokens are printed only with --json; your SSH key or API key logs in too)");
    Ok(())
}

pub async fn snapshot(api: Client, args: SnapshotArgs) -> anyhow::Result<()> {
    let snapshot = api
        .create_snapshot(&args.id, &TakeSnapshot { name: args.name })
        .await?;
    if args.json {
        return crate::print_json(&snapshot);
    }
    println!(
        "snapshot {} of {}: {}, the sandbox was frozen {}",
        snapshot.id,
        snapshot.source,
        show::size(snapshot.size_bytes),
        show::millis(snapshot.frozen_ms)
    );
    println!(
        "make a sandbox of it: warren create --snapshot {}",
        snapshot.id
    );
    Ok(())
}

pub async fn snapshots(api: Client, args: SnapshotsArgs) -> anyhow::Result<()> {
    if let Some(SnapshotsAction::Rm { id }) = args.action {
        api.delete_snapshot(&id).await?;
        println!("{id} deleted");
        return Ok(());
    }
    let list = api.snapshots().await?;
    if args.json {
        return crate::print_json(&list);
    }
    let now = show::now();
    println!(
        "{:<22} {:<20} {:<18} {:>10} {:>8}  CREATED",
        "ID", "NAME", "SOURCE", "SIZE", "FROZEN"
    );
    for s in &list.snapshots {
        println!("{}", row(s, now));
    }
    Ok(())
}

/// One line of `warren snapshots`.
fn row(s: &SnapshotView, now: i64) -> String {
    format!(
        "{:<22} {:<20} {:<18} {:>10} {:>8}  {}",
        s.id,
        show::printable(s.name.as_deref().unwrap_or("-")),
        s.source,
        show::size(s.size_bytes),
        show::millis(s.frozen_ms),
        show::when(s.created_at, now)
    )
}

/// `1 fork`, `3 forks`.
fn plural(n: u32, what: &str) -> String {
    match (n, what) {
        (1, _) => format!("1 {what}"),
        (_, "sandbox") => format!("{n} sandboxes"),
        _ => format!("{n} {what}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_as_a_line() {
        let s = SnapshotView {
            id: "snp_0123456789abcdef".into(),
            name: Some("prepared\u{1b}]0;x".into()),
            source: "sbx-7f3a9c".into(),
            owner: "usr_x".into(),
            runner: "rnr_x".into(),
            image: "warren-base:latest".into(),
            repo: None,
            size_bytes: 12 << 20,
            frozen_ms: 120,
            created_at: 1_796_599_628,
        };
        let line = row(&s, 1_796_599_628 + 300);
        assert!(line.contains("prepared\\u001b]0;x"), "{line}");
        assert!(
            line.contains("12.0 MiB") && line.contains("120 ms"),
            "{line}"
        );
        assert!(line.ends_with("2026-12-06 23:27 UTC (5 min ago)"), "{line}");
        assert_eq!(plural(1, "fork"), "1 fork");
        assert_eq!(plural(3, "sandbox"), "3 sandboxes");
    }
}
