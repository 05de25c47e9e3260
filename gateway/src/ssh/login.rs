//! Who is logging in, and to what: the SSH user name names a sandbox (relay mode,
//! optionally `<sandbox-id>#<token>` for clients that cannot prompt, and
//! `+<session>[+ro]` for a persistent session, which the agent handles) or an account
//! (a jump host for `ssh -J`, reaching that account's sandboxes).

/// What the SSH user name asks for; one parser for the gateway and the agent. Who
/// may log in so is [`crate::lifecycle::access`]'s to say.
pub use warren_keys::LoginName;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_parse() {
        assert!(matches!(
            LoginName::parse("sbx-abc123"),
            LoginName::Sandbox { token: None, .. }
        ));
        assert_eq!(
            LoginName::parse("sbx-abc123#wst1.x").token(),
            Some("wst1.x")
        );
        assert!(matches!(LoginName::parse("alice"), LoginName::Account(n) if n == "alice"));
        // The session part is the agent's; the token never leaves the gateway.
        assert_eq!(
            LoginName::parse("sbx-abc123+work+ro#secret").without_token(),
            "sbx-abc123+work+ro"
        );
    }
}
