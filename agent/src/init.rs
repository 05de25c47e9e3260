//! When the agent is a container's PID 1, it must also do init's work: reap orphans
//! (background processes that sessions leave behind) and pass stop signals on.
//!
//! We fork before any thread exists: the parent stays PID 1 and only reaps and
//! forwards signals; the child runs the agent with ordinary `waitpid` semantics, so
//! tokio's own child handling never races a reaper for exit statuses.

/// Returns in the process that should run the agent. As PID 1, that is a forked
/// child; the PID 1 parent never returns from this function.
pub fn become_init_if_pid1() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        return;
    }
    // SAFETY: called from main before any thread is started, so fork is sound.
    let child = unsafe { libc::fork() };
    match child {
        0 => {}
        pid if pid > 0 => reap_forever(pid),
        _ => {
            eprintln!(
                "warren-agent: fork failed ({}); orphans will not be reaped",
                std::io::Error::last_os_error()
            );
        }
    }
}

const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn reap_forever(agent: libc::pid_t) -> ! {
    // SAFETY: signal-set manipulation on a local sigset_t; sigwait below consumes the
    // blocked signals synchronously, so no handler runs in this process.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            // Reap everything that has exited; the agent's exit ends the container.
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == agent {
                    let code = if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    };
                    libc::_exit(code);
                }
            }
            let mut sig = 0;
            if libc::sigwait(&set, &mut sig) == 0 && sig != libc::SIGCHLD {
                libc::kill(agent, sig);
            }
        }
    }
}
