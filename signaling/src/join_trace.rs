//! One trace per join: a root `join` span with a child span per stage, and the join-latency
//! metric. Stages, in order: `authorize` (token check), `admit` (room registry, capacity),
//! `sfu_peer` (peer connection created), `negotiate` (offer/answer), `connect` (from the
//! answer until media flows: ICE and DTLS). A WHIP/WHEP join creates the peer and negotiates
//! in one step, so it has `negotiate` without `sfu_peer`.
//!
//! Stages that fit in one call are spans from [`JoinTrace::stage`]; this type owns the root
//! and the stages that span messages (`negotiate` for a WebSocket viewer, `connect`), so
//! dropping it ends the trace.

use tokio::time::Instant;
use tracing::Span;

use crate::protocol::ErrorCode;
use crate::telemetry::{JoinKind, Metrics};

/// A stage of a join. The names are what traces show (and what the telemetry test checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Authorize,
    Admit,
    SfuPeer,
    Negotiate,
}

/// A span for `stage` under `root` (span names must be literals, hence the match).
fn stage_span(root: &Span, stage: Stage) -> Span {
    match stage {
        Stage::Authorize => tracing::info_span!(parent: root, "authorize"),
        Stage::Admit => tracing::info_span!(parent: root, "admit"),
        Stage::SfuPeer => tracing::info_span!(parent: root, "sfu_peer"),
        Stage::Negotiate => tracing::info_span!(parent: root, "negotiate"),
    }
}

pub(crate) struct JoinTrace {
    root: Span,
    /// Open while an offer awaits its answer across messages (a WebSocket viewer).
    negotiate: Option<Span>,
    connect: Option<Span>,
    started: Instant,
    kind: JoinKind,
}

impl JoinTrace {
    /// Starts a join's trace: a new root span, never a child of whatever span is current.
    // A trace's start is a measurement (`join` duration in the metrics), taken where the
    // join begins; it is never fed to a core.
    #[allow(clippy::disallowed_methods)]
    pub fn start(kind: JoinKind, room: Option<&str>) -> Self {
        let root = tracing::info_span!(
            parent: None,
            "join",
            kind = kind.as_str(),
            room = room.unwrap_or(""),
            error = tracing::field::Empty,
        );
        Self {
            root,
            negotiate: None,
            connect: None,
            started: Instant::now(),
            kind,
        }
    }

    pub fn root(&self) -> &Span {
        &self.root
    }

    /// A span for a stage done in one call (enter it, or `instrument` the call with it).
    pub fn stage(&self, stage: Stage) -> Span {
        stage_span(&self.root, stage)
    }

    /// [`JoinTrace::stage`] of an optional trace: no span once the join is traced to its end.
    pub fn stage_of(trace: Option<&Self>, stage: Stage) -> Span {
        trace.map_or_else(Span::none, |t| t.stage(stage))
    }

    /// Negotiation spans messages (server offer now, answer later): open its stage.
    pub fn begin_negotiate(&mut self) {
        if self.negotiate.is_none() && self.connect.is_none() {
            self.negotiate = Some(stage_span(&self.root, Stage::Negotiate));
        }
    }

    /// Negotiation is done: the `connect` stage runs until [`JoinTrace::connected`].
    pub fn negotiated(&mut self) {
        self.negotiate = None;
        if self.connect.is_none() {
            self.connect = Some(tracing::info_span!(parent: &self.root, "connect"));
        }
    }

    /// Media flows: the trace ends and the join's latency is recorded.
    pub fn connected(self, metrics: &Metrics) {
        metrics.join(self.kind, self.started.elapsed().as_secs_f64());
    }

    /// The join was refused or failed; the trace ends with the reason.
    pub fn refused(self, metrics: &Metrics, code: ErrorCode) {
        let code = error_code_str(code);
        self.root.record("error", code.as_str());
        tracing::debug!(parent: &self.root, code, "join refused");
        metrics.join_refused(self.kind, &code);
    }
}

/// The wire spelling of an error code (its serde name), for the span and the metric label.
fn error_code_str(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "internal".to_owned())
}
