//! WHIP ingest and WHEP playback (RFC 9725 and its egress counterpart): HTTP sessions whose
//! client sends the offer. A WHIP host is a room's host exactly like a browser host (same
//! rooms registry, same SFU publisher); a WHEP viewer is one of its viewers.
//!
//! - `POST /whip/{room}`, `POST /whep/{room}`: `application/sdp` offer → `201 Created` with
//!   the answer, `Location` (the session resource), `ETag` and TURN `Link` headers.
//! - `PATCH {resource}`: `application/trickle-ice-sdpfrag`: trickled candidates (`204`), or
//!   new ICE credentials, an ICE restart (`200` with the server's fragment and a new ETag).
//! - `DELETE {resource}` ends the session; so do a replacing host, a failed connection, one
//!   that never connects, and shutdown.
//! - `OPTIONS` answers what is accepted (CORS preflights are answered by the CORS layer).
//!
//! Errors are JSON `{"code","message"}` with the same stable codes as the WebSocket protocol.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use sfu::{ConnectionState, PeerId, SfuEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::AppState;
use crate::auth::{AuthError, Grant, Identity};
use crate::codes::{RoomCode, random_code};
use crate::errors::Failure;
use crate::join_trace::{JoinTrace, Stage};
use crate::mailbox::{OUTBOX_CAPACITY, Outbox, SFU_EVENTS_CAPACITY, SessionEvent, SessionId};
use crate::protocol::{ErrorCode, Role};
use crate::rooms::JoinRequest;
use crate::telemetry::JoinKind;
use crate::wall_clock;

/// Largest SDP body accepted. Real offers are a few KB; 64 KiB leaves room for many
/// m-sections and candidates without letting a client make the server buffer megabytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A session that has not connected by then is ended (the client went away mid-setup).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// Which protocol a resource speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whip,
    Whep,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }

    fn grant(self) -> Grant {
        match self {
            Kind::Whip => Grant::Publish,
            Kind::Whep => Grant::Subscribe,
        }
    }

    fn role(self) -> Role {
        match self {
            Kind::Whip => Role::Host,
            Kind::Whep => Role::Viewer,
        }
    }

    fn join_kind(self) -> JoinKind {
        match self {
            Kind::Whip => JoinKind::Whip,
            Kind::Whep => JoinKind::Whep,
        }
    }
}

/// The live WHIP/WHEP sessions of this node, by resource id. Cheap to clone.
#[derive(Clone, Default)]
pub struct Resources {
    inner: Arc<Mutex<HashMap<String, Resource>>>,
}

#[derive(Clone)]
struct Resource {
    kind: Kind,
    room: RoomCode,
    peer: PeerId,
    etag: String,
    /// The client's current ICE ufrag: a PATCH with another one is an ICE restart.
    remote_ufrag: Option<String>,
    /// Cancelled by `DELETE`: the session's task cleans up.
    end: CancellationToken,
}

impl Resources {
    fn get(&self, kind: Kind, room: &RoomCode, id: &str) -> Option<Resource> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|r| r.kind == kind && r.room == *room)
            .cloned()
    }

    fn insert(&self, id: String, resource: Resource) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(id, resource);
    }

    fn remove(&self, id: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Resource)) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get_mut(id) {
            f(r);
        }
    }
}

/// The WHIP and WHEP routes, with CORS. CORS preflights (an `OPTIONS` with
/// `Access-Control-Request-Method`) are answered by `cors`; a plain `OPTIONS` is answered
/// here, since the CORS layer would take every `OPTIONS` for a preflight.
pub fn routes(state: AppState, cors: tower_http::cors::CorsLayer) -> Router<AppState> {
    Router::new()
        .route("/whip/{room}", post(handle_post::<Whip>))
        .route("/whep/{room}", post(handle_post::<Whep>))
        .route(
            "/whip/{room}/{id}",
            axum::routing::patch(handle_patch::<Whip>).delete(handle_delete::<Whip>),
        )
        .route(
            "/whep/{room}/{id}",
            axum::routing::patch(handle_patch::<Whep>).delete(handle_delete::<Whep>),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(state, plain_options))
}

/// Answers an `OPTIONS` that is not a CORS preflight: what the endpoint or the session
/// resource accepts (and, for endpoints, the TURN servers).
async fn plain_options(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let preflight = request
        .headers()
        .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if request.method() != axum::http::Method::OPTIONS || preflight {
        return next.run(request).await;
    }
    let path: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    match path.as_slice() {
        [kind @ ("whip" | "whep"), room] => {
            let kind = if *kind == "whip" {
                Kind::Whip
            } else {
                Kind::Whep
            };
            options_endpoint(&state, request.headers(), kind, room)
        }
        [_, _, _] => options_resource(),
        _ => next.run(request).await,
    }
}

/// An HTTP error with a stable code, as JSON.
#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
}

impl HttpError {
    /// An error answered with the status (and `Retry-After`) the one error map gives `code`.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure::new(code, message.into()).into()
    }

    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub(crate) fn rate_limited(retry: crate::limits::RetryAfter) -> Self {
        let secs = retry.secs_ceil();
        Self::new(
            ErrorCode::RateLimited,
            format!("too many requests from this address; retry in {secs} s"),
        )
        .retry_after(secs)
    }

    pub(crate) fn auth(err: &AuthError) -> Self {
        Failure::from(err).into()
    }
}

/// A core failure answered over HTTP: the code and message the WebSocket would send, the
/// status (and `Retry-After`) the one error map derives from the code.
impl From<Failure> for HttpError {
    fn from(failure: Failure) -> Self {
        let (status, retry_after) = crate::errors::http_status(failure.code);
        Self {
            status,
            code: failure.code,
            message: failure.message,
            retry_after,
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"marquee\""),
            );
        }
        response
    }
}

/// Checks the `Content-Type` (ignoring parameters such as `charset`).
fn require_content_type(headers: &HeaderMap, expected: &str) -> Result<(), HttpError> {
    let actual = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if actual.as_deref() == Some(expected) {
        Ok(())
    } else {
        Err(HttpError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "expected Content-Type {expected}, got {}",
                actual.as_deref().unwrap_or("none")
            ),
        ))
    }
}

/// The request body as text: too large → 413, not UTF-8 → 400.
fn body_text(body: Result<Bytes, BytesRejection>, code: ErrorCode) -> Result<String, HttpError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::new(
                ErrorCode::MessageTooLarge,
                format!("the body exceeds {MAX_BODY_BYTES} bytes"),
            )
        } else {
            HttpError::new(code, rejection.body_text())
        }
    })?;
    String::from_utf8(body.to_vec()).map_err(|_| HttpError::new(code, "the body is not UTF-8 text"))
}

fn room_code(room: &str) -> Result<RoomCode, HttpError> {
    RoomCode::parse(room).map_err(|err| HttpError::from(Failure::from(err)))
}

/// Per-IP request budget for WHIP/WHEP (floods of POSTs are the expensive part: each one
/// creates a peer connection).
fn check_rate(state: &AppState, remote: SocketAddr) -> Result<(), HttpError> {
    state.limits.http.check(&remote.ip()).map_err(|retry| {
        state.metrics.rate_limited("http");
        HttpError::rate_limited(retry)
    })
}

fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    room: &RoomCode,
    grant: Grant,
) -> Result<Identity, HttpError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer);
    state
        .access
        .check(token, room.as_str(), grant, wall_clock::now_unix_secs())
        .map_err(|err| HttpError::auth(&err))
}

/// A route's protocol as a type, so one generic handler serves the WHIP and WHEP paths.
trait Endpoint: Send + 'static {
    const KIND: Kind;
}

struct Whip;
struct Whep;

impl Endpoint for Whip {
    const KIND: Kind = Kind::Whip;
}

impl Endpoint for Whep {
    const KIND: Kind = Kind::Whep;
}

async fn handle_post<E: Endpoint>(
    state: State<AppState>,
    remote: ConnectInfo<SocketAddr>,
    room: Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    create(E::KIND, state, remote, room, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn handle_patch<E: Endpoint>(
    state: State<AppState>,
    remote: ConnectInfo<SocketAddr>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    patch(E::KIND, state, remote, path, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn handle_delete<E: Endpoint>(
    state: State<AppState>,
    remote: ConnectInfo<SocketAddr>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(E::KIND, state, remote, path, headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /{whip|whep}/{room}`: creates the session.
async fn create(
    kind: Kind,
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    check_rate(&state, remote)?;
    require_content_type(&headers, SDP)?;
    let offer = body_text(body, ErrorCode::InvalidSdp)?;
    let room = room_code(&room)?;
    let mut trace = JoinTrace::start(kind.join_kind(), Some(room.as_str()));
    match create_session(kind, &state, &headers, &room, offer, &mut trace).await {
        Ok((response, session)) => {
            let span = tracing::info_span!(parent: trace.root(), "session", kind = kind.path());
            let sessions = state.sessions.clone();
            sessions.spawn(run_resource(state, session, trace).instrument(span));
            Ok(response)
        }
        Err(err) => {
            trace.refused(&state.metrics, err.code);
            Err(err)
        }
    }
}

/// What a session's task needs.
struct Session {
    id: String,
    session: SessionId,
    room: RoomCode,
    peer: PeerId,
    kind: Kind,
    outbox: mpsc::Receiver<SessionEvent>,
    sfu_events: mpsc::Receiver<SfuEvent>,
    end: CancellationToken,
}

async fn create_session(
    kind: Kind,
    state: &AppState,
    headers: &HeaderMap,
    room: &RoomCode,
    offer: String,
    trace: &mut JoinTrace,
) -> Result<(Response, Session), HttpError> {
    let identity = {
        let _stage = trace.stage(Stage::Authorize).entered();
        authorize(state, headers, room, kind.grant())?
    };
    let session = state.next_session_id();
    let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let name = identity
        .name
        .clone()
        .or_else(|| identity.identity.clone())
        .unwrap_or_else(|| kind.path().to_ascii_uppercase());
    let grant = state
        .rooms
        .join(JoinRequest {
            session,
            room: Some(room.clone()),
            name,
            role: kind.role(),
            host_key: None,
            identity: identity.identity.clone(),
            outbox: Outbox::new(outbox_tx),
            wants_room_state: false,
        })
        .instrument(trace.stage(Stage::Admit))
        .await
        .map_err(|refusal| HttpError::from(Failure::from(refusal)))?;
    let (sfu_tx, sfu_rx) = mpsc::channel(SFU_EVENTS_CAPACITY);
    let role = match kind {
        Kind::Whip => sfu::Role::Publisher,
        Kind::Whep => sfu::Role::Subscriber,
    };
    let remote_ufrag = ice_attribute(&offer, "ice-ufrag").map(str::to_owned);
    let added = state
        .sfu
        .add_peer_with_offer(sfu::RoomId::new(grant.room.as_str()), role, offer, sfu_tx)
        .instrument(trace.stage(Stage::Negotiate))
        .await;
    let (peer, answer) = match added {
        Ok(added) => added,
        Err(err) => {
            state.rooms.leave(session, grant.room).await;
            return Err(Failure::from(err).into());
        }
    };
    trace.negotiated();
    let id = random_code(24);
    let etag = random_code(16);
    let end = CancellationToken::new();
    state.resources.insert(
        id.clone(),
        Resource {
            kind,
            room: grant.room.clone(),
            peer,
            etag: etag.clone(),
            remote_ufrag,
            end: end.clone(),
        },
    );
    state.metrics.session_opened(kind.path());
    let location = format!("/{}/{}/{}", kind.path(), grant.room, id);
    let identity_for_turn = identity.identity.unwrap_or_else(|| session.to_string());
    let mut response = (StatusCode::CREATED, answer).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    insert_header(h, header::LOCATION, &location);
    insert_header(h, header::ETAG, &format!("\"{etag}\""));
    add_link_headers(state, h, &identity_for_turn);
    Ok((
        response,
        Session {
            id,
            session,
            room: grant.room,
            peer,
            kind,
            outbox: outbox_rx,
            sfu_events: sfu_rx,
            end,
        },
    ))
}

fn insert_header(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// TURN servers with fresh credentials, as RFC 9725 §4.6 `Link` headers.
fn add_link_headers(state: &AppState, headers: &mut HeaderMap, identity: &str) {
    let servers = state.ice_servers(identity);
    for link in crate::turn::link_headers(&servers) {
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.append(header::LINK, value);
        }
    }
}

/// A session's life after `201`: ends on DELETE, a replacing host, a failed connection, no
/// connection within [`CONNECT_TIMEOUT`], or shutdown; then frees everything it held.
async fn run_resource(state: AppState, mut session: Session, trace: JoinTrace) {
    let mut trace = Some(trace);
    let connect_deadline = tokio::time::sleep(CONNECT_TIMEOUT);
    tokio::pin!(connect_deadline);
    let reason = loop {
        tokio::select! {
            _ = session.end.cancelled() => break "deleted",
            _ = state.shutdown.cancelled() => break "server shutting down",
            _ = &mut connect_deadline, if trace.is_some() => {
                if let Some(trace) = trace.take() {
                    trace.refused(&state.metrics, ErrorCode::Internal);
                }
                break "no media connection within 30 s";
            }
            event = session.outbox.recv() => match event {
                Some(SessionEvent::Replaced) => break "replaced by a new session of the host",
                Some(_) => {} // room state is not sent to HTTP sessions (wants_room_state)
                None => break "rooms stopped",
            },
            Some(event) = session.sfu_events.recv() => {
                if let SfuEvent::Connection { state: connection, .. } = event {
                    match connection {
                        ConnectionState::Connected => {
                            if let Some(trace) = trace.take() {
                                trace.connected(&state.metrics);
                            }
                        }
                        ConnectionState::Failed | ConnectionState::Closed => {
                            break "media connection failed";
                        }
                        _ => {}
                    }
                }
            }
        }
    };
    tracing::debug!(resource = %session.id, reason, "session ended");
    state.resources.remove(&session.id);
    state.sfu.remove_peer(session.peer).await;
    state.rooms.leave(session.session, session.room).await;
    state.metrics.session_closed(session.kind.path());
}

/// Looks up the resource a request names and checks the caller's token for it.
fn find(
    kind: Kind,
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
    id: &str,
) -> Result<Resource, HttpError> {
    let room = room_code(room)?;
    let resource = state.resources.get(kind, &room, id).ok_or_else(|| {
        HttpError::new(
            ErrorCode::UnknownSession,
            "no such session (it ended, or never existed)",
        )
    })?;
    authorize(state, headers, &room, kind.grant())?;
    Ok(resource)
}

/// `PATCH {resource}`: trickle ICE or ICE restart (RFC 9725 §4.3).
async fn patch(
    kind: Kind,
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    check_rate(&state, remote)?;
    let resource = find(kind, &state, &headers, &room, &id)?;
    require_content_type(&headers, SDPFRAG)?;
    let fragment = body_text(body, ErrorCode::InvalidCandidate)?;
    let fragment = SdpFragment::parse(&fragment)
        .map_err(|message| HttpError::new(ErrorCode::InvalidCandidate, message))?;
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    let restart = match (&fragment.ufrag, &fragment.pwd) {
        (Some(ufrag), Some(_)) => resource.remote_ufrag.as_deref() != Some(ufrag.as_str()),
        _ => false,
    };
    if restart {
        // An ICE restart must say `If-Match: *` (§4.3.2).
        if if_match.map(str::trim) != Some("*") {
            // 428, not the code's 412: the precondition is missing, not failed (RFC 6585
            // §3), the one status of WHIP/WHEP the error map does not give.
            return Err(HttpError {
                status: StatusCode::PRECONDITION_REQUIRED,
                ..HttpError::new(
                    ErrorCode::PreconditionFailed,
                    "an ICE restart needs If-Match: *",
                )
            });
        }
        let (ufrag, pwd) = (
            fragment.ufrag.unwrap_or_default(),
            fragment.pwd.unwrap_or_default(),
        );
        let local = state
            .sfu
            .restart_ice(resource.peer, ufrag.clone(), pwd)
            .await
            .map_err(|err| HttpError::from(Failure::from(err)))?;
        let etag = random_code(16);
        state.resources.update(&id, |r| {
            r.etag = etag.clone();
            r.remote_ufrag = Some(ufrag);
        });
        let mut response = (StatusCode::OK, answer_fragment(&local)).into_response();
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
        insert_header(h, header::ETAG, &format!("\"{etag}\""));
        return Ok(response);
    }
    if let Some(tag) = if_match {
        let tag = tag.trim();
        if tag != "*" && tag.trim_matches('"') != resource.etag {
            return Err(HttpError::new(
                ErrorCode::PreconditionFailed,
                "If-Match does not match the session's current ETag (an ICE restart happened)",
            ));
        }
    }
    for candidate in fragment.candidates {
        state
            .sfu
            .candidate(
                resource.peer,
                sfu::IceCandidateInit {
                    candidate,
                    sdp_mid: fragment.mid.clone(),
                    sdp_mline_index: Some(0),
                    username_fragment: fragment.ufrag.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| HttpError::from(Failure::from(err)))?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE {resource}`: ends the session (its task frees the peer and the room seat).
async fn delete(
    kind: Kind,
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    check_rate(&state, remote)?;
    let resource = find(kind, &state, &headers, &room, &id)?;
    // Gone from lookups at once, so a repeated DELETE is a 404 rather than a race.
    state.resources.remove(&id);
    resource.end.cancel();
    Ok(StatusCode::OK.into_response())
}

/// `OPTIONS /{whip|whep}/{room}`: what the endpoint takes, and the TURN servers a client
/// may want before it creates its connection. TURN credentials only go to a caller whose
/// token would be accepted by the `POST`: handing them to anyone would make the TURN
/// server an open relay.
fn options_endpoint(state: &AppState, headers: &HeaderMap, kind: Kind, room: &str) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let identity = room_code(room)
        .ok()
        .and_then(|room| authorize(state, headers, &room, kind.grant()).ok());
    let h = response.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
    h.insert("accept-post", HeaderValue::from_static(SDP));
    if let Some(identity) = identity {
        let name = identity.identity.unwrap_or_else(|| "anonymous".into());
        add_link_headers(state, h, &name);
    }
    response
}

fn options_resource() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ALLOW,
        HeaderValue::from_static("OPTIONS, PATCH, DELETE"),
    );
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    response
}

/// The value of the first `a={name}:` line of an SDP.
fn ice_attribute<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix("a=")
            .and_then(|rest| rest.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// A trickle-ice-sdpfrag body (RFC 8840): ICE credentials, candidates and the media
/// section they belong to.
#[derive(Debug, Default, PartialEq)]
struct SdpFragment {
    ufrag: Option<String>,
    pwd: Option<String>,
    mid: Option<String>,
    /// `candidate:...` strings (without `a=`).
    candidates: Vec<String>,
}

/// Most lines a fragment may have; a real one has a handful per candidate.
const MAX_FRAGMENT_LINES: usize = 256;

impl SdpFragment {
    fn parse(text: &str) -> Result<Self, String> {
        let mut fragment = SdpFragment::default();
        for (n, line) in text.lines().enumerate() {
            if n >= MAX_FRAGMENT_LINES {
                return Err(format!("more than {MAX_FRAGMENT_LINES} lines"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let Some((kind, value)) = line.split_once('=') else {
                return Err(format!("line {} is not an SDP line: {line:?}", n + 1));
            };
            match kind {
                "a" => {
                    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                    match name {
                        "ice-ufrag" => fragment.ufrag = Some(arg.to_owned()),
                        "ice-pwd" => fragment.pwd = Some(arg.to_owned()),
                        "mid" => fragment.mid = Some(arg.to_owned()),
                        "candidate" => {
                            if arg.split_whitespace().count() < 8 {
                                return Err(format!("malformed candidate on line {}", n + 1));
                            }
                            fragment.candidates.push(value.to_owned());
                        }
                        // ice-options, end-of-candidates, group, ...: nothing to act on.
                        _ => {}
                    }
                }
                "m" | "c" | "o" | "s" | "t" | "v" | "b" => {}
                _ => return Err(format!("unexpected SDP line {}: {line:?}", n + 1)),
            }
        }
        if fragment.ufrag.is_some() != fragment.pwd.is_some() {
            return Err("ice-ufrag and ice-pwd come together".into());
        }
        Ok(fragment)
    }
}

/// The server's side of an ICE restart, as a fragment: its credentials and candidates under
/// the first media section (all sections are bundled).
fn answer_fragment(local_sdp: &str) -> String {
    let mut out = String::new();
    if local_sdp.lines().any(|l| l.trim_end() == "a=ice-lite") {
        out.push_str("a=ice-lite\r\n");
    }
    for name in ["ice-ufrag", "ice-pwd"] {
        if let Some(value) = ice_attribute(local_sdp, name) {
            out.push_str(&format!("a={name}:{value}\r\n"));
        }
    }
    if let Some(m) = local_sdp.lines().find(|l| l.starts_with("m=")) {
        out.push_str(m.trim_end());
        out.push_str("\r\n");
    }
    if let Some(mid) = ice_attribute(local_sdp, "mid") {
        out.push_str(&format!("a=mid:{mid}\r\n"));
    }
    let mut seen = std::collections::HashSet::new();
    for line in local_sdp.lines().map(str::trim_end) {
        if line.starts_with("a=candidate:") && seen.insert(line) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("a=end-of-candidates\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An overloaded media plane is `503 full` with a short `Retry-After`, like a full node.
    #[test]
    fn an_overloaded_sfu_is_503_full_with_retry_after() {
        let e = HttpError::from(Failure::from(sfu::SfuError::Overloaded));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, ErrorCode::Full);
        assert_eq!(e.retry_after, Some(2));
    }

    #[test]
    fn fragments_parse_candidates_and_credentials() {
        let text = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\na=end-of-candidates\r\n";
        let f = SdpFragment::parse(text).unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(f.mid.as_deref(), Some("0"));
        assert_eq!(f.candidates.len(), 1);
        assert!(f.candidates[0].starts_with("candidate:1387637174 1 udp"));
    }

    #[test]
    fn malformed_fragments_are_refused() {
        for bad in [
            "hello",
            "a=candidate:1 1 udp",
            "a=ice-ufrag:x\r\n",
            "x=unknown line",
            &"a=mid:0\r\n".repeat(MAX_FRAGMENT_LINES + 1),
        ] {
            assert!(SdpFragment::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(SdpFragment::parse("").unwrap(), SdpFragment::default());
    }

    #[test]
    fn restart_answer_carries_credentials_and_candidates() {
        let local = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:secretsecretsecretsecret\r\na=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n";
        let f = answer_fragment(local);
        assert!(f.starts_with(
            "a=ice-lite\r\na=ice-ufrag:abcd\r\na=ice-pwd:secretsecretsecretsecret\r\nm=video"
        ));
        assert_eq!(f.matches("a=candidate:").count(), 1, "{f}");
        assert!(f.ends_with("a=end-of-candidates\r\n"));
        assert_eq!(ice_attribute(local, "mid"), Some("0"));
    }
}
