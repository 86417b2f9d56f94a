//! Access tokens for the simulated clients, so a load test can run against a server
//! configured as in production (tokens required), not only a `--dev` one.
//!
//! Given the server's token secret, every client gets its own HS256 token for any room
//! (`"*"`), with the grants its role needs and nothing more: the synthetic host `publish`,
//! viewers `subscribe`, a party's creator `moderate` + `control` + `chat` + `subscribe`, its
//! members `subscribe` + `chat`. Identities are distinct, since a host token with the same
//! identity as the current host takes the room over.

use anyhow::{Result, anyhow};
use marquee_protocol::auth::{Claims, Grant, Grants, TokenKey};

/// How long a minted token stays valid. The server checks a token when a client joins, and
/// a run is bounded; six hours covers any run with margin and still expires.
const TOKEN_TTL_SECS: u64 = 6 * 3600;

/// What a simulated client is, and so which grants its token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    Host,
    Viewer,
    PartyCreator,
    PartyMember,
}

impl ClientRole {
    fn grants(self) -> &'static [Grant] {
        match self {
            ClientRole::Host => &[Grant::Publish],
            ClientRole::Viewer => &[Grant::Subscribe],
            ClientRole::PartyCreator => &[
                Grant::Moderate,
                Grant::Control,
                Grant::Chat,
                Grant::Subscribe,
            ],
            ClientRole::PartyMember => &[Grant::Subscribe, Grant::Chat],
        }
    }
}

/// Mints the clients' tokens, or none against a `--dev` server.
pub struct Tokens {
    key: Option<TokenKey>,
    /// Unix seconds when the run started: every token's `iat`.
    issued_at: u64,
}

impl Tokens {
    /// No tokens: the server runs in `--dev` mode.
    pub fn none() -> Self {
        Self {
            key: None,
            issued_at: 0,
        }
    }

    /// Tokens signed with the server's `secret`; refused when the server would refuse it.
    pub fn with_secret(secret: &str, now_unix: u64) -> Result<Self> {
        let key =
            TokenKey::new(secret.as_bytes()).map_err(|err| anyhow!("--auth-secret: {err}"))?;
        Ok(Self {
            key: Some(key),
            issued_at: now_unix,
        })
    }

    /// A token for the client `identity` in its `role`; `None` without a secret.
    pub fn mint(&self, role: ClientRole, identity: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        Some(key.mint(&Claims {
            sub: format!("loadtest-{identity}"),
            room: "*".to_owned(),
            grants: Grants::from_list(role.grants()),
            exp: self.issued_at + TOKEN_TTL_SECS,
            iat: self.issued_at,
            name: Some(identity.to_owned()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-load-test-secret-of-at-least-32-bytes";
    const NOW: u64 = 1_800_000_000;

    #[test]
    fn each_role_gets_exactly_its_grants_for_any_room() {
        let tokens = Tokens::with_secret(SECRET, NOW).unwrap();
        let key = TokenKey::new(SECRET.as_bytes()).unwrap();
        let cases = [
            (ClientRole::Host, Grants::from_list(&[Grant::Publish])),
            (ClientRole::Viewer, Grants::from_list(&[Grant::Subscribe])),
            (
                ClientRole::PartyCreator,
                Grants::from_list(&[
                    Grant::Moderate,
                    Grant::Control,
                    Grant::Chat,
                    Grant::Subscribe,
                ]),
            ),
            (
                ClientRole::PartyMember,
                Grants::from_list(&[Grant::Subscribe, Grant::Chat]),
            ),
        ];
        for (role, grants) in cases {
            let token = tokens.mint(role, "v1").unwrap();
            let claims = key.verify(&token, NOW + 60).unwrap();
            assert_eq!(claims.grants, grants, "{role:?}");
            assert_eq!(claims.room, "*");
            assert_eq!(claims.sub, "loadtest-v1");
            assert_eq!(claims.iat, NOW);
            assert_eq!(claims.exp, NOW + TOKEN_TTL_SECS);
        }
    }

    #[test]
    fn without_a_secret_no_token_and_a_short_secret_is_refused() {
        assert_eq!(Tokens::none().mint(ClientRole::Viewer, "v1"), None);
        let err = Tokens::with_secret("short", NOW).err().unwrap().to_string();
        assert!(err.contains("--auth-secret"), "{err}");
        assert!(err.contains("32"), "{err}");
    }
}
