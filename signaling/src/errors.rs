//! Every failure a client can be told, mapped once. A core error (the SFU's, a party's, the
//! party store's, a token's, a room admission's) becomes a [`Failure`]: the stable wire code
//! and message the WebSocket sends. WHIP/WHEP answer the same code with the HTTP status (and
//! `Retry-After`) that [`http_status`] derives from it, so the two transports cannot disagree.

use axum::http::StatusCode;
use sfu::SfuError;
use sync::{PartyError, StoreError};

use crate::auth::AuthError;
use crate::codes::InvalidCode;
use crate::protocol::ErrorCode;
use crate::rooms::Refusal;

/// An error to report to a client: what a session's handlers return.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: String) -> Self {
        Self { code, message }
    }
}

/// The HTTP status for a code, and the seconds a client should wait before retrying (a
/// `Retry-After` header) where waiting helps.
pub fn http_status(code: ErrorCode) -> (StatusCode, Option<u64>) {
    use ErrorCode::*;
    match code {
        BadMessage | UnknownType | UnsupportedVersion | InvalidRoom | InvalidSdp
        | InvalidCandidate | CandidateBeforeOffer | InvalidPosition | InvalidRate | InvalidUrl
        | ChatTooLong | InvalidReaction | InvalidReport | InvalidOpId => {
            (StatusCode::BAD_REQUEST, None)
        }
        TokenMissing | TokenMalformed | TokenInvalidSignature | TokenExpired | TokenNotYetValid => {
            (StatusCode::UNAUTHORIZED, None)
        }
        TokenWrongRoom | GrantMissing | PermissionDenied => (StatusCode::FORBIDDEN, None),
        RoomNotFound | RoomNotLive | UnknownSession | PartyNotFound => {
            (StatusCode::NOT_FOUND, None)
        }
        HostAlreadyPresent | NotAllowed | NoOfferPending | NotJoined | AlreadyJoined
        | SessionReplaced | StaleVersion | NothingLoaded => (StatusCode::CONFLICT, None),
        MessageTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, None),
        UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
        PreconditionFailed => (StatusCode::PRECONDITION_FAILED, None),
        // The limiter that refused knows the wait; this is the fallback.
        RateLimited => (StatusCode::TOO_MANY_REQUESTS, Some(1)),
        // At capacity or shedding load: capacity frees up as viewers leave.
        Full => (StatusCode::SERVICE_UNAVAILABLE, Some(2)),
        // Another node, or this one restarted, will be there in a few seconds.
        ShuttingDown | SyncUnavailable => (StatusCode::SERVICE_UNAVAILABLE, Some(10)),
        Internal => (StatusCode::INTERNAL_SERVER_ERROR, None),
    }
}

impl From<SfuError> for Failure {
    fn from(err: SfuError) -> Self {
        let code = match &err {
            SfuError::UnknownPeer => ErrorCode::UnknownSession,
            SfuError::WrongRole(_) => ErrorCode::NotAllowed,
            SfuError::InvalidSdp(_) => ErrorCode::InvalidSdp,
            SfuError::NoOfferPending => ErrorCode::NoOfferPending,
            SfuError::CandidateBeforeDescription => ErrorCode::CandidateBeforeOffer,
            SfuError::InvalidCandidate(_) => ErrorCode::InvalidCandidate,
            SfuError::NothingToWatch => ErrorCode::RoomNotLive,
            SfuError::Stopped => ErrorCode::ShuttingDown,
            SfuError::Overloaded => ErrorCode::Full,
            SfuError::Internal(_) => ErrorCode::Internal,
        };
        Self::new(code, err.to_string())
    }
}

impl From<PartyError> for Failure {
    fn from(err: PartyError) -> Self {
        let code = match &err {
            PartyError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            PartyError::StaleVersion { .. } => ErrorCode::StaleVersion,
            PartyError::InvalidPosition { .. } => ErrorCode::InvalidPosition,
            PartyError::InvalidRate => ErrorCode::InvalidRate,
            PartyError::InvalidUrl => ErrorCode::InvalidUrl,
            PartyError::NothingLoaded => ErrorCode::NothingLoaded,
            PartyError::ChatTooLong { .. } => ErrorCode::ChatTooLong,
            PartyError::InvalidReaction { .. } => ErrorCode::InvalidReaction,
            PartyError::RateLimited { .. } => ErrorCode::RateLimited,
            PartyError::NotMember => ErrorCode::NotJoined,
            PartyError::InvalidReport => ErrorCode::InvalidReport,
        };
        Self::new(code, err.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::Conflict { current } => Self::new(
                ErrorCode::StaleVersion,
                format!(
                    "another command changed the party first (now at version {current}); its \
                     state is on the way"
                ),
            ),
            StoreError::NotFound => Self::new(ErrorCode::PartyNotFound, err.to_string()),
            StoreError::Unavailable(_) => Self::new(
                ErrorCode::SyncUnavailable,
                "sync is temporarily unavailable; nothing was changed, retry with the same opId"
                    .into(),
            ),
            StoreError::Corrupt(_) => Self::new(ErrorCode::Internal, err.to_string()),
        }
    }
}

impl From<&AuthError> for Failure {
    fn from(err: &AuthError) -> Self {
        Self::new(err.code(), err.to_string())
    }
}

impl From<InvalidCode> for Failure {
    fn from(err: InvalidCode) -> Self {
        Self::new(ErrorCode::InvalidRoom, err.to_string())
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Self::new(refusal.code, refusal.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What WHIP/WHEP clients were promised (README, docs/protocol.md): the statuses of the
    /// core errors they can meet.
    #[test]
    fn core_errors_get_their_documented_statuses() {
        let status = |failure: Failure| http_status(failure.code);
        let token = |err: AuthError| Failure::from(&err);
        let wrong_room = AuthError::WrongRoom {
            token_room: "A".into(),
            room: "B".into(),
        };
        let cases: [(Failure, u16, Option<u64>); 17] = [
            (SfuError::InvalidSdp("x".into()).into(), 400, None),
            (SfuError::CandidateBeforeDescription.into(), 400, None),
            (SfuError::NothingToWatch.into(), 404, None),
            (SfuError::UnknownPeer.into(), 404, None),
            (SfuError::WrongRole("viewer").into(), 409, None),
            (SfuError::Overloaded.into(), 503, Some(2)),
            (SfuError::Stopped.into(), 503, Some(10)),
            // 401 when we do not know who the caller is (no usable token), 403 when we do but
            // they may not do this (RFC 9110 §15.5.2, §15.5.4).
            (token(AuthError::Missing), 401, None),
            (token(AuthError::Malformed("x".into())), 401, None),
            (token(AuthError::BadSignature), 401, None),
            (token(AuthError::NotYetValid), 401, None),
            (token(AuthError::Expired { expired_at: 1 }), 401, None),
            (token(wrong_room), 403, None),
            (
                token(AuthError::MissingGrant(crate::auth::Grant::Publish)),
                403,
                None,
            ),
            (PartyError::PermissionDenied("host only").into(), 403, None),
            (PartyError::InvalidRate.into(), 400, None),
            (StoreError::Unavailable("down".into()).into(), 503, Some(10)),
        ];
        for (failure, code, retry) in cases {
            let name = failure.code;
            let (got, got_retry) = status(failure);
            assert_eq!((got.as_u16(), got_retry), (code, retry), "{name:?}");
        }
    }

    /// The same SFU failure is one code on the WebSocket and on WHIP (they once disagreed:
    /// an unknown peer was `internal` on one and `unknown_session` on the other).
    #[test]
    fn an_sfu_failure_has_one_code() {
        let failure = Failure::from(SfuError::UnknownPeer);
        assert_eq!(failure.code, ErrorCode::UnknownSession);
        assert!(failure.message.contains("ended"), "{}", failure.message);
    }
}
