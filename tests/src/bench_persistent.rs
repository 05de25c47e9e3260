//! Benchmark figures for persistent sessions (`<sandbox-id>+<name>` logins), measured
//! beside the plain ones in the same run: keystroke echo through a session, and the
//! memory a detached session costs its agent.

use std::thread;
use std::time::Duration;

use anyhow::Result;

use crate::bench::{Endpoint, Server, keystroke_p50_of};
use crate::persistent::as_session;

/// Detached sessions weighed (an agent keeps at most 32).
pub const DETACHED_SESSIONS: usize = 30;

/// [`crate::bench::keystroke_p50`] through a persistent session: the same `cat` on a
/// PTY, started as a new session's program (and ended by the EOF at the end).
pub fn keystroke_p50(s: &impl Endpoint, keys: usize) -> Result<f64> {
    keystroke_p50_of(&as_session(s.client(), "bench-keys"), keys)
}

/// What the agent behind `s` grows by per detached session, in KiB: `n` sessions that
/// each run a `sleep` (not counted: it is the session's program), their clients gone.
/// The agent is the server's own process, or the backend's (runner and agent) behind
/// a gateway.
pub fn detached_session_kib(s: &Server, n: usize) -> Result<f64> {
    let agent_kib = || {
        let m = (s.memory)();
        if m.backend_rss_kib > 0 {
            m.backend_rss_kib
        } else {
            m.rss_kib
        }
    };
    let open = |name: String| -> Result<()> {
        let pty = as_session(s.client(), &name).ssh_on_pty(
            &["-tt"],
            "echo RE''ADY; exec sleep 3600",
            "xterm",
            24,
            80,
        )?;
        pty.expect("READY", Duration::from_secs(20))?;
        // Dropping the terminal kills the client: the session is detached.
        Ok(())
    };
    // One first, not counted: the first session's allocations are the allocator's.
    open("bench-warm".into())?;
    thread::sleep(Duration::from_secs(1));
    let before = agent_kib();
    for i in 0..n {
        open(format!("bench-idle-{i}"))?;
    }
    thread::sleep(Duration::from_secs(2));
    let after = agent_kib();
    Ok(after.saturating_sub(before) as f64 / n as f64)
}
