//! WHIP and WHEP clients (RFC 9725): a [`Publisher`] or a receive-only [`Subscriber`] whose
//! session is an HTTP resource. The offer is sent once ICE gathering completes (no trickle),
//! as most WHIP encoders do; `PATCH` and `DELETE` are available for the tests of trickle,
//! ICE restart and teardown.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use webrtc::peer_connection::RTCSessionDescription;

use crate::publisher::Publisher;
use crate::subscriber::Subscriber;

/// An HTTP answer of a WHIP/WHEP endpoint, kept whole so tests can check every part.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header (`Link` repeats).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    /// The `code` of a JSON error body.
    pub fn error_code(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        value.get("code")?.as_str().map(str::to_owned)
    }
}

/// A minimal HTTP client for WHIP/WHEP endpoints of one server.
#[derive(Clone, Debug)]
pub struct WhipHttp {
    client: reqwest::Client,
    base: String,
}

impl WhipHttp {
    pub fn new(server: SocketAddr) -> Self {
        Self::from_ip(server, None)
    }

    /// Requests from a chosen local IP (another loopback address is another client to the
    /// server's per-IP limits).
    pub fn from_ip(server: SocketAddr, local: Option<std::net::IpAddr>) -> Self {
        Self::with_base(format!("http://{server}"), local)
    }

    fn with_base(base: String, local: Option<std::net::IpAddr>) -> Self {
        let client = reqwest::Client::builder()
            .local_address(local)
            .build()
            .expect("a plain HTTP client builds");
        Self { client, base }
    }

    /// A client for the server of an `http://host:port/path` URL (any WHEP server's
    /// endpoint), and the URL's path.
    pub fn from_url(url: &str) -> Result<(Self, String)> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// endpoints are supported"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            bail!("{url}: no host");
        }
        let path = if path.is_empty() { "/" } else { path };
        Ok((
            Self::with_base(format!("http://{authority}"), None),
            path.to_owned(),
        ))
    }

    /// Sends any request: `path` is absolute (`/whip/ROOM`, or a `Location`), or a whole
    /// `http://` URL (a `Location` on another host).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Result<HttpReply> {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut request = self.client.request(method.clone(), url).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        Ok(HttpReply {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap_or_default(),
        })
    }

    /// `POST` an SDP offer with an optional bearer token.
    pub async fn post_offer(
        &self,
        path: &str,
        offer: &str,
        token: Option<&str>,
    ) -> Result<HttpReply> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![(header::CONTENT_TYPE.as_str(), "application/sdp")];
        if let Some(bearer) = &bearer {
            headers.push((header::AUTHORIZATION.as_str(), bearer));
        }
        self.request(reqwest::Method::POST, path, &headers, offer.to_owned())
            .await
    }
}

/// How often, and how far apart, a WHEP player offers again while the room is `404
/// room_not_live` (a host between its first and last track, a few milliseconds; or not live
/// at all, then the player gives up after about 5 s).
const NOT_LIVE_RETRIES: u32 = 25;
const NOT_LIVE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

/// A live WHIP or WHEP session: its resource URL and ETag.
#[derive(Debug, Clone)]
pub struct WhipSession {
    pub location: String,
    pub etag: String,
    pub token: Option<String>,
    /// The 201 reply (answer, Link headers).
    pub created: HttpReply,
}

impl WhipSession {
    fn from_created(reply: HttpReply, token: Option<&str>) -> Result<Self> {
        if reply.status != StatusCode::CREATED {
            bail!("expected 201 Created, got {}: {}", reply.status, reply.body);
        }
        let location = reply
            .header("location")
            .context("201 without Location")?
            .to_owned();
        let etag = reply.header("etag").context("201 without ETag")?.to_owned();
        Ok(Self {
            location,
            etag,
            token: token.map(str::to_owned),
            created: reply,
        })
    }

    fn auth_headers(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// `PATCH` an SDP fragment, with `If-Match` when given.
    pub async fn patch(
        &self,
        http: &WhipHttp,
        fragment: &str,
        if_match: Option<&str>,
    ) -> Result<HttpReply> {
        let bearer = self.auth_headers();
        let mut headers = vec![(
            header::CONTENT_TYPE.as_str(),
            "application/trickle-ice-sdpfrag",
        )];
        if let Some(bearer) = &bearer {
            headers.push((header::AUTHORIZATION.as_str(), bearer));
        }
        if let Some(tag) = if_match {
            headers.push((header::IF_MATCH.as_str(), tag));
        }
        http.request(
            reqwest::Method::PATCH,
            &self.location,
            &headers,
            fragment.to_owned(),
        )
        .await
    }

    /// `DELETE` the session.
    pub async fn delete(&self, http: &WhipHttp) -> Result<HttpReply> {
        let bearer = self.auth_headers();
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![(header::AUTHORIZATION.as_str(), b)])
            .unwrap_or_default();
        http.request(reqwest::Method::DELETE, &self.location, &headers, "")
            .await
    }
}

impl Publisher {
    /// Publishes to `POST /whip/{room}`: offers (all candidates gathered), applies the answer.
    pub async fn publish_whip(
        &self,
        http: &WhipHttp,
        room: &str,
        token: Option<&str>,
    ) -> Result<WhipSession> {
        self.create_offer().await?;
        let offer = self.peer().local_description_after_gathering().await?;
        let reply = http
            .post_offer(&format!("/whip/{room}"), &offer, token)
            .await?;
        let session = WhipSession::from_created(reply, token)?;
        self.apply_answer(&session.created.body).await?;
        Ok(session)
    }
}

impl Subscriber {
    /// A receive-only offer for one audio and one video track, as a WHEP player makes it,
    /// with every candidate gathered.
    pub async fn offer_recvonly(&self) -> Result<String> {
        let pc = self.peer().pc();
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            pc.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await?;
        }
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        self.peer().local_description_after_gathering().await
    }

    /// Watches `POST /whep/{room}`: offers receive-only, applies the answer.
    pub async fn watch_whep(
        &self,
        http: &WhipHttp,
        room: &str,
        token: Option<&str>,
    ) -> Result<WhipSession> {
        self.watch_whep_at(http, &format!("/whep/{room}"), token)
            .await
    }

    /// Watches the WHEP endpoint at `path` of `http`'s server (any WHEP server).
    pub async fn watch_whep_at(
        &self,
        http: &WhipHttp,
        path: &str,
        token: Option<&str>,
    ) -> Result<WhipSession> {
        let offer = self.offer_recvonly().await?;
        let mut reply = http.post_offer(path, &offer, token).await?;
        // A host starting its tracks is "not live yet" for a moment, and the server asks
        // players to retry then (as the web demo's `whep.js` does): the same offer again.
        for _ in 0..NOT_LIVE_RETRIES {
            let not_live = reply.status == StatusCode::NOT_FOUND
                && reply.error_code().as_deref() == Some("room_not_live");
            if !not_live {
                break;
            }
            tokio::time::sleep(NOT_LIVE_BACKOFF).await;
            reply = http.post_offer(path, &offer, token).await?;
        }
        let session = WhipSession::from_created(reply, token)?;
        self.peer()
            .pc()
            .set_remote_description(RTCSessionDescription::answer(session.created.body.clone())?)
            .await
            .context("applying the WHEP answer")?;
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_url_splits_into_server_and_path() {
        let (http, path) = WhipHttp::from_url("http://127.0.0.1:8889/live/cam/whep").unwrap();
        assert_eq!(
            (http.base.as_str(), path.as_str()),
            ("http://127.0.0.1:8889", "/live/cam/whep")
        );
        let (http, path) = WhipHttp::from_url("http://media.example:80").unwrap();
        assert_eq!(
            (http.base.as_str(), path.as_str()),
            ("http://media.example:80", "/")
        );
        assert!(WhipHttp::from_url("https://tls.example/whep").is_err());
        assert!(WhipHttp::from_url("http:///whep").is_err());
    }
}
