//! The floor a Docker create is held to: `docker run --rm IMAGE true`, timed in the
//! same run as what is measured beside it (bench-docker, bench-scale).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::Cmd;

/// `docker run --rm IMAGE true`, timed `n` times; sorted.
pub fn docker_run_floor(image: &str, n: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        Cmd::new("docker")
            .args(["run", "--rm", image, "true"])
            .timeout(Duration::from_secs(60))
            .run()?
            .success()?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times)
}
