//! A connection's login: who it is (a key, an API key, a sandbox token), whether
//! that may log in as the user name asks ([`Access`], the lifecycle's one rule),
//! its place among its account's and sandbox's connections, and the check again
//! once it is registered among the live logins. What the login gets in its
//! sandbox (the token's scope, agent forwarding) is decided here too.

use std::time::Duration;

use russh::keys::ssh_key::HashAlg;
use russh::server::{Auth, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{MethodKind, MethodSet};
use warren_keys::Scope;
use warren_store::{Sandbox, StoreError};

use super::Connection;
use crate::lifecycle::live::Via;
use crate::lifecycle::{Access, Principal};
use crate::ssh::login::LoginName;

/// What a login is told while the store cannot answer.
const STORE_UNAVAILABLE: &str =
    "store unavailable: the gateway cannot reach its database; try again in a moment";

impl Connection {
    /// A refusal that counts against the source address (a wrong password, token
    /// or key); OpenSSH's "none" probe and key offers are not failures.
    pub(super) fn failed(&self) -> Auth {
        self.door.limiter.failed(self.peer.ip());
        self.refused()
    }

    pub(super) fn refused(&self) -> Auth {
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        methods.push(MethodKind::Password);
        Auth::Reject {
            proceed_with_methods: Some(methods),
            partial_success: false,
        }
    }

    /// The store cannot answer (PostgreSQL restarting, say): the login is accepted
    /// with no principal, so nothing it asks is served, and [`Self::logged_in`]
    /// disconnects it saying why. A refusal would read as a wrong key.
    pub(super) fn store_unavailable(&mut self, error: &StoreError) -> Auth {
        tracing::warn!(peer = %self.peer, %error, "store unavailable during login");
        self.store_down = true;
        Auth::Accept
    }

    /// The sandbox a relay-mode login names, if it exists; `None` otherwise (an
    /// unknown sandbox and someone else's look the same from outside). `Err`: the
    /// store cannot say.
    pub(super) async fn named_sandbox(
        &self,
        user: &str,
    ) -> Result<(LoginName, Option<Sandbox>), StoreError> {
        let name = LoginName::parse(user);
        let sandbox = match &name {
            LoginName::Sandbox { id, .. } => {
                match self.door.lifecycle.store.get_sandbox(id).await {
                    Ok(sandbox) => Some(sandbox),
                    Err(StoreError::NotFound(_)) => None,
                    Err(e) => return Err(e),
                }
            }
            LoginName::Account(_) => None,
        };
        Ok((name, sandbox))
    }

    /// Accepts `principal` if it may log in as `name`.
    pub(super) async fn admit(
        &mut self,
        name: LoginName,
        sandbox: Option<Sandbox>,
        principal: Principal,
        via: Via,
    ) -> Auth {
        let Some(access) = self.fits(&name, sandbox.as_ref(), &principal).await else {
            return self.failed();
        };
        // A login past its account's or sandbox's bound is accepted (it proved who
        // it is) and then told why it is closed: a refusal would read as a wrong
        // key. It gets no principal, so nothing it sends meanwhile is served.
        let sandbox_id = sandbox.as_ref().map(|s| &s.id);
        match self.door.bounds.connection(principal.user(), sandbox_id) {
            Ok(place) => self.place = Some(place),
            Err(refused) => {
                self.over_bound = Some(refused);
                return Auth::Accept;
            }
        }
        tracing::info!(
            peer = %self.peer,
            login = name.without_token(),
            user = principal.user().map(|u| u.name.as_str()),
            "authenticated"
        );
        self.name = Some(name);
        self.sandbox = sandbox;
        self.access = access;
        self.principal = Some(principal);
        self.via = Some(via);
        self.preauth.logged_in();
        Auth::Accept
    }

    /// What `principal` may do as `name` (a sandbox login, or its own account's);
    /// `None` if it may not log in so.
    pub(super) async fn fits(
        &self,
        name: &LoginName,
        sandbox: Option<&Sandbox>,
        principal: &Principal,
    ) -> Option<Access> {
        match (name, sandbox, principal) {
            (LoginName::Sandbox { .. }, Some(sandbox), p) => {
                let access = self.door.lifecycle.access_to(p, sandbox).await;
                access.logs_in(sandbox).then_some(access)
            }
            (LoginName::Account(account), None, Principal::User(user)) if user.name == *account => {
                Some(Access::None)
            }
            _ => None,
        }
    }

    /// Whether what let this connection in still holds ([`Lifecycle::login_holds`]).
    ///
    /// [`Lifecycle::login_holds`]: crate::lifecycle::Lifecycle::login_holds
    pub(super) async fn still_allowed(&self) -> bool {
        let (Some(principal), Some(via)) = (&self.principal, &self.via) else {
            return true;
        };
        let sandbox = self.sandbox.as_ref().map(|s| &s.id);
        self.door
            .lifecycle
            .login_holds(principal, via, sandbox)
            .await
    }

    /// Whether this login may forward the user's SSH agent into its sandbox
    /// ([`Access::forwards_agent`]).
    pub(super) fn forwards_agent(&self) -> bool {
        self.sandbox
            .as_ref()
            .is_some_and(|sandbox| self.access.forwards_agent(sandbox))
    }

    /// What the agent may give this login's sessions ([`Access::ssh_scope`]), its
    /// shares read again now (a share's secrets given since the login count).
    pub(super) async fn scope(&self, sandbox: &Sandbox) -> Scope {
        let fresh = match &self.principal {
            Some(principal) => self.door.lifecycle.access_to(principal, sandbox).await,
            None => self.access,
        };
        fresh
            .ssh_scope(sandbox)
            .or_else(|| self.access.ssh_scope(sandbox))
            .unwrap_or(Scope::SshWithoutSecrets)
    }

    pub(super) async fn logged_in(&mut self, session: &mut Session) -> Result<(), russh::Error> {
        if self.store_down {
            // OpenSSH shows it: "Received disconnect from …: store unavailable …".
            return session.disconnect(
                russh::Disconnect::ServiceNotAvailable,
                STORE_UNAVAILABLE,
                "",
            );
        }
        if let Some(refused) = &self.over_bound {
            // OpenSSH shows it: "Received disconnect from …: too many connections …".
            tracing::info!(peer = %self.peer, %refused, "login refused");
            return session.disconnect(
                russh::Disconnect::TooManyConnections,
                &refused.to_string(),
                "",
            );
        }
        if let (Some(via), Some(principal)) = (self.via.clone(), self.principal.clone()) {
            let sandbox = self.sandbox.as_ref().map(|s| s.id.clone());
            self.live = Some(self.door.lifecycle.live.register(
                principal,
                via,
                sandbox,
                session.handle(),
            ));
            // A revocation between the login's checks and this registration found
            // nothing to end: look again now that any later one will find us.
            if !self.still_allowed().await {
                let handle = session.handle();
                tokio::spawn(async move {
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "access revoked during login".into(),
                            String::new(),
                        )
                        .await;
                });
            }
        }
        Ok(())
    }

    pub(super) async fn login_none(&mut self, user: &str) -> Auth {
        if self.store_down {
            return Auth::Accept;
        }
        // `<sandbox-id>#<token>`: a login without a prompt.
        let (name, sandbox) = match self.named_sandbox(user).await {
            Ok(named) => named,
            Err(e) => return self.store_unavailable(&e),
        };
        if let (
            LoginName::Sandbox {
                id,
                token: Some(token),
                ..
            },
            Some(_),
        ) = (&name, &sandbox)
        {
            if self.door.lifecycle.token_opens(token, id).await {
                let principal = Principal::Token(id.clone());
                return self.admit(name, sandbox, principal, Via::Token).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            return self.failed();
        }
        self.refused()
    }

    pub(super) async fn login_password(&mut self, user: &str, password: &str) -> Auth {
        if self.store_down {
            return Auth::Accept;
        }
        let (name, sandbox) = match self.named_sandbox(user).await {
            Ok(named) => named,
            Err(e) => return self.store_unavailable(&e),
        };
        // A sandbox token for this very sandbox...
        if let LoginName::Sandbox { id, .. } = &name
            && sandbox.is_some()
            && password.starts_with(warren_keys::TOKEN_PREFIX)
        {
            if self.door.lifecycle.token_opens(password, id).await {
                let principal = Principal::Token(id.clone());
                return self.admit(name, sandbox, principal, Via::Token).await;
            }
            return self.failed();
        }
        // ...or an API key of an account.
        match self
            .door
            .lifecycle
            .store
            .find_user_by_api_key(password)
            .await
        {
            Ok(Some(owner)) => {
                let principal = Principal::User(owner.user);
                self.admit(name, sandbox, principal, Via::ApiKey(owner.key_id))
                    .await
            }
            Ok(None) => self.failed(),
            Err(e) => self.store_unavailable(&e),
        }
    }

    pub(super) async fn key_offered(&mut self, offer: PublicKeyOffer<'_>) -> Auth {
        if self.store_down {
            return Auth::Accept;
        }
        // Say yes only to keys someone registered; ownership is checked after the
        // signature, in auth_publickey.
        match self
            .door
            .lifecycle
            .store
            .find_users_by_ssh_key(offer.public_key)
            .await
        {
            Ok(users) if !users.is_empty() => Auth::Accept,
            Ok(_) => self.refused(),
            // Let the client sign: its login then says why it cannot go on.
            Err(e) => self.store_unavailable(&e),
        }
    }

    pub(super) async fn login_key(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Auth {
        if self.store_down {
            return Auth::Accept;
        }
        let (name, sandbox) = match self.named_sandbox(user).await {
            Ok(named) => named,
            Err(e) => return self.store_unavailable(&e),
        };
        let users = match self
            .door
            .lifecycle
            .store
            .find_users_by_ssh_key(key.public_key)
            .await
        {
            Ok(users) => users,
            Err(e) => return self.store_unavailable(&e),
        };
        // The key may be registered to several accounts; any that may use it will do.
        for candidate in users {
            let principal = Principal::User(candidate);
            if self
                .fits(&name, sandbox.as_ref(), &principal)
                .await
                .is_some()
            {
                let via = Via::Key(warren_keys::fingerprint(key.public_key));
                return self.admit(name, sandbox, principal, via).await;
            }
        }
        tracing::info!(
            peer = %self.peer,
            fingerprint = %key.public_key.fingerprint(HashAlg::Sha256),
            "key refused"
        );
        self.failed()
    }
}
