//! TURN credentials in the coturn REST scheme (draft-uberti-behave-turn-rest-00 §2.2; coturn's
//! `use-auth-secret`), and the ways clients receive them: the browser's `RTCIceServer` shape
//! for the WebSocket protocol and `Link` headers for WHIP/WHEP (RFC 9725 §4.6).
//!
//! The TURN server and this server share a secret. For each client we make a username
//! `"{expiry}:{identity}"` and a password `base64(HMAC-SHA1(secret, username))`; the TURN
//! server recomputes the HMAC and checks the expiry, so no per-user state is shared and the
//! credentials stop working by themselves.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Longest identity put in a TURN username, in bytes; longer ones are cut (at a character
/// boundary). STUN's USERNAME must be under 509 bytes (RFC 8489 §14.3); the identity only
/// serves the TURN server's logs, so a short prefix loses nothing.
pub const MAX_IDENTITY_BYTES: usize = 256;

/// One TURN deployment sharing a secret with this server.
#[derive(Clone)]
pub struct TurnConfig {
    /// Its URLs as clients should use them: `turn:host:3478?transport=udp`,
    /// `turns:host:5349?transport=tcp`, and possibly `stun:host:3478`.
    pub urls: Vec<String>,
    /// The secret shared with the TURN server (coturn `static-auth-secret`). Empty: no
    /// credentials, so only `stun:` URLs are handed out (see [`ice_servers`]).
    pub secret: String,
    /// How long handed-out credentials stay valid. Clients that stay longer keep working:
    /// TURN checks credentials when an allocation is made and refreshed, and coturn keeps
    /// existing allocations; a new join gets fresh credentials.
    pub ttl: Duration,
}

impl fmt::Debug for TurnConfig {
    /// Never prints the secret: configs get logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("secret", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

pub use marquee_protocol::ice::IceServer;

/// The TURN username and password for `identity`, valid until `now_unix + ttl` (whole
/// seconds; sub-second parts of `ttl` are dropped).
///
/// The identity is cleaned first ([`MAX_IDENTITY_BYTES`]; control characters become `_`), and
/// every `:` becomes `_`: TURN servers split the username at `:` (coturn's
/// `rest-api-separator`) to find the expiry, and coturn even accepts `identity:expiry`, so an
/// identity with its own `:` could be read as the timestamp part.
pub fn credentials(secret: &str, identity: &str, now_unix: u64, ttl: Duration) -> (String, String) {
    let expiry = now_unix.saturating_add(ttl.as_secs());
    let username = format!("{expiry}:{}", clean_identity(identity));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    (username, STANDARD.encode(tag.as_ref()))
}

/// The ICE servers to hand a client, one per configured deployment, with credentials for
/// `identity`.
///
/// A deployment without a secret keeps only its `stun:` URLs, and is left out when none
/// remain: browsers throw `InvalidAccessError` for a `turn:` URL without a username and
/// credential, which would break the client's whole `RTCPeerConnection`.
pub fn ice_servers(turn: &[TurnConfig], identity: &str, now_unix: u64) -> Vec<IceServer> {
    turn.iter()
        .filter_map(|config| {
            if config.secret.is_empty() {
                let urls: Vec<String> = config
                    .urls
                    .iter()
                    .filter(|url| !is_turn_url(url))
                    .cloned()
                    .collect();
                return (!urls.is_empty()).then_some(IceServer {
                    urls,
                    username: None,
                    credential: None,
                });
            }
            let (username, credential) =
                credentials(&config.secret, identity, now_unix, config.ttl);
            Some(IceServer {
                urls: config.urls.clone(),
                username: Some(username),
                credential: Some(credential),
            })
        })
        .collect()
}

/// One `Link` header value per URL (RFC 9725 §4.6, RFC 8288 syntax), e.g.
/// `<turn:turn.example.net?transport=udp>; rel="ice-server"; username="user";
/// credential="pass"; credential-type="password"`. `stun:` URLs carry no credentials, as in
/// the RFC's example.
pub fn link_headers(servers: &[IceServer]) -> Vec<String> {
    let mut links = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{}>; rel=\"ice-server\"", link_target(url));
            if let (true, Some(username), Some(credential)) = (
                is_turn_url(url),
                server.username.as_deref(),
                server.credential.as_deref(),
            ) {
                link.push_str(&format!(
                    "; username={}; credential={}; credential-type=\"password\"",
                    quoted(username),
                    quoted(credential)
                ));
            }
            links.push(link);
        }
    }
    links
}

/// Whether `url` is a `turn:` or `turns:` URI (RFC 7065), which needs credentials.
fn is_turn_url(url: &str) -> bool {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("turn") || scheme.eq_ignore_ascii_case("turns")
}

/// The identity as it goes into a username: at most [`MAX_IDENTITY_BYTES`], with `:` and
/// control characters (which no header or log line should carry) replaced by `_`.
fn clean_identity(identity: &str) -> String {
    let mut end = identity.len().min(MAX_IDENTITY_BYTES);
    while !identity.is_char_boundary(end) {
        end -= 1;
    }
    identity[..end]
        .chars()
        .map(|c| if c == ':' || c.is_control() { '_' } else { c })
        .collect()
}

/// `url` made safe between `<` and `>`: characters that cannot appear in a URI there are
/// percent-encoded (RFC 3986 §2.1), so a stray `>` or space cannot end the target early.
fn link_target(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for byte in url.bytes() {
        if byte.is_ascii_graphic() && !matches!(byte, b'<' | b'>' | b'"') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `value` as an HTTP quoted-string (RFC 9110 §5.6.4): `"` and `\` are escaped. Control
/// characters other than tab cannot be represented at all and become `_`; [`credentials`]
/// never produces them.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push(c),
            c if c.is_control() => out.push('_'),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn credentials_match_an_independent_hmac() {
        // Expected credential computed outside Rust:
        // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(
        //   b"north-pole-secret", b"1700086400:alice", hashlib.sha1).digest()).decode())'
        let (username, credential) = credentials("north-pole-secret", "alice", 1_700_000_000, DAY);
        assert_eq!(username, "1700086400:alice");
        assert_eq!(credential, "SBwK4ogzFQ8RhT49jZKOyHuVTsc=");
    }

    #[test]
    fn username_is_expiry_then_identity() {
        let (username, _) = credentials("s", "bob", 1_000, Duration::from_millis(1_500));
        assert_eq!(username, "1001:bob", "whole seconds of the TTL");
        let (username, _) = credentials("s", "bob", u64::MAX - 1, DAY);
        assert_eq!(username, format!("{}:bob", u64::MAX), "saturates");
        let (_, other) = credentials("t", "bob", 1_000, Duration::from_secs(1));
        let (_, same) = credentials("s", "bob", 1_000, Duration::from_secs(1));
        assert_ne!(other, same, "the secret matters");
    }

    #[test]
    fn colons_and_control_characters_in_the_identity_are_replaced() {
        let (username, credential) = credentials("s", "a:b\nc", 10, Duration::from_secs(5));
        assert_eq!(username, "15:a_b_c");
        assert_eq!(username.matches(':').count(), 1);
        // The credential signs the cleaned username, the one the client will present.
        assert_eq!(
            credential,
            credentials("s", "a_b_c", 10, Duration::from_secs(5)).1
        );
    }

    #[test]
    fn long_identities_are_cut_at_a_character_boundary() {
        let identity = "é".repeat(MAX_IDENTITY_BYTES); // 2 bytes each
        let (username, _) = credentials("s", &identity, 0, Duration::ZERO);
        let kept = username.strip_prefix("0:").unwrap();
        assert_eq!(kept.len(), MAX_IDENTITY_BYTES);
        assert!(kept.chars().all(|c| c == 'é'));
        let odd = format!("x{identity}");
        let (username, _) = credentials("s", &odd, 0, Duration::ZERO);
        assert_eq!(username.len() - 2, MAX_IDENTITY_BYTES - 1);
    }

    fn config(urls: &[&str], secret: &str) -> TurnConfig {
        TurnConfig {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            secret: secret.into(),
            ttl: DAY,
        }
    }

    #[test]
    fn ice_servers_get_credentials_per_deployment() {
        let turn = [
            config(
                &["turn:a.example:3478?transport=udp", "turns:a.example:5349"],
                "north-pole-secret",
            ),
            config(&["turn:b.example:3478"], "other-secret"),
        ];
        let servers = ice_servers(&turn, "alice", 1_700_000_000);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls, turn[0].urls);
        assert_eq!(servers[0].username.as_deref(), Some("1700086400:alice"));
        assert_eq!(
            servers[0].credential.as_deref(),
            Some("SBwK4ogzFQ8RhT49jZKOyHuVTsc=")
        );
        let expected = credentials("other-secret", "alice", 1_700_000_000, DAY);
        assert_eq!(servers[1].credential, Some(expected.1));
    }

    #[test]
    fn deployments_without_secret_keep_only_stun_urls() {
        let turn = [
            config(&["stun:s.example:3478", "TURN:s.example:3478"], ""),
            config(&["turns:t.example:5349"], ""),
        ];
        let servers = ice_servers(&turn, "alice", 0);
        assert_eq!(
            servers,
            vec![IceServer {
                urls: vec!["stun:s.example:3478".into()],
                username: None,
                credential: None,
            }]
        );
        assert!(ice_servers(&[], "alice", 0).is_empty());
    }

    #[test]
    fn ice_server_serializes_as_rtc_ice_server() {
        let with = IceServer {
            urls: vec!["turn:t.example".into()],
            username: Some("1:a".into()),
            credential: Some("c".into()),
        };
        assert_eq!(
            serde_json::to_string(&with).unwrap(),
            r#"{"urls":["turn:t.example"],"username":"1:a","credential":"c"}"#
        );
        let without = IceServer {
            urls: vec!["stun:s.example".into()],
            username: None,
            credential: None,
        };
        assert_eq!(
            serde_json::to_string(&without).unwrap(),
            r#"{"urls":["stun:s.example"]}"#
        );
        let parsed: IceServer = serde_json::from_str(r#"{"urls":["stun:s.example"]}"#).unwrap();
        assert_eq!(parsed, without);
    }

    #[test]
    fn link_headers_follow_rfc_9725() {
        // The example of RFC 9725 §4.6.
        let servers = [
            IceServer {
                urls: vec!["stun:stun.example.net".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec![
                    "turn:turn.example.net?transport=udp".into(),
                    "stun:turn.example.net".into(),
                ],
                username: Some("user".into()),
                credential: Some("myPassword".into()),
            },
        ];
        assert_eq!(
            link_headers(&servers),
            vec![
                r#"<stun:stun.example.net>; rel="ice-server""#,
                r#"<turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; credential="myPassword"; credential-type="password""#,
                r#"<stun:turn.example.net>; rel="ice-server""#,
            ]
        );
    }

    #[test]
    fn link_headers_escape_quoted_strings_and_targets() {
        let servers = [IceServer {
            urls: vec!["turns:t.example?x=<a b>".into()],
            username: Some(r#"1:say "hi" \o/"#.into()),
            credential: Some("c\r\n".into()),
        }];
        assert_eq!(
            link_headers(&servers),
            vec![
                r#"<turns:t.example?x=%3Ca%20b%3E>; rel="ice-server"; username="1:say \"hi\" \\o/"; credential="c__"; credential-type="password""#
            ]
        );
    }

    #[test]
    fn turn_urls_without_credentials_get_none_in_links() {
        let servers = [IceServer {
            urls: vec!["turn:t.example".into()],
            username: Some("u".into()),
            credential: None,
        }];
        assert_eq!(
            link_headers(&servers),
            vec![r#"<turn:t.example>; rel="ice-server""#]
        );
    }

    #[test]
    fn turn_config_debug_hides_the_secret() {
        let shown = format!("{:?}", config(&["turn:t.example"], "north-pole-secret"));
        assert!(!shown.contains("north-pole"), "{shown}");
        assert!(shown.contains("turn:t.example"), "{shown}");
    }
}
