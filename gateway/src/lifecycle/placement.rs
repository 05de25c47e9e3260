//! Where a sandbox goes: the online runner with room for it (by what each runner
//! says it has, and what its live sandboxes take), or a refusal saying why none fits.

use warren_protocol::{Request, Response as RunnerResponse, RunnerCapacity};
use warren_store::{RunnerId, RunnerUsage, StoreError};

use super::{Error, ErrorCode, Lifecycle, Result};

/// What a new sandbox asks of a runner.
#[derive(Debug, Clone, Copy)]
pub(super) struct Demand {
    /// How many sandboxes (a fork asks for several at once); the other fields are
    /// their total, and the CPUs of the largest.
    pub sandboxes: u64,
    pub memory_mb: u64,
    pub millicpus: u32,
    pub disk: Disk,
}

/// The disk a sandbox asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disk {
    /// None new: a stopped sandbox's disk is counted while it is stopped.
    Held,
    /// The runner's default quota, if it has one.
    Default,
    /// This quota in MiB; only a runner that enforces quotas can take it.
    Asks(u64),
}

impl Disk {
    /// The quota a new sandbox gets on a runner of `capacity` (`None`: none).
    fn quota(self, capacity: &RunnerCapacity) -> Option<u64> {
        match self {
            Disk::Held => None,
            Disk::Default => capacity.default_disk_mb,
            Disk::Asks(mb) => Some(mb),
        }
    }
}

/// Why a runner cannot take a sandbox, for the error message; `None` when it can.
fn misfit(
    name: &str,
    capacity: &RunnerCapacity,
    usage: RunnerUsage,
    demand: Demand,
) -> Option<String> {
    if let Some(max) = capacity.max_sandboxes
        && usage.sandboxes.saturating_add(demand.sandboxes) > u64::from(max)
    {
        if demand.sandboxes > 1 {
            return Some(format!(
                "{name} holds {} of its maximum of {max} sandboxes, {} more do not fit",
                usage.sandboxes, demand.sandboxes
            ));
        }
        return Some(format!("{name} holds its maximum of {max} sandboxes"));
    }
    if demand.millicpus > capacity.millicpus {
        return Some(format!(
            "{name} has {} CPUs, this sandbox asks for {}",
            f64::from(capacity.millicpus) / 1000.0,
            f64::from(demand.millicpus) / 1000.0
        ));
    }
    let free = capacity.memory_mb.saturating_sub(usage.memory_mb);
    if demand.memory_mb > free {
        return Some(format!(
            "{name} has {free} MiB of {} MiB free for sandboxes, this one asks for {} MiB",
            capacity.memory_mb, demand.memory_mb
        ));
    }
    let disk = demand.disk.quota(capacity)?;
    let Some(total) = capacity.disk_mb else {
        return Some(format!(
            "{name} enforces no disk quota (disk_mb), so it cannot take one"
        ));
    };
    let free = total.saturating_sub(usage.disk_mb);
    if disk > free {
        return Some(format!(
            "{name} has {free} MiB of {total} MiB of disk free for sandboxes, this one \
             asks for {disk} MiB"
        ));
    }
    None
}

/// What `runner` has room for: its answer to `capacity`, remembered a while. A
/// runner too old to answer gets the stored sandbox count as its only limit.
async fn runner_capacity(lc: &Lifecycle, runner: &warren_store::Runner) -> RunnerCapacity {
    const REMEMBER: std::time::Duration = std::time::Duration::from_secs(30);
    if let Some((at, capacity)) = lc.capacities().get(&runner.id)
        && at.elapsed() < REMEMBER
    {
        return *capacity;
    }
    match lc.hub.control(&runner.id, &Request::Capacity).await {
        Ok(RunnerResponse::Capacity(capacity)) => {
            lc.capacities()
                .insert(runner.id.clone(), (std::time::Instant::now(), capacity));
            capacity
        }
        // Not remembered: the next create asks again.
        _ => RunnerCapacity {
            memory_mb: u64::MAX,
            millicpus: u32::MAX,
            max_sandboxes: Some(runner.capacity),
            ..RunnerCapacity::default()
        },
    }
}

/// The online runner with room for `demand` whose live sandboxes take the least
/// memory, and the disk quota the sandbox gets there; a 503 saying why none fits
/// otherwise.
pub(super) async fn pick_runner(
    lc: &Lifecycle,
    demand: Demand,
) -> Result<(RunnerId, Option<u64>), Error> {
    let mut online = lc.hub.online_runners();
    if online.is_empty() {
        return Err(Error::new(ErrorCode::NoRunner, "no runner is online"));
    }
    online.sort();
    let usage: std::collections::HashMap<RunnerId, RunnerUsage> =
        lc.store.runner_usage().await?.into_iter().collect();
    let mut best: Option<(u64, RunnerId, Option<u64>)> = None;
    let mut reasons = Vec::new();
    for id in online {
        let Ok(runner) = lc.store.get_runner(&id).await else {
            continue;
        };
        let used = usage.get(&id).copied().unwrap_or_default();
        let capacity = runner_capacity(lc, &runner).await;
        if let Some(reason) = misfit(&runner.name, &capacity, used, demand) {
            reasons.push(reason);
            continue;
        }
        if best.as_ref().is_none_or(|(m, _, _)| used.memory_mb < *m) {
            best = Some((used.memory_mb, id, demand.disk.quota(&capacity)));
        }
    }
    best.map(|(_, id, disk)| (id, disk)).ok_or_else(|| {
        Error::new(
            ErrorCode::NoCapacity,
            format!(
                "no runner has room for this sandbox: {}",
                reasons.join("; ")
            ),
        )
    })
}

/// A 503 `no_capacity` unless `runner` has room for `demand` (starting a stopped
/// sandbox again: stopped ones take no room while they are stopped).
pub(super) async fn room_on(
    lc: &Lifecycle,
    runner: &RunnerId,
    demand: Demand,
) -> Result<(), Error> {
    let record = match lc.store.get_runner(runner).await {
        Ok(record) => record,
        Err(StoreError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let used = lc
        .store
        .runner_usage()
        .await?
        .into_iter()
        .find(|(id, _)| id == runner)
        .map(|(_, u)| u)
        .unwrap_or_default();
    let capacity = runner_capacity(lc, &record).await;
    match misfit(&record.name, &capacity, used, demand) {
        None => Ok(()),
        Some(reason) => Err(Error::new(
            ErrorCode::NoCapacity,
            format!("the sandbox's runner has no room for it now: {reason}"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn disk_quotas_are_counted() {
        let docker = RunnerCapacity {
            memory_mb: 8192,
            millicpus: 2000,
            max_sandboxes: None,
            disk_mb: Some(3072),
            default_disk_mb: Some(512),
        };
        let used = RunnerUsage {
            sandboxes: 1,
            memory_mb: 1024,
            disk_mb: 1536,
        };
        let demand = |disk| Demand {
            sandboxes: 1,
            memory_mb: 1024,
            millicpus: 1000,
            disk,
        };
        assert_eq!(misfit("r", &docker, used, demand(Disk::Asks(1536))), None);
        assert_eq!(misfit("r", &docker, used, demand(Disk::Default)), None);
        let full = misfit("r", &docker, used, demand(Disk::Asks(2048))).unwrap();
        assert!(full.contains("1536 MiB of 3072 MiB of disk free"), "{full}");
        // Starting a stopped sandbox again takes no new disk.
        let packed = RunnerUsage {
            disk_mb: 3072,
            ..used
        };
        assert_eq!(misfit("r", &docker, packed, demand(Disk::Held)), None);
        assert!(misfit("r", &docker, packed, demand(Disk::Default)).is_some());
        // A runner without quotas takes sandboxes that ask for none.
        let process = RunnerCapacity {
            disk_mb: None,
            default_disk_mb: None,
            ..docker
        };
        assert_eq!(misfit("p", &process, used, demand(Disk::Default)), None);
        let refused = misfit("p", &process, used, demand(Disk::Asks(1024))).unwrap();
        assert!(refused.contains("no disk quota"), "{refused}");
    }
}
