//! Who may do what with a sandbox: one answer, [`Access`], for a principal (an
//! account, or the bearer of a sandbox token) and a sandbox, asked by the HTTP API,
//! the SSH console, the relay and jump mode at login, and again when a live login
//! is re-authorized. No other code compares owners or reads shares to decide.
//!
//! - The owner manages the sandbox (stop, start, delete, share, tokens, pull
//!   requests) and logs in; its sessions may forward the owner's SSH agent if the
//!   sandbox was created so.
//! - A user it is shared with logs in (relay and jump mode), with the sandbox's
//!   create-time environment (its secrets) only if the share says so; never with
//!   agent forwarding (every session runs as the same user).
//! - A sandbox token logs in to that sandbox alone, as the owner's sessions do,
//!   without agent forwarding.
//! - An admin reads every sandbox's audit trail (sessions, recordings), nothing more.
//! - Nobody logs in to a deleted sandbox. An unknown sandbox and one the caller has
//!   no access to look the same ("not found").
//!
//! Snapshots have their answer too, [`SnapshotAccess`]: the owner sees, deletes and
//! creates from theirs; an admin sees and deletes any, and creates only from their
//! own (a snapshot carries its owner's secrets); nobody else sees it.

use warren_keys::SnapshotId;
use warren_keys::{SandboxId, Scope};
use warren_store::{Sandbox, SandboxState, Snapshot, Store, StoreError, User, UserId};

use super::{Error, Lifecycle, Result};

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An account, by key or API key.
    User(User),
    /// A bearer of a sandbox token: that sandbox and nothing else.
    Token(SandboxId),
}

impl Principal {
    pub fn user(&self) -> Option<&User> {
        match self {
            Principal::User(user) => Some(user),
            Principal::Token(_) => None,
        }
    }
}

/// What a principal may do with one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Its owner: everything.
    Owner,
    /// Shared with this account: logs in; the sandbox's secrets only with
    /// `secrets`. `admin`: the account is also an admin (it reads the audit trail).
    Shared { secrets: bool, admin: bool },
    /// A bearer of one of its sandbox tokens: logs in.
    Token,
    /// An admin's: reads its audit trail, nothing else.
    Admin,
    /// Nothing (and the sandbox is "not found" to them).
    None,
}

/// Who a sandbox is shared with, as [`Access::of`] reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shares {
    /// Every user it is shared with.
    pub users: Vec<UserId>,
    /// Those of them whose sessions get its secrets.
    pub with_secrets: Vec<UserId>,
}

impl Shares {
    /// `sandbox`'s shares, from the store.
    pub async fn read(store: &Store, sandbox: &SandboxId) -> Result<Shares, StoreError> {
        Ok(Shares {
            users: store.sandbox_shared_with(sandbox).await?,
            with_secrets: store.sandbox_shared_with_secrets(sandbox).await?,
        })
    }
}

impl Access {
    /// The one rule: what `who` may do with `sandbox`, shared as `shares` says.
    pub fn of(who: &Principal, sandbox: &Sandbox, shares: &Shares) -> Access {
        match who {
            Principal::Token(id) if *id == sandbox.id => Access::Token,
            Principal::Token(_) => Access::None,
            Principal::User(user) if user.id == sandbox.owner_id => Access::Owner,
            Principal::User(user) if shares.users.contains(&user.id) => Access::Shared {
                secrets: shares.with_secrets.contains(&user.id),
                admin: user.is_admin,
            },
            Principal::User(user) if user.is_admin => Access::Admin,
            Principal::User(_) => Access::None,
        }
    }

    /// [`Access::of`], reading the shares from `store` only when they matter.
    pub async fn read(
        store: &Store,
        who: &Principal,
        sandbox: &Sandbox,
    ) -> Result<Access, StoreError> {
        let shares = match who {
            Principal::User(user) if user.id != sandbox.owner_id => {
                Shares::read(store, &sandbox.id).await?
            }
            _ => Shares::default(),
        };
        Ok(Access::of(who, sandbox, &shares))
    }

    /// Stop, start, delete, share, rotate its tokens, open pull requests.
    pub fn manages(self) -> bool {
        self == Access::Owner
    }

    /// Read its SSH sessions and recordings.
    pub fn reads_audit(self) -> bool {
        matches!(
            self,
            Access::Owner | Access::Admin | Access::Shared { admin: true, .. }
        )
    }

    /// Log in to `sandbox` (relay or jump mode): what the agent may give the
    /// login's sessions, or `None` if it may not log in.
    pub fn ssh_scope(self, sandbox: &Sandbox) -> Option<Scope> {
        if sandbox.state == SandboxState::Deleted {
            return None;
        }
        match self {
            Access::Owner if sandbox.forward_agent => Some(Scope::SshWithAgent),
            Access::Owner | Access::Token | Access::Shared { secrets: true, .. } => {
                Some(Scope::Ssh)
            }
            Access::Shared { secrets: false, .. } => Some(Scope::SshWithoutSecrets),
            Access::Admin | Access::None => None,
        }
    }

    /// Whether it may log in to `sandbox` at all.
    pub fn logs_in(self, sandbox: &Sandbox) -> bool {
        self.ssh_scope(sandbox).is_some()
    }

    /// Whether its sessions may forward the user's SSH agent into `sandbox`: only
    /// the owner's, and only if they turned it on at create. Never a shared user's
    /// (every session runs as the same user, so others could sign with their
    /// keys), never a token bearer's.
    pub fn forwards_agent(self, sandbox: &Sandbox) -> bool {
        self.ssh_scope(sandbox) == Some(Scope::SshWithAgent)
    }
}

/// What an account may do with one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAccess {
    /// Its owner: sees it, deletes it, creates sandboxes from it.
    Owner,
    /// An admin's view of someone else's: sees it and deletes it.
    Admin,
    /// Nothing (and the snapshot is "not found" to them).
    None,
}

impl SnapshotAccess {
    /// The one rule for snapshots: what `user` may do with `snapshot`.
    pub fn of(user: &User, snapshot: &Snapshot) -> SnapshotAccess {
        if user.id == snapshot.owner_id {
            SnapshotAccess::Owner
        } else if user.is_admin {
            SnapshotAccess::Admin
        } else {
            SnapshotAccess::None
        }
    }

    /// Whose snapshots `user` lists: their own, or everyone's (`None`) for an admin.
    pub fn listed_owner(user: &User) -> Option<&UserId> {
        (!user.is_admin).then_some(&user.id)
    }

    /// See it and delete it.
    pub fn sees(self) -> bool {
        matches!(self, SnapshotAccess::Owner | SnapshotAccess::Admin)
    }

    /// Create sandboxes from it: its owner only, not an admin (what it makes would
    /// run with the owner's secrets).
    pub fn creates_from(self) -> bool {
        self == SnapshotAccess::Owner
    }
}

impl Lifecycle {
    /// Sandbox `id` and what `who` may do with it; a malformed id and an unknown
    /// one are "not found".
    pub async fn access(&self, who: &Principal, id: &SandboxId) -> Result<(Sandbox, Access)> {
        let sandbox = match self.store.get_sandbox(id).await {
            Ok(sandbox) => sandbox,
            Err(StoreError::NotFound(_)) => return Err(Error::not_found("sandbox")),
            Err(e) => return Err(e.into()),
        };
        let access = Access::read(&self.store, who, &sandbox).await?;
        Ok((sandbox, access))
    }

    /// What `who` may do with `sandbox` (read a moment ago); a store that cannot
    /// say who it is shared with counts as no shares.
    pub async fn access_to(&self, who: &Principal, sandbox: &Sandbox) -> Access {
        match Access::read(&self.store, who, sandbox).await {
            Ok(access) => access,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the sandbox's shares");
                Access::of(who, sandbox, &Shares::default())
            }
        }
    }

    /// `caller`'s sandbox `id`, if `allowed` says their access is enough; an unknown
    /// one and one they may not use look the same: "not found".
    async fn sandbox_if(
        &self,
        caller: &User,
        id: &SandboxId,
        allowed: impl Fn(Access) -> bool,
    ) -> Result<Sandbox> {
        let who = Principal::User(caller.clone());
        match self.access(&who, id).await? {
            (sandbox, access) if allowed(access) => Ok(sandbox),
            _ => Err(Error::not_found("sandbox")),
        }
    }

    /// Sandbox `id` if `caller` manages it (its owner); a malformed id is "not
    /// found" too.
    pub async fn managed(&self, caller: &User, id: &str) -> Result<Sandbox> {
        let id = SandboxId::parse(id).map_err(|_| Error::not_found("sandbox"))?;
        self.sandbox_if(caller, &id, Access::manages).await
    }

    /// Snapshot `id` if `allowed` says `caller`'s access is enough; a malformed,
    /// unknown or someone else's id is the same "not found".
    async fn snapshot_if(
        &self,
        caller: &User,
        id: &str,
        allowed: impl Fn(SnapshotAccess) -> bool,
    ) -> Result<Snapshot> {
        let not_found = || Error::not_found("snapshot");
        let id = SnapshotId::parse(id).map_err(|_| not_found())?;
        match self.store.get_snapshot(&id).await {
            Ok(s) if allowed(SnapshotAccess::of(caller, &s)) => Ok(s),
            Ok(_) | Err(StoreError::NotFound(_)) => Err(not_found()),
            Err(e) => Err(e.into()),
        }
    }

    /// Snapshot `id` if `caller` may see (and delete) it.
    pub async fn visible_snapshot(&self, caller: &User, id: &str) -> Result<Snapshot> {
        self.snapshot_if(caller, id, SnapshotAccess::sees).await
    }

    /// Snapshot `id` if `caller` may create sandboxes from it.
    pub(super) async fn own_snapshot(&self, caller: &User, id: &str) -> Result<Snapshot> {
        self.snapshot_if(caller, id, SnapshotAccess::creates_from)
            .await
    }

    /// Sandbox `id` if `caller` may read its audit trail (its owner, or an admin).
    pub async fn audited(&self, caller: &User, id: &SandboxId) -> Result<Sandbox> {
        self.sandbox_if(caller, id, Access::reads_audit).await
    }
}

#[cfg(test)]
mod tests {
    use warren_store::Timestamp;

    use super::*;

    fn user(name: &str, is_admin: bool) -> User {
        User {
            id: UserId::generate(),
            name: name.into(),
            is_admin,
            created_at: Timestamp::now(),
        }
    }

    fn sandbox(owner: &User, forward_agent: bool, state: SandboxState) -> Sandbox {
        Sandbox {
            id: SandboxId::generate(),
            owner_id: owner.id.clone(),
            runner_id: None,
            image: "default".into(),
            repo: None,
            branch: None,
            forward_agent,
            state,
            cpus: 1.0,
            memory_mb: 512,
            idle_timeout_s: None,
            ttl_s: None,
            disk_mb: None,
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
        }
    }

    #[test]
    fn the_owner_manages_and_logs_in_with_its_agent_if_asked() {
        let alice = user("alice", false);
        let who = Principal::User(alice.clone());
        let plain = sandbox(&alice, false, SandboxState::Running);
        let access = Access::of(&who, &plain, &Shares::default());
        assert_eq!(access, Access::Owner);
        assert!(access.manages() && access.reads_audit());
        assert_eq!(access.ssh_scope(&plain), Some(Scope::Ssh));
        assert!(!access.forwards_agent(&plain));
        let agent = sandbox(&alice, true, SandboxState::Running);
        assert_eq!(access.ssh_scope(&agent), Some(Scope::SshWithAgent));
        assert!(access.forwards_agent(&agent));
    }

    #[test]
    fn shares_log_in_with_or_without_secrets_and_manage_nothing() {
        let (alice, bob, carol) = (
            user("alice", false),
            user("bob", false),
            user("carol", false),
        );
        let s = sandbox(&alice, true, SandboxState::Running);
        let shares = Shares {
            users: vec![bob.id.clone(), carol.id.clone()],
            with_secrets: vec![carol.id.clone()],
        };
        let bob_access = Access::of(&Principal::User(bob), &s, &shares);
        assert_eq!(
            bob_access,
            Access::Shared {
                secrets: false,
                admin: false
            }
        );
        assert_eq!(bob_access.ssh_scope(&s), Some(Scope::SshWithoutSecrets));
        assert!(!bob_access.manages() && !bob_access.reads_audit());
        assert!(!bob_access.forwards_agent(&s));
        let carol_access = Access::of(&Principal::User(carol), &s, &shares);
        assert_eq!(carol_access.ssh_scope(&s), Some(Scope::Ssh));
        assert!(!carol_access.forwards_agent(&s));
    }

    #[test]
    fn admins_read_the_audit_trail_and_nothing_else() {
        let (alice, root) = (user("alice", false), user("root", true));
        let s = sandbox(&alice, false, SandboxState::Running);
        let access = Access::of(&Principal::User(root.clone()), &s, &Shares::default());
        assert_eq!(access, Access::Admin);
        assert!(access.reads_audit() && !access.manages() && !access.logs_in(&s));
        // An admin it is shared with logs in as any share does, and still reads.
        let shares = Shares {
            users: vec![root.id.clone()],
            with_secrets: vec![],
        };
        let shared = Access::of(&Principal::User(root), &s, &shares);
        assert!(shared.logs_in(&s) && shared.reads_audit() && !shared.manages());
    }

    #[test]
    fn tokens_open_their_own_sandbox_only() {
        let alice = user("alice", false);
        let s = sandbox(&alice, true, SandboxState::Running);
        let other = sandbox(&alice, false, SandboxState::Running);
        let token = Principal::Token(s.id.clone());
        let access = Access::of(&token, &s, &Shares::default());
        assert_eq!(access, Access::Token);
        assert_eq!(access.ssh_scope(&s), Some(Scope::Ssh));
        assert!(!access.manages() && !access.reads_audit());
        assert_eq!(Access::of(&token, &other, &Shares::default()), Access::None);
    }

    #[test]
    fn strangers_get_nothing_and_nobody_logs_in_to_a_deleted_sandbox() {
        let (alice, mallory) = (user("alice", false), user("mallory", false));
        let s = sandbox(&alice, false, SandboxState::Running);
        let access = Access::of(&Principal::User(mallory), &s, &Shares::default());
        assert_eq!(access, Access::None);
        assert!(!access.logs_in(&s) && !access.manages() && !access.reads_audit());
        let deleted = sandbox(&alice, false, SandboxState::Deleted);
        let owner = Access::of(&Principal::User(alice), &deleted, &Shares::default());
        assert!(owner.manages() && !owner.logs_in(&deleted));
        let token = Access::of(
            &Principal::Token(deleted.id.clone()),
            &deleted,
            &Shares::default(),
        );
        assert!(!token.logs_in(&deleted));
    }

    #[test]
    fn snapshots_are_their_owners_and_admins_only_see_and_delete() {
        let (alice, root, mallory) = (
            user("alice", false),
            user("root", true),
            user("mallory", false),
        );
        let snapshot = Snapshot {
            id: SnapshotId::generate(),
            owner_id: alice.id.clone(),
            source_id: SandboxId::generate(),
            runner_id: warren_store::RunnerId::generate(),
            name: None,
            image: "default".into(),
            spec: "{}".into(),
            repo: None,
            branch: None,
            size_bytes: 0,
            frozen_ms: 0,
            created_at: Timestamp::now(),
        };
        let owner = SnapshotAccess::of(&alice, &snapshot);
        assert!(owner.sees() && owner.creates_from());
        let admin = SnapshotAccess::of(&root, &snapshot);
        assert!(admin.sees() && !admin.creates_from());
        let stranger = SnapshotAccess::of(&mallory, &snapshot);
        assert!(!stranger.sees() && !stranger.creates_from());
        assert_eq!(SnapshotAccess::listed_owner(&alice), Some(&alice.id));
        assert_eq!(SnapshotAccess::listed_owner(&root), None);
    }
}
