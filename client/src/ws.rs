//! The JSON protocol over a WebSocket: [`WsClient`] (`send`, `send_raw` for malformed
//! input, and `recv*` that never wait longer than a bound, [`RECV_TIMEOUT`] by default).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{TaskGuard, tokio_now};
use marquee_protocol::wire::{
    ClientMessage, ErrorBody, ErrorCode, Limits, PROTOCOL_VERSION, Role, RoomMessage, ServerMessage,
};

/// How long any `recv`, connect or negotiation step waits by default before failing. Generous
/// for loopback (everything normally takes milliseconds) so a slow CI machine does not flake,
/// yet bounded so a bug fails the test instead of hanging it.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

// ── WebSocket ────────────────────────────────────────────────────────────────────────────────

/// A server `error` message, as an error value: `recv_until` and `join` fail with it when the
/// server reports an error the caller was not waiting for. Get the code back with
/// [`server_error_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError(pub ErrorBody);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The wire code (`room_not_found`), which is what users look up in docs/protocol.md.
        let code = serde_json::to_value(self.0.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", self.0.code));
        write!(f, "server error {code}: {}", self.0.message)
    }
}

impl std::error::Error for ServerError {}

/// The code of the [`ServerError`] inside `err`, if that is what it is.
pub fn server_error_code(err: &anyhow::Error) -> Option<ErrorCode> {
    err.downcast_ref::<ServerError>().map(|e| e.0.code)
}

/// The answer to a successful `join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub room: String,
    pub peer_id: String,
    pub role: Role,
    pub host_key: Option<String>,
    pub limits: Limits,
    /// STUN/TURN servers the server handed out (with TURN credentials).
    pub ice_servers: Vec<marquee_protocol::ice::IceServer>,
}

impl Joined {
    /// The fields of a `joined` message; `None` for any other message.
    pub fn from_message(message: ServerMessage) -> Option<Self> {
        match message {
            ServerMessage::Joined {
                version: _,
                room,
                peer_id,
                role,
                host_key,
                limits,
                ice_servers,
            } => Some(Self {
                room,
                peer_id,
                role,
                host_key,
                limits,
                ice_servers,
            }),
            _ => None,
        }
    }
}

/// The sending half of a WebSocket connection; cheap to clone. Messages are queued to a writer
/// task in order, so `send` does not wait for the network.
#[derive(Clone)]
pub struct WsSender {
    tx: mpsc::UnboundedSender<Message>,
}

impl WsSender {
    pub fn send(&self, message: &ClientMessage) -> Result<()> {
        self.send_raw(serde_json::to_string(message)?)
    }

    /// Sends any text frame, e.g. malformed JSON for error-path tests.
    pub fn send_raw(&self, text: impl Into<String>) -> Result<()> {
        self.send_frame(Message::text(text.into()))
    }

    /// Sends any WebSocket frame (binary, close, …).
    pub fn send_frame(&self, frame: Message) -> Result<()> {
        self.tx
            .send(frame)
            .map_err(|_| anyhow!("the WebSocket writer has stopped (connection closed)"))
    }
}

/// The receiving half: server messages in arrival order. Every wait is bounded.
pub struct WsReceiver {
    pub(crate) rx: mpsc::UnboundedReceiver<Result<ServerMessage>>,
}

impl WsReceiver {
    /// The next message, within [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Result<ServerMessage> {
        self.recv_within(RECV_TIMEOUT).await
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> Result<ServerMessage> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(item)) => item,
            Ok(None) => bail!("WebSocket closed"),
            Err(_) => bail!("no server message within {timeout:?}"),
        }
    }

    /// The first message matching `pred` within [`RECV_TIMEOUT`], skipping others (such as
    /// `roomState`, which the server sends at any time). An `error` message that `pred` does not
    /// match fails the wait with a [`ServerError`] rather than being skipped.
    pub async fn recv_until(
        &mut self,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.recv_until_within(RECV_TIMEOUT, pred).await
    }

    pub async fn recv_until_within(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        let deadline = tokio_now() + timeout;
        let mut skipped = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(message))) if pred(&message) => return Ok(message),
                Ok(Some(Ok(ServerMessage::Error(body)))) => {
                    return Err(anyhow::Error::new(ServerError(body)))
                        .with_context(|| format!("while waiting; skipped {skipped:?}"));
                }
                Ok(Some(Ok(other))) => skipped.push(message_type(&other)),
                Ok(Some(Err(err))) => return Err(err),
                Ok(None) => bail!("WebSocket closed while waiting; skipped {skipped:?}"),
                Err(_) => bail!("no matching message within {timeout:?}; skipped {skipped:?}"),
            }
        }
    }

    /// Waits for an `error` message (skipping others) and checks its code.
    pub async fn expect_error(&mut self, code: ErrorCode) -> Result<ErrorBody> {
        match self
            .recv_until(|m| matches!(m, ServerMessage::Error(_)))
            .await?
        {
            ServerMessage::Error(body) if body.code == code => Ok(body),
            ServerMessage::Error(body) => bail!("expected error {code:?}, got {body:?}"),
            _ => unreachable!("recv_until returned a non-error"),
        }
    }

    /// A message already received, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<ServerMessage>> {
        self.rx.try_recv().ok()
    }

    /// Waits until the server closes the connection, skipping any messages before that.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio_now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(_) => bail!("connection still open after {timeout:?}"),
            }
        }
    }
}

/// A WebSocket client of `ws://ADDR/ws` speaking [`ClientMessage`] / [`ServerMessage`].
/// Dropping it closes the connection abruptly (both tasks aborted, TCP closed); [`close`]
/// sends a close frame first.
///
/// [`close`]: WsClient::close
pub struct WsClient {
    sender: WsSender,
    receiver: WsReceiver,
    tasks: TaskGuard,
}

impl WsClient {
    pub async fn connect(server: SocketAddr) -> Result<Self> {
        Self::connect_url(&format!("ws://{server}/ws")).await
    }

    pub async fn connect_url(url: &str) -> Result<Self> {
        let (stream, _response) =
            tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
                .await
                .with_context(|| format!("connecting to {url} timed out"))?
                .with_context(|| format!("connecting to {url}"))?;
        Ok(Self::from_stream(stream))
    }

    /// Connects from a chosen local address (another loopback IP, 127.0.0.2, is another
    /// client to the server's per-IP limits). Fails with the server's HTTP status, e.g. a
    /// `429` from the upgrade limit.
    pub async fn connect_from(server: SocketAddr, local: std::net::IpAddr) -> Result<Self> {
        let url = format!("ws://{server}/ws");
        let socket = match local {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let connect = async {
            let tcp = socket.connect(server).await?;
            let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
            anyhow::Ok(tokio_tungstenite::client_async(url.as_str(), stream).await?)
        };
        let (stream, _response) = tokio::time::timeout(RECV_TIMEOUT, connect)
            .await
            .with_context(|| format!("connecting to {url} timed out"))?
            .with_context(|| format!("connecting to {url} from {local}"))?;
        Ok(Self::from_stream(stream))
    }

    fn from_stream(
        stream: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Self {
        let (mut sink, mut stream) = stream.split();

        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                let is_close = matches!(frame, Message::Close(_));
                if sink.send(frame).await.is_err() || is_close {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                let item = match frame {
                    Ok(Message::Text(text)) => serde_json::from_str::<ServerMessage>(&text)
                        .with_context(|| format!("undecodable server message: {}", text.as_str())),
                    Ok(Message::Binary(data)) => {
                        Err(anyhow!("unexpected binary frame of {} bytes", data.len()))
                    }
                    Ok(Message::Close(_)) => break,
                    // Pings are answered by tungstenite itself.
                    Ok(_) => continue,
                    Err(err) => Err(anyhow!("WebSocket read failed: {err}")),
                };
                let failed = item.is_err();
                if in_tx.send(item).is_err() || failed {
                    break;
                }
            }
        });

        Self {
            sender: WsSender { tx: out_tx },
            receiver: WsReceiver { rx: in_rx },
            tasks: TaskGuard(vec![writer, reader]),
        }
    }

    /// A clone of the sending half, e.g. for a task that trickles candidates.
    pub fn sender(&self) -> WsSender {
        self.sender.clone()
    }

    pub fn receiver(&mut self) -> &mut WsReceiver {
        &mut self.receiver
    }

    pub fn send(&self, message: &ClientMessage) -> Result<()> {
        self.sender.send(message)
    }

    pub fn send_raw(&self, text: impl Into<String>) -> Result<()> {
        self.sender.send_raw(text)
    }

    pub async fn recv(&mut self) -> Result<ServerMessage> {
        self.receiver.recv().await
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> Result<ServerMessage> {
        self.receiver.recv_within(timeout).await
    }

    pub async fn recv_until(
        &mut self,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.receiver.recv_until(pred).await
    }

    pub async fn recv_until_within(
        &mut self,
        timeout: Duration,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.receiver.recv_until_within(timeout, pred).await
    }

    pub async fn expect_error(&mut self, code: ErrorCode) -> Result<ErrorBody> {
        self.receiver.expect_error(code).await
    }

    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<()> {
        self.receiver.wait_closed(timeout).await
    }

    /// Sends `join` with this protocol version and waits for `joined`; an `error` instead fails
    /// with a [`ServerError`].
    pub async fn join(&mut self, role: Role, room: Option<&str>, name: &str) -> Result<Joined> {
        self.join_authorized(role, room, name, None).await
    }

    /// [`join`](Self::join) with an access token (`None` against a `--dev` server).
    pub async fn join_authorized(
        &mut self,
        role: Role,
        room: Option<&str>,
        name: &str,
        token: Option<&str>,
    ) -> Result<Joined> {
        self.join_with(ClientMessage::Room(RoomMessage::Join {
            version: PROTOCOL_VERSION,
            room: room.map(str::to_owned),
            name: name.to_owned(),
            role,
            host_key: None,
            token: token.map(str::to_owned),
        }))
        .await
    }

    /// Sends any `join` message and waits for `joined`.
    pub async fn join_with(&mut self, join: ClientMessage) -> Result<Joined> {
        self.send(&join)?;
        let joined = self
            .recv_until(|m| matches!(m, ServerMessage::Joined { .. }))
            .await
            .context("waiting for joined")?;
        Ok(Joined::from_message(joined).expect("recv_until returned another message"))
    }

    /// Sends a close frame and waits (bounded) for the writer to flush it.
    pub async fn close(mut self) {
        let _ = self.sender.send_frame(Message::Close(None));
        let writer = self.tasks.0.remove(0);
        let _ = tokio::time::timeout(RECV_TIMEOUT, writer).await;
    }

    pub(crate) fn into_parts(self) -> (WsSender, WsReceiver, TaskGuard) {
        (self.sender, self.receiver, self.tasks)
    }
}

/// The `type` tag of a server message, for error reports.
fn message_type(message: &ServerMessage) -> &'static str {
    match message {
        ServerMessage::Joined { .. } => "joined",
        ServerMessage::Offer { .. } => "offer",
        ServerMessage::Answer { .. } => "answer",
        ServerMessage::RoomState(_) => "roomState",
        ServerMessage::MediaState { .. } => "mediaState",
        ServerMessage::Pong { .. } => "pong",
        ServerMessage::Error(_) => "error",
        ServerMessage::PartyJoined { .. } => "partyJoined",
        ServerMessage::PartyEvent(_) => "partyEvent",
        ServerMessage::PartyState(_) => "partyState",
        ServerMessage::Ack { .. } => "ack",
        ServerMessage::TimeReply { .. } => "timeReply",
    }
}
