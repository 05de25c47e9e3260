//! The floor a Docker create is held to: `docker run --rm IMAGE true`, timed in the
//! same run as what is measured beside it (bench-docker, bench-scale).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::Cmd;

/// `docker run --rm IMAGE true`, timed `n` times one after another; sorted.
pub fn docker_run_floor(image: &str, n: usize) -> Result<Vec<Duration>> {
    let mut times = (0..n)
        .map(|_| docker_run_true(image))
        .collect::<Result<Vec<_>>>()?;
    times.sort();
    Ok(times)
}

/// `docker run --rm IMAGE true`, `n` started at once, each timed from the common
/// start to its own end; sorted. The floor of a burst of cold creates: what the
/// engine does for `n` containers at once on this host.
pub fn docker_run_floor_at_once(image: &str, n: usize) -> Result<Vec<Duration>> {
    let started = Instant::now();
    let mut times = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(move || {
                    docker_run_true(image)?;
                    Ok(started.elapsed())
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| {
                run.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a `docker run` thread panicked")))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    times.sort();
    Ok(times)
}

fn docker_run_true(image: &str) -> Result<Duration> {
    let started = Instant::now();
    Cmd::new("docker")
        .args(["run", "--rm", image, "true"])
        .timeout(Duration::from_secs(60))
        .run()?
        .success()?;
    Ok(started.elapsed())
}
