//! A devcontainer.json's `hostRequirements.cpus` / `memory` as the sandbox's
//! limits. Where the create named no limit (the gateway says which are its own
//! defaults) the requirement becomes the limit, up to what this runner allows (its
//! capacity: the most CPUs one sandbox may have, the memory its sandboxes' limits
//! may add up to); above that the create is refused, saying so. A limit the create
//! named is kept, and a requirement above it is noted with how to ask for more.

use super::Notes;
use crate::devcontainer::DevContainer;
use crate::protocol::{RunnerCapacity, SandboxSpec};
use crate::{Error, Result};

/// The least memory a sandbox gets (the API's floor for a create's `memory_mb`).
const MIN_MEMORY_MB: u64 = 128;

/// The limits the file set (to report to the gateway), if it set any.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    pub millicpus: Option<u32>,
    pub memory_mb: Option<u64>,
}

/// Applies `dc`'s `hostRequirements` to `spec`'s limits.
pub fn apply(
    dc: &DevContainer,
    spec: &mut SandboxSpec,
    allowed: RunnerCapacity,
    notes: &mut Notes,
) -> Result<Chosen> {
    let mut chosen = Chosen::default();
    let Some(wanted) = &dc.host_requirements else {
        return Ok(chosen);
    };
    // 0 CPUs would be no CPU limit at all to the engine.
    let cpus = wanted
        .cpus
        .filter(|&c| c > 0)
        .map(|c| c.saturating_mul(1000));
    if wanted.cpus == Some(0) {
        notes.push(
            "devcontainer: hostRequirements.cpus ignored: 0 is not a number of CPUs".to_owned(),
        );
    }
    let memory = wanted.memory_mb();
    if wanted.memory.is_some() && memory.is_none() {
        notes.push(
            "devcontainer: hostRequirements.memory ignored: not a size Warren reads (\"4gb\", \
             \"512mb\")"
                .to_owned(),
        );
    }
    // As little as a create may name (less would not start the sandbox).
    let memory = match memory {
        Some(m) if m < MIN_MEMORY_MB => {
            notes.push(format!(
                "devcontainer: hostRequirements.memory ignored: less than {MIN_MEMORY_MB} MiB"
            ));
            None
        }
        other => other,
    };
    if let Some(c) = cpus
        && c > allowed.millicpus
    {
        return Err(Error::refused(
            "no_capacity",
            format!(
                "hostRequirements asks for {} CPUs; this runner allows a sandbox at most {}",
                c / 1000,
                cpus_text(allowed.millicpus)
            ),
        ));
    }
    if let Some(m) = memory
        && m > allowed.memory_mb
    {
        return Err(Error::refused(
            "no_capacity",
            format!(
                "hostRequirements asks for {m} MiB of memory; this runner allows at most {} MiB",
                allowed.memory_mb
            ),
        ));
    }
    match (cpus, spec.millicpus) {
        (Some(c), _) if spec.default_cpus => {
            spec.millicpus = Some(c);
            chosen.millicpus = Some(c);
        }
        (Some(c), Some(given)) if c > given => notes.push(format!(
            "devcontainer: hostRequirements asks for {} CPUs, the create gave {}: create it \
             with --cpus {} (a limit the create names wins over the file's)",
            c / 1000,
            cpus_text(given),
            c / 1000
        )),
        _ => {}
    }
    match (memory, spec.memory_mb) {
        (Some(m), _) if spec.default_memory => {
            spec.memory_mb = Some(m);
            chosen.memory_mb = Some(m);
        }
        (Some(m), Some(given)) if m > given => notes.push(format!(
            "devcontainer: hostRequirements asks for {m} MiB of memory, the create gave \
             {given} MiB: create it with --memory-mb {m} (a limit the create names wins over \
             the file's)"
        )),
        _ => {}
    }
    if chosen != Chosen::default() {
        let cpus = spec
            .millicpus
            .map_or("the runner's default".to_owned(), cpus_text);
        let memory = spec
            .memory_mb
            .map_or("the runner's default".to_owned(), |m| format!("{m} MiB"));
        notes.push(format!(
            "devcontainer: limits from hostRequirements: cpus {cpus}, memory {memory}"
        ));
    }
    Ok(chosen)
}

/// Thousandths of a CPU as a person writes them (`1`, `1.5`).
fn cpus_text(millicpus: u32) -> String {
    let whole = f64::from(millicpus) / 1000.0;
    format!("{whole}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devcontainer::HostRequirements;

    fn file(cpus: Option<u32>, memory: Option<&str>) -> DevContainer {
        DevContainer {
            host_requirements: Some(HostRequirements {
                cpus,
                memory: memory.map(str::to_owned),
            }),
            ..DevContainer::default()
        }
    }

    const ALLOWED: RunnerCapacity = RunnerCapacity {
        memory_mb: 8192,
        millicpus: 4000,
        max_sandboxes: None,
        disk_mb: None,
        default_disk_mb: None,
    };

    fn defaults() -> SandboxSpec {
        SandboxSpec {
            millicpus: Some(1000),
            memory_mb: Some(1024),
            default_cpus: true,
            default_memory: true,
            ..SandboxSpec::default()
        }
    }

    #[test]
    fn requirements_replace_defaults_only() {
        let mut notes = Notes::new(None);
        let mut spec = defaults();
        let chosen = apply(
            &file(Some(2), Some("1.5gb")),
            &mut spec,
            ALLOWED,
            &mut notes,
        );
        let notes = notes.into_kept();
        assert_eq!(
            chosen.ok(),
            Some(Chosen {
                millicpus: Some(2000),
                memory_mb: Some(1536)
            })
        );
        assert_eq!((spec.millicpus, spec.memory_mb), (Some(2000), Some(1536)));
        assert!(notes[0].contains("cpus 2, memory 1536 MiB"), "{notes:?}");

        // Named by the create: kept, and the file's wish noted.
        let mut notes = Notes::new(None);
        let mut spec = SandboxSpec {
            default_memory: false,
            ..defaults()
        };
        let chosen = apply(&file(None, Some("2gb")), &mut spec, ALLOWED, &mut notes);
        let notes = notes.into_kept();
        assert_eq!(chosen.ok(), Some(Chosen::default()));
        assert_eq!(spec.memory_mb, Some(1024));
        assert!(notes[0].contains("--memory-mb 2048"), "{notes:?}");
    }

    #[test]
    fn no_cpus_and_too_little_memory_are_ignored() {
        let mut notes = Notes::new(None);
        let mut spec = defaults();
        let chosen = apply(&file(Some(0), Some("1mb")), &mut spec, ALLOWED, &mut notes);
        assert_eq!(chosen.ok(), Some(Chosen::default()));
        assert_eq!((spec.millicpus, spec.memory_mb), (Some(1000), Some(1024)));
        let notes = notes.into_kept();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("cpus ignored: 0"), "{notes:?}");
        assert!(
            notes[1].contains("memory ignored: less than 128 MiB"),
            "{notes:?}"
        );
    }

    #[test]
    fn more_than_the_runner_allows_is_refused() {
        let mut spec = defaults();
        let refused = apply(
            &file(Some(8), None),
            &mut spec,
            ALLOWED,
            &mut Notes::new(None),
        );
        assert!(refused.is_err_and(|e| {
            e.to_string()
                .contains("asks for 8 CPUs; this runner allows a sandbox at most 4")
        }));
        let refused = apply(
            &file(None, Some("16gb")),
            &mut spec,
            ALLOWED,
            &mut Notes::new(None),
        );
        assert!(refused.is_err());
        assert_eq!(spec.millicpus, Some(1000));
    }
}
