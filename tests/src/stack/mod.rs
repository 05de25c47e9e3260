//! Every stack the tests and benches start, from one builder: [`Stack::builder`].
//!
//! - [`StackBuilder::start`]: the gateway in-process ([`Stack`]), real
//!   `warren-runner` processes joined to it ([`Stack::runner`], as many as a test
//!   asks for), sandboxes made through the tunnel; [`Stack::api`] adds the HTTP API.
//! - [`StackBuilder::docker`]: the same with one runner on the Docker backend
//!   ([`DockerStack`]), skipped outside CI when there is no Docker engine or root.
//! - [`StackBuilder::direct`]: the gateway's front door dialing agents the test
//!   started itself, no runner ([`DirectGateway`]).
//! - [`StackBuilder::served`]: `warren-gateway serve` as a process, set up with
//!   the operator's commands, one process runner and a sandbox made through the
//!   API; the gateway can be killed and started again ([`ServedStack`]).
//! - [`StackBuilder::tier`]: a gateway tier: several `warren-gateway serve`
//!   processes on one PostgreSQL store and Docker runners with a tunnel to each
//!   ([`TierStack`]); gateways can be killed, stopped and started again;
//!   [`StackBuilder::process_tier`]: the same with process-backend runners.
//! - [`StackBuilder::processes`]: `warren-gateway serve` and `warren-runner run` as
//!   processes of the release build, with sandboxes already running
//!   ([`GatewayStack`], for the benches: their memory is the processes' own).
//! - [`StackBuilder::bind`]: the gateway in the caller's own runtime, for async
//!   tests that flood its sockets ([`BoundGateway`]).
//! - [`StackBuilder::up`]: `warren up` as one process (the gateway reaching the
//!   local agents in process, the HTTP API, a warm pool on Docker), or the README's
//!   `scripts/up` ([`UpStack`]).
//! - [`StackBuilder::on_postgres`]: the same stack on a PostgreSQL database;
//!   [`Tier`]: several such gateways on one database, as `warren-gateway serve`
//!   runs a tier.
//!
//! The options are those of the gateway (recording policy, admission limits), which
//! build of the binaries the runners run, and the runner's arguments.

mod api;
mod bound;
mod direct;
mod docker;
mod floor;
mod in_process;
mod processes;
mod served;
mod shared_store;
mod tier;
mod tier_runners;
mod up;

pub use api::{Account, Api, ApiStack, Reply, check_error};
pub use bound::BoundGateway;
pub use direct::{DirectDialer, DirectGateway};
pub use docker::{
    DockerStack, POOL_LABEL, docker, docker_available, docker_host_ip, docker_ok, image,
    network_of, static_agent, unmount_disks,
};
pub use floor::{docker_run_floor, docker_run_floor_at_once};
pub use in_process::{RunnerProc, Stack, console, join_runner, run, sandbox_row};
pub use processes::{Backend, GatewayStack, StackOptions, docker_agent_and_image};
pub use served::{ServedStack, ssh_works_within};
pub use shared_store::{PrivatePostgres, SharedDb, Tier, postgres_schema};
pub use tier::{TierBackend, TierGateway, TierSpec, TierStack};
pub use tier_runners::TierRunner;
pub use up::{Up, UpApi, UpStack, home_for};
use warren_gateway::recordings::RecordingPolicy;
use warren_gateway::server::Options;

use crate::{Client, Profile};

/// What to start: the gateway's options and the build its runners run.
pub struct StackBuilder {
    options: Options,
    profile: Profile,
    /// The store's database when it is PostgreSQL ([`StackBuilder::on_postgres`]).
    postgres: Option<String>,
}

impl Stack {
    /// A stack with the gateway's default options and debug-build runners.
    pub fn builder() -> StackBuilder {
        StackBuilder {
            options: Options::default(),
            profile: Profile::Debug,
            postgres: None,
        }
    }
}

impl StackBuilder {
    /// The gateway records terminal sessions by `policy`.
    pub fn recording(mut self, policy: RecordingPolicy) -> Self {
        self.options.recording = policy;
        self
    }

    /// The gateway records nothing.
    pub fn no_recording(self) -> Self {
        self.recording(RecordingPolicy {
            enabled: false,
            ..RecordingPolicy::default()
        })
    }

    /// The gateway runs with `options` (its recording policy included).
    pub fn gateway(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The runners run the release build of `warren-runner` and `warren-agent`.
    pub fn release(mut self) -> Self {
        self.profile = Profile::Release;
        self
    }

    /// The gateway in-process, without its reconciler; runners are added with
    /// [`Stack::runner`].
    pub fn start(self) -> anyhow::Result<Stack> {
        Stack::start_on(self.options, self.profile, self.postgres.as_deref())
    }

    /// [`StackBuilder::start`] with one Docker runner started with `extra` added to
    /// its arguments, and a user `alice` with a key. `None` when Docker or root is
    /// missing outside CI (the test is then skipped).
    pub fn docker(self, extra: &[&str]) -> anyhow::Result<Option<DockerStack>> {
        DockerStack::start_with(self, extra)
    }

    /// The gateway's front door routing each sandbox to an agent the test started
    /// (or to nowhere: "runner offline"), with its reconciler as `serve` runs it.
    pub fn direct(self) -> anyhow::Result<DirectGateway> {
        DirectGateway::start_with(self.options)
    }

    /// `warren-gateway serve` and a process runner as processes (debug builds),
    /// with a sandbox made through the API that [`ServedStack::client`] reaches.
    /// The gateway's options are those of `serve`.
    pub fn served(self) -> anyhow::Result<ServedStack> {
        served::start()
    }

    /// `gateways` `warren-gateway serve` processes on one PostgreSQL store (a fresh
    /// schema, in the server [`StackBuilder::on_postgres`] names, else in
    /// `WARREN_TEST_POSTGRES_URL`'s) sharing a cluster secret, and `runners` Docker
    /// runners, the n-th joined through gateway n mod `gateways`; returns once
    /// every gateway has a tunnel from every runner. `None` when PostgreSQL, Docker
    /// or root is missing outside CI. The gateways' options are those of `serve`;
    /// the build is the builder's.
    pub fn tier(self, gateways: usize, runners: usize) -> anyhow::Result<Option<TierStack>> {
        TierStack::start(self.tier_spec(gateways, runners, TierBackend::Docker))
    }

    /// [`StackBuilder::tier`] with process-backend runners (no Docker needed),
    /// logging warnings only unless `RUST_LOG` says otherwise: the scale bench's.
    pub fn process_tier(
        self,
        gateways: usize,
        runners: usize,
    ) -> anyhow::Result<Option<TierStack>> {
        TierStack::start(TierSpec {
            log_filter: "warn",
            ..self.tier_spec(gateways, runners, TierBackend::Process)
        })
    }

    fn tier_spec(self, gateways: usize, runners: usize, backend: TierBackend) -> TierSpec {
        TierSpec {
            gateways,
            runners,
            backend,
            postgres: self.postgres,
            profile: self.profile,
            log_filter: "info",
        }
    }

    /// The gateway and one runner as release processes in `work`, with
    /// `opts.sandboxes` sandboxes running, owned by an account logging in with
    /// `client`'s key. The gateway's options are those of `warren-gateway serve`.
    pub fn processes(
        self,
        work: &std::path::Path,
        client: &Client,
        opts: StackOptions,
    ) -> anyhow::Result<GatewayStack> {
        GatewayStack::start(work, client, opts)
    }
}
