//! Access tokens: HS256 JWTs that say who a client is, which room it may enter and what it
//! may do there.
//!
//! An application backend mints a token with the shared secret ([`TokenKey::mint`]); the
//! server checks it on every join ([`Access::check`]): signature, expiry, room, grant. Time is
//! passed in as unix seconds, never read here, so tests control it (GUIDE §2.2).
//!
//! The claims use the standard JWT names (`sub`, `exp`, `iat`, RFC 7519 §4.1) plus `room`,
//! `grants` and an optional display `name`:
//!
//! ```json
//! {"sub":"alice","room":"ABCD","grants":{"publish":true,"chat":true},"exp":1767225600,"iat":1767222000}
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Shortest accepted HS256 secret, in bytes. Anyone holding one token can test candidate
/// secrets offline at billions per second; 32 random bytes (the HMAC-SHA256 output size,
/// RFC 7518 §3.2) put that out of reach. [`TokenKey::new`] refuses shorter secrets.
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest accepted token, in bytes. Real tokens are a few hundred bytes; the cap bounds the
/// work (base64, JSON, HMAC) an unauthenticated client can make us do. Longer tokens are
/// refused as [`AuthError::Malformed`] before any decoding.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Clock skew tolerated between the token issuer and this server, in seconds: a token is
/// still accepted this long after its `exp`, and its `iat` may be this far in the future.
pub const LEEWAY_SECS: u64 = 30;

/// Something a token allows its holder to do in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// Go live: publish media (WebSocket host, WHIP).
    Publish,
    /// Watch: receive media (WebSocket viewer, WHEP).
    Subscribe,
    /// Drive a watch party's shared playback (play, pause, seek).
    Control,
    /// Send chat messages and reactions.
    Chat,
    /// Remove members and messages, end the event.
    Moderate,
}

impl Grant {
    /// Every grant, in declaration order.
    pub const ALL: [Grant; 5] = [
        Grant::Publish,
        Grant::Subscribe,
        Grant::Control,
        Grant::Chat,
        Grant::Moderate,
    ];

    /// The name used in tokens, error messages and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Publish => "publish",
            Grant::Subscribe => "subscribe",
            Grant::Control => "control",
            Grant::Chat => "chat",
            Grant::Moderate => "moderate",
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A grant name that is not one of [`Grant::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown grant `{0}`; the grants are publish, subscribe, control, chat and moderate")]
pub struct UnknownGrant(pub String);

impl FromStr for Grant {
    type Err = UnknownGrant;

    /// Parses the exact lower-case name ([`Grant::as_str`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Grant::ALL
            .into_iter()
            .find(|grant| grant.as_str() == s)
            .ok_or_else(|| UnknownGrant(s.to_owned()))
    }
}

/// The set of grants a token carries. Missing fields are `false`, so a token lists only what
/// it allows; `false` fields are left out when serializing for the same reason.
#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Grants {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub subscribe: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub control: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chat: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moderate: bool,
}

impl Grants {
    /// Every grant: what development mode gives everyone.
    pub fn all() -> Self {
        Self::from_list(&Grant::ALL)
    }

    /// Exactly the listed grants.
    pub fn from_list(grants: &[Grant]) -> Self {
        let mut set = Self::default();
        for &grant in grants {
            *set.flag_mut(grant) = true;
        }
        set
    }

    /// Whether `grant` is in the set.
    pub fn has(&self, grant: Grant) -> bool {
        match grant {
            Grant::Publish => self.publish,
            Grant::Subscribe => self.subscribe,
            Grant::Control => self.control,
            Grant::Chat => self.chat,
            Grant::Moderate => self.moderate,
        }
    }

    fn flag_mut(&mut self, grant: Grant) -> &mut bool {
        match grant {
            Grant::Publish => &mut self.publish,
            Grant::Subscribe => &mut self.subscribe,
            Grant::Control => &mut self.control,
            Grant::Chat => &mut self.chat,
            Grant::Moderate => &mut self.moderate,
        }
    }
}

/// The payload of an access token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The holder's stable identity (user id in the application's backend). Never empty.
    pub sub: String,
    /// The room code the token is for, or `"*"` for any room. Compared case-insensitively
    /// (room codes are stored upper-case).
    pub room: String,
    /// What the holder may do in that room. Absent means nothing.
    #[serde(default)]
    pub grants: Grants,
    /// Expiry, unix seconds. Required: a token that never expires cannot be taken back.
    pub exp: u64,
    /// Issue time, unix seconds.
    pub iat: u64,
    /// Display name shown to others; the identity is shown when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Claims {
    /// Whether these claims allow `grant` in `room`: the room must match (or the token be for
    /// `"*"`) and the grant be present. The room is checked first, so a token for another
    /// room reports the room, not a grant.
    pub fn authorize(&self, room: &str, grant: Grant) -> Result<(), AuthError> {
        if self.room != "*" && !self.room.eq_ignore_ascii_case(room) {
            return Err(AuthError::WrongRoom {
                token_room: self.room.clone(),
                room: room.to_owned(),
            });
        }
        if !self.grants.has(grant) {
            return Err(AuthError::MissingGrant(grant));
        }
        Ok(())
    }
}

/// A token secret that is too short to be safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the token secret is {len} bytes but at least {MIN_SECRET_BYTES} are required: anyone \
         holding one token could guess a shorter HS256 secret offline and mint their own \
         tokens (generate one with `openssl rand -base64 48`)"
    )]
    TooShort { len: usize },
}

/// Why a token was refused. [`AuthError::code`] is the stable code sent to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented and this server requires one.
    #[error("this server requires an access token")]
    Missing,
    /// Not a well-formed HS256 JWT with our claims; the string says what is wrong.
    #[error("the access token is malformed: {0}")]
    Malformed(String),
    /// The signature does not match this server's secret (forged, tampered with, or signed
    /// with another deployment's secret).
    #[error("the access token's signature does not match this server's secret")]
    BadSignature,
    /// The token's `exp` is more than [`LEEWAY_SECS`] in the past.
    #[error(
        "the access token expired at {} (unix time {expired_at})",
        utc_timestamp(*expired_at)
    )]
    Expired { expired_at: u64 },
    /// The token's `iat` is more than [`LEEWAY_SECS`] in the future: the issuer's clock is
    /// wrong, and trusting it would stretch the token's life.
    #[error(
        "the access token was issued in the future; check the clock of the system that minted it"
    )]
    NotYetValid,
    /// The token is for another room.
    #[error("this access token is for room `{token_room}`, not `{room}`")]
    WrongRoom { token_room: String, room: String },
    /// The token is for this room but does not allow the action.
    #[error("this access token does not grant `{0}`")]
    MissingGrant(Grant),
}

impl AuthError {
    /// The stable wire code (protocol error codes, WHIP/WHEP error bodies; the HTTP status
    /// follows from it in the server's error map).
    pub fn code(&self) -> crate::wire::ErrorCode {
        use crate::wire::ErrorCode;
        match self {
            AuthError::Missing => ErrorCode::TokenMissing,
            AuthError::Malformed(_) => ErrorCode::TokenMalformed,
            AuthError::BadSignature => ErrorCode::TokenInvalidSignature,
            AuthError::Expired { .. } => ErrorCode::TokenExpired,
            AuthError::NotYetValid => ErrorCode::TokenNotYetValid,
            AuthError::WrongRoom { .. } => ErrorCode::TokenWrongRoom,
            AuthError::MissingGrant(_) => ErrorCode::GrantMissing,
        }
    }
}

/// The HS256 secret tokens are signed with, ready to mint and verify.
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TokenKey {
    /// Never prints the secret: configs and errors get logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(HS256, secret redacted)")
    }
}

impl TokenKey {
    /// A key from the shared secret; refuses secrets shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::TooShort { len: secret.len() });
        }
        // jsonwebtoken checks the signature and the algorithm only; expiry is checked in
        // `verify` against the caller's clock, so tests (and the one clock read of the
        // driver) decide what "now" is. `aud` is not used by our tokens.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// Signs `claims` into a compact JWT (`header.payload.signature`).
    pub fn mint(&self, claims: &Claims) -> String {
        // Serializing `Claims` (strings, integers, booleans) cannot fail, and HMAC signing
        // has no failure mode, so an error here would be a bug in jsonwebtoken.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Checks a token's shape, algorithm, signature and times, and returns its claims. Room
    /// and grants are checked separately ([`Claims::authorize`]).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, AuthError> {
        check_shape(token)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::Json(json) => {
                    AuthError::Malformed(format!("its claims are not valid: {json}"))
                }
                ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                    AuthError::Malformed("a part is not base64url-encoded UTF-8".into())
                }
                _ => AuthError::Malformed(err.to_string()),
            })?
            .claims;
        if claims.sub.is_empty() {
            return Err(AuthError::Malformed("it names no identity (`sub`)".into()));
        }
        if claims.room.is_empty() {
            return Err(AuthError::Malformed("it names no room (`room`)".into()));
        }
        if now_unix > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::Expired {
                expired_at: claims.exp,
            });
        }
        if claims.iat > now_unix.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::NotYetValid);
        }
        Ok(claims)
    }
}

/// Who may do what on this server.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per process, behind an Arc: the size difference costs nothing"
)]
pub enum Access {
    /// Development mode: no tokens; everyone may do everything, anonymously.
    Dev,
    /// Every join needs a token signed with this key.
    Tokens(TokenKey),
}

/// A caller the server let in, as far as access control knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`; `None` in development mode, where callers are anonymous.
    pub identity: Option<String>,
    /// The token's display name, if it has one.
    pub name: Option<String>,
    /// What the caller may do (all grants in development mode).
    pub grants: Grants,
}

impl Access {
    /// Whether tokens are off.
    pub fn is_dev(&self) -> bool {
        matches!(self, Access::Dev)
    }

    /// Lets the caller presenting `token` do `grant` in `room`, or says why not. An empty
    /// token counts as none (clients send `""` when they have no token). In development mode
    /// the token is ignored and everything is allowed.
    pub fn check(
        &self,
        token: Option<&str>,
        room: &str,
        grant: Grant,
        now_unix: u64,
    ) -> Result<Identity, AuthError> {
        let key = match self {
            Access::Dev => {
                return Ok(Identity {
                    identity: None,
                    name: None,
                    grants: Grants::all(),
                });
            }
            Access::Tokens(key) => key,
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let claims = key.verify(token, now_unix)?;
        claims.authorize(room, grant)?;
        Ok(Identity {
            identity: Some(claims.sub),
            name: claims.name,
            grants: claims.grants,
        })
    }
}

/// The token in an `Authorization: Bearer <token>` header value (RFC 6750 §2.1): the scheme
/// is case-insensitive and surrounding whitespace is ignored. `None` for other schemes, an
/// empty token, or a token with inner whitespace.
pub fn bearer(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

/// Structural checks before any cryptography: size, three parts, and an HS256 header. Doing
/// the header here gives `alg: none` (RFC 7519 §6, the classic forgery) and other algorithms
/// a clear message instead of a JSON error from the header parser.
fn check_shape(token: &str) -> Result<(), AuthError> {
    if token.is_empty() {
        return Err(AuthError::Malformed("it is empty".into()));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed(format!(
            "it is {} bytes; at most {MAX_TOKEN_BYTES} are accepted",
            token.len()
        )));
    }
    let mut parts = token.split('.');
    let header = parts.next().unwrap_or_default();
    if parts.count() != 2 {
        return Err(AuthError::Malformed(
            "a token has three dot-separated parts: header.payload.signature".into(),
        ));
    }
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: String,
    }
    let alg = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice::<AlgOnly>(&json).ok())
        .ok_or_else(|| {
            AuthError::Malformed("its header is not base64url JSON naming an `alg`".into())
        })?
        .alg;
    if alg != "HS256" {
        // Bounded and escaped: the value comes from an unauthenticated client.
        let shown: String = alg.chars().take(16).collect();
        return Err(AuthError::Malformed(format!(
            "it is signed with {:?}; only HS256 tokens are accepted",
            shown
        )));
    }
    Ok(())
}

/// `unix` seconds as an RFC 3339 UTC timestamp (`2026-01-01T00:00:00Z`), for messages.
fn utc_timestamp(unix: u64) -> String {
    crate::timeline::UtcDateTime::from_unix_secs(unix).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorCode;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-marquee";
    const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn key() -> TokenKey {
        TokenKey::new(SECRET).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            room: "ABCD".into(),
            grants: Grants::from_list(&[Grant::Publish, Grant::Chat]),
            exp: NOW + 3_600,
            iat: NOW,
            name: Some("Alice".into()),
        }
    }

    /// Signs an arbitrary JSON payload (for claims `mint` cannot produce).
    fn sign_json(payload: &serde_json::Value, alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            payload,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn mint_then_verify_round_trips() {
        let token = key().mint(&claims());
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(key().verify(&token, NOW).unwrap(), claims());
    }

    #[test]
    fn claims_use_standard_names_and_skip_empty_fields() {
        let mut c = claims();
        c.name = None;
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "sub": "alice", "room": "ABCD",
                "grants": {"publish": true, "chat": true},
                "exp": NOW + 3_600, "iat": NOW,
            })
        );
    }

    #[test]
    fn missing_grants_default_to_none() {
        let token = sign_json(
            &serde_json::json!({"sub": "bob", "room": "*", "exp": NOW + 60, "iat": NOW}),
            Algorithm::HS256,
        );
        let claims = key().verify(&token, NOW).unwrap();
        assert_eq!(claims.grants, Grants::default());
        assert_eq!(claims.name, None);
        let partial: Grants = serde_json::from_str(r#"{"subscribe":true,"extra":1}"#).unwrap();
        assert_eq!(partial, Grants::from_list(&[Grant::Subscribe]));
    }

    #[test]
    fn expiry_allows_leeway_then_refuses() {
        let token = key().mint(&claims());
        let exp = claims().exp;
        assert!(key().verify(&token, exp).is_ok());
        assert!(key().verify(&token, exp + LEEWAY_SECS).is_ok());
        let err = key().verify(&token, exp + LEEWAY_SECS + 1).unwrap_err();
        assert_eq!(err, AuthError::Expired { expired_at: exp });
        assert_eq!(err.code(), ErrorCode::TokenExpired);
        assert_eq!(
            err.to_string(),
            "the access token expired at 2026-01-01T01:00:00Z (unix time 1767229200)"
        );
    }

    #[test]
    fn issued_in_the_future_is_refused_beyond_leeway() {
        let mut c = claims();
        c.iat = NOW + LEEWAY_SECS;
        assert!(key().verify(&key().mint(&c), NOW).is_ok());
        c.iat = NOW + LEEWAY_SECS + 1;
        let err = key().verify(&key().mint(&c), NOW).unwrap_err();
        assert_eq!(err, AuthError::NotYetValid);
        assert_eq!(err.code(), ErrorCode::TokenNotYetValid);
    }

    #[test]
    fn token_of_another_key_is_refused() {
        let other = TokenKey::new(&[7u8; 32]).unwrap();
        let err = key().verify(&other.mint(&claims()), NOW).unwrap_err();
        assert_eq!(err, AuthError::BadSignature);
        assert_eq!(err.code(), ErrorCode::TokenInvalidSignature);
    }

    #[test]
    fn tampered_payload_is_refused() {
        let token = key().mint(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        // Same header and signature, payload upgraded to every room and every grant.
        let mut forged_claims = claims();
        forged_claims.room = "*".into();
        forged_claims.grants = Grants::all();
        let payload = b64(&serde_json::to_vec(&forged_claims).unwrap());
        let forged = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert_eq!(key().verify(&forged, NOW), Err(AuthError::BadSignature));
        // A flipped signature character is refused too.
        // (The first character: the last one carries base64 padding bits.)
        let mut sig = parts[2].to_owned();
        let first = if sig.starts_with('A') { "B" } else { "A" };
        sig.replace_range(..1, first);
        let flipped = format!("{}.{}.{}", parts[0], parts[1], sig);
        assert_eq!(key().verify(&flipped, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(&serde_json::to_vec(&claims()).unwrap());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.c2lnbmF0dXJl"),
        ] {
            let err = key().verify(&token, NOW).unwrap_err();
            assert_eq!(err.code(), ErrorCode::TokenMalformed, "{token}");
            assert!(err.to_string().contains("only HS256"), "{err}");
        }
        // Case games with the name do not help either.
        let header = b64(br#"{"alg":"None"}"#);
        assert!(matches!(
            key().verify(&format!("{header}.{payload}."), NOW),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn other_algorithms_are_refused_even_with_our_secret() {
        let payload = serde_json::to_value(claims()).unwrap();
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let err = key().verify(&sign_json(&payload, alg), NOW).unwrap_err();
            assert!(err.to_string().contains("only HS256"), "{alg:?}: {err}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        let header = b64(br#"{"alg":"HS256"}"#);
        let over_long = format!("{header}.{}.sig", "a".repeat(MAX_TOKEN_BYTES));
        for (token, why) in [
            ("", "empty"),
            ("a.b", "three"),
            ("garbage", "three"),
            ("a.b.c.d", "three"),
            ("!!!.b.c", "header"),
            ("e30.b.c", "header"), // `{}`: no alg
            (over_long.as_str(), "at most 4096"),
        ] {
            let err = key().verify(token, NOW).unwrap_err();
            assert_eq!(err.code(), ErrorCode::TokenMalformed, "{token:.40}");
            assert!(err.to_string().contains(why), "{token:.40}: {err}");
        }
    }

    #[test]
    fn well_signed_but_incomplete_claims_are_malformed() {
        for payload in [
            serde_json::json!({"sub": "a", "room": "R", "iat": NOW}), // no exp
            serde_json::json!({"sub": "a", "room": "R", "exp": "soon", "iat": NOW}),
            serde_json::json!({"sub": "", "room": "R", "exp": NOW, "iat": NOW}),
            serde_json::json!({"sub": "a", "room": "", "exp": NOW, "iat": NOW}),
        ] {
            let token = sign_json(&payload, Algorithm::HS256);
            let err = key().verify(&token, NOW).unwrap_err();
            assert_eq!(err.code(), ErrorCode::TokenMalformed, "{payload}: {err}");
        }
    }

    #[test]
    fn authorize_checks_room_then_grant() {
        let c = claims();
        assert_eq!(c.authorize("ABCD", Grant::Publish), Ok(()));
        assert_eq!(
            c.authorize("abcd", Grant::Chat),
            Ok(()),
            "room is case-insensitive"
        );
        let wrong_room = c.authorize("WXYZ", Grant::Moderate).unwrap_err();
        assert_eq!(
            wrong_room,
            AuthError::WrongRoom {
                token_room: "ABCD".into(),
                room: "WXYZ".into()
            }
        );
        assert_eq!(wrong_room.code(), ErrorCode::TokenWrongRoom);
        let missing = c.authorize("ABCD", Grant::Moderate).unwrap_err();
        assert_eq!(missing, AuthError::MissingGrant(Grant::Moderate));
        assert_eq!(missing.code(), ErrorCode::GrantMissing);
        assert_eq!(
            missing.to_string(),
            "this access token does not grant `moderate`"
        );
    }

    #[test]
    fn star_room_matches_any_room_but_not_missing_grants() {
        let c = Claims {
            room: "*".into(),
            ..claims()
        };
        assert_eq!(c.authorize("ANY1", Grant::Publish), Ok(()));
        assert_eq!(c.authorize("*", Grant::Publish), Ok(()));
        assert_eq!(
            c.authorize("ANY1", Grant::Subscribe),
            Err(AuthError::MissingGrant(Grant::Subscribe))
        );
    }

    #[test]
    fn dev_mode_allows_everything_anonymously() {
        let access = Access::Dev;
        assert!(access.is_dev());
        for grant in Grant::ALL {
            let id = access.check(None, "ROOM", grant, NOW).unwrap();
            assert_eq!(id.identity, None);
            assert_eq!(id.grants, Grants::all());
        }
        assert!(
            access
                .check(Some("not a token"), "ROOM", Grant::Moderate, NOW)
                .is_ok()
        );
    }

    #[test]
    fn token_mode_checks_everything() {
        let access = Access::Tokens(key());
        assert!(!access.is_dev());
        assert_eq!(
            access.check(None, "ABCD", Grant::Publish, NOW),
            Err(AuthError::Missing)
        );
        assert_eq!(
            access.check(Some(""), "ABCD", Grant::Publish, NOW),
            Err(AuthError::Missing)
        );
        assert_eq!(AuthError::Missing.code(), ErrorCode::TokenMissing);
        let token = key().mint(&claims());
        let id = access
            .check(Some(&token), "abcd", Grant::Publish, NOW)
            .unwrap();
        assert_eq!(
            id,
            Identity {
                identity: Some("alice".into()),
                name: Some("Alice".into()),
                grants: claims().grants,
            }
        );
        assert_eq!(
            access.check(Some(&token), "ABCD", Grant::Control, NOW),
            Err(AuthError::MissingGrant(Grant::Control))
        );
        assert!(matches!(
            access.check(Some(&token), "ABCD", Grant::Publish, NOW + 7_200),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn bearer_parses_the_authorization_header() {
        assert_eq!(bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER   abc  "), Some("abc"));
        assert_eq!(bearer("  Bearer\tabc"), Some("abc"));
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer   "), None);
        assert_eq!(bearer("Bearer a b"), None);
        assert_eq!(bearer("Basic YWxhZGRpbjpvcGVu"), None);
        assert_eq!(bearer("Bearerabc"), None);
        assert_eq!(bearer(""), None);
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = TokenKey::new(&[1u8; MIN_SECRET_BYTES - 1]).unwrap_err();
        assert_eq!(err, KeyError::TooShort { len: 31 });
        let message = err.to_string();
        assert!(message.contains("at least 32"), "{message}");
        assert!(message.contains("guess"), "{message}");
        assert!(TokenKey::new(b"").is_err());
        assert!(TokenKey::new(&[1u8; MIN_SECRET_BYTES]).is_ok());
    }

    #[test]
    fn key_debug_does_not_leak_the_secret() {
        let shown = format!("{:?}", Access::Tokens(key()));
        assert!(!shown.contains("0123456789"), "{shown}");
    }

    #[test]
    fn grant_names_round_trip() {
        for grant in Grant::ALL {
            assert_eq!(grant.as_str().parse::<Grant>(), Ok(grant));
            assert_eq!(grant.to_string(), grant.as_str());
            assert_eq!(
                serde_json::to_string(&grant).unwrap(),
                format!("\"{}\"", grant.as_str())
            );
            assert!(Grants::from_list(&[grant]).has(grant));
            let others = Grant::ALL.into_iter().filter(|g| *g != grant);
            assert!(others.clone().all(|g| !Grants::from_list(&[grant]).has(g)));
        }
        let err = "Publish".parse::<Grant>().unwrap_err();
        assert_eq!(err, UnknownGrant("Publish".into()));
        let message = err.to_string();
        for grant in Grant::ALL {
            assert!(message.contains(grant.as_str()), "{message}");
        }
    }

    #[test]
    fn utc_timestamps_match_known_dates() {
        // Expected values from Python's datetime.fromtimestamp(t, UTC).
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_767_225_599), "2025-12-31T23:59:59Z");
        assert_eq!(utc_timestamp(4_102_444_800), "2100-01-01T00:00:00Z");
        assert!(!utc_timestamp(u64::MAX).is_empty(), "no overflow panic");
    }
}
