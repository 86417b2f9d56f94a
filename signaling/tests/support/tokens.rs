//! Access tokens for tests, minted with the server's own `TokenKey`.

use signaling::auth::{Claims, Grant, Grants, TokenKey};

/// A secret long enough for `TokenKey`.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Unix seconds now (tokens carry wall-clock times).
pub fn now_unix() -> u64 {
    #[allow(clippy::disallowed_methods)]
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with `secret` for `sub` in `room`, expiring `exp_in` seconds from now
/// (negative: already expired).
pub fn mint(secret: &str, sub: &str, room: &str, grants: &[Grant], exp_in: i64) -> String {
    let now = now_unix();
    TokenKey::new(secret.as_bytes()).unwrap().mint(&Claims {
        sub: sub.into(),
        room: room.into(),
        grants: Grants::from_list(grants),
        exp: now.saturating_add_signed(exp_in),
        iat: now.saturating_sub(10),
        name: None,
    })
}
