//! The codecs and RTCP features each kind of peer connection negotiates.
//!
//! Hosts and viewers differ on purpose: a host connection generates NACKs and transport-cc
//! feedback (so the browser's encoder ramps its bitrate up), while a viewer connection has no
//! NACK responder of `rtc`'s own: the SFU answers viewer NACKs from its shared per-track ring
//! instead of keeping a copy of every packet per viewer.

use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_rtcp_reports, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};

use crate::feedback::DeliverFeedback;
use crate::keyframe::VideoCodec;
use crate::{MediaKind, Role};

/// The codec of a track, as negotiated with its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub kind: MediaKind,
    pub rtp: RTCRtpCodec,
    /// Set for video codecs whose keyframes the SFU recognises.
    pub video: Option<VideoCodec>,
}

impl Codec {
    /// Classifies a negotiated `rtc` codec; `None` for codecs the SFU does not forward.
    pub fn from_rtp(rtp: RTCRtpCodec) -> Option<Self> {
        let mime = rtp.mime_type.to_ascii_lowercase();
        let (kind, video) = if mime == MIME_TYPE_OPUS.to_ascii_lowercase() {
            (MediaKind::Audio, None)
        } else if mime == MIME_TYPE_VP8.to_ascii_lowercase() {
            (MediaKind::Video, Some(VideoCodec::Vp8))
        } else if mime == MIME_TYPE_H264.to_ascii_lowercase() {
            (MediaKind::Video, Some(VideoCodec::H264))
        } else {
            return None;
        };
        Some(Self { kind, rtp, video })
    }

    /// Whether a source with codec `other` can feed a track of this codec without the
    /// viewers renegotiating.
    pub fn compatible(&self, other: &Codec) -> bool {
        self.rtp
            .mime_type
            .eq_ignore_ascii_case(&other.rtp.mime_type)
            && self.rtp.clock_rate == other.rtp.clock_rate
            && (self.video != Some(VideoCodec::H264)
                || H264Format::parse(&self.rtp.sdp_fmtp_line)
                    == H264Format::parse(&other.rtp.sdp_fmtp_line))
    }
}

/// What must match for two H.264 streams to be interchangeable for a decoder: the profile
/// (RFC 6184 §8.1: `profile_idc` and its constraint flags, not the level) and the
/// packetization mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct H264Format {
    profile: Option<H264Profile>,
    packetization_mode: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H264Profile {
    ConstrainedBaseline,
    Baseline,
    Main,
    High,
    ConstrainedHigh,
}

impl H264Format {
    fn parse(fmtp: &str) -> Self {
        let param = |name: &str| {
            fmtp.split(';')
                .find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix('='))
        };
        Self {
            // Absent, RFC 6184 means Baseline level 1; every WebRTC stack treats that as
            // Constrained Baseline, the profile WebRTC requires.
            profile: param("profile-level-id").map_or(
                Some(H264Profile::ConstrainedBaseline),
                H264Profile::from_profile_level_id,
            ),
            packetization_mode: param("packetization-mode")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }
}

impl H264Profile {
    /// Classifies `profile_idc` and `profile-iop` (the first two bytes) as decoders do: an
    /// encoder may set more constraint flags than the profile needs (x264 sends `42c01e`,
    /// Chromium `42e01f`: both Constrained Baseline). `None` for unknown or malformed ids.
    fn from_profile_level_id(hex: &str) -> Option<Self> {
        if hex.len() != 6 || !hex.is_ascii() {
            return None;
        }
        let idc = u8::from_str_radix(&hex[0..2], 16).ok()?;
        let iop = u8::from_str_radix(&hex[2..4], 16).ok()?;
        let (set0, set1, set3) = (iop & 0x80 != 0, iop & 0x40 != 0, iop & 0x10 != 0);
        match idc {
            0x42 if set1 => Some(Self::ConstrainedBaseline),
            0x42 => Some(Self::Baseline),
            // Main with constraint_set0 (decodable as Baseline) is Constrained Baseline.
            0x4d if set0 => Some(Self::ConstrainedBaseline),
            0x4d => Some(Self::Main),
            0x58 if set0 && set1 => Some(Self::ConstrainedBaseline),
            0x58 if set0 => Some(Self::Baseline),
            0x64 if iop & 0x0c == 0x0c => Some(Self::ConstrainedHigh),
            0x64 if !set3 => Some(Self::High),
            _ => None,
        }
    }
}

/// Builds the media engine and interceptor registry for a peer of `role`.
pub fn engine_for(role: Role) -> rtc::shared::error::Result<(MediaEngine, Registry)> {
    let mut engine = MediaEngine::default();
    let video_feedback = || {
        vec![
            feedback("nack", ""),
            feedback("nack", "pli"),
            feedback("ccm", "fir"),
        ]
    };
    let audio = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: 111,
    };
    engine.register_codec(audio, RtpCodecKind::Audio)?;
    let mut video = vec![(96, MIME_TYPE_VP8, String::new())];
    for (pt, profile) in [(102, "42e01f"), (104, "42001f"), (106, "640c1f")] {
        video.push((
            pt,
            MIME_TYPE_H264,
            format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"),
        ));
    }
    for (payload_type, mime, fmtp) in video {
        engine.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.to_owned(),
                    clock_rate: 90000,
                    channels: 0,
                    sdp_fmtp_line: fmtp,
                    rtcp_feedback: video_feedback(),
                },
                payload_type,
            },
            RtpCodecKind::Video,
        )?;
    }
    let registry = Registry::new();
    let registry = match role {
        // The host's sender reports are handed to the SFU too: viewers' reports map its clock.
        Role::Publisher => {
            let registry = configure_nack(registry, &mut engine);
            let registry = configure_twcc_receiver_only(registry, &mut engine)?;
            configure_rtcp_reports(registry).with(FEEDBACK_SLOT, DeliverFeedback::default())
        }
        // Viewer feedback handed to the SFU: NACKs are answered from the shared ring, keyframe
        // requests relayed to the host. No report interceptor: forwarded media bypasses
        // `rtc`, so the SFU writes viewers' sender reports itself.
        Role::Subscriber => registry.with(FEEDBACK_SLOT, DeliverFeedback::default()),
    };
    Ok((engine, registry))
}

pub use marquee_protocol::feedback::FEEDBACK_SLOT;

fn feedback(typ: &str, parameter: &str) -> RTCPFeedback {
    RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(mime: &str, fmtp: &str) -> Codec {
        Codec::from_rtp(RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback: vec![],
        })
        .unwrap()
    }

    #[test]
    fn compatibility_follows_mime_and_h264_profile() {
        let vp8 = codec("video/VP8", "");
        let h264_cb = codec("video/H264", "packetization-mode=1;profile-level-id=42e01f");
        let h264_cb2 = codec("video/h264", "profile-level-id=42e034;packetization-mode=1");
        let h264_high = codec("video/H264", "profile-level-id=640c1f");
        assert!(vp8.compatible(&codec("video/vp8", "")));
        assert!(!vp8.compatible(&h264_cb));
        assert!(h264_cb.compatible(&h264_cb2), "same profile, other level");
        assert!(!h264_cb.compatible(&h264_high));
        // x264 (GStreamer's whip-client) marks Constrained Baseline as 42c0, Chromium as
        // 42e0; both are the same profile.
        let x264 = codec(
            "video/H264",
            "packetization-mode=1;profile-level-id=42c01e;level-asymmetry-allowed=1",
        );
        assert!(x264.compatible(&h264_cb));
        assert!(!x264.compatible(&codec(
            "video/H264",
            "packetization-mode=1;profile-level-id=42001f"
        )));
        assert!(!x264.compatible(&codec(
            "video/H264",
            "packetization-mode=0;profile-level-id=42e01f"
        )));
        // 640c: Constrained High; 6400: High.
        assert!(h264_high.compatible(&codec("video/H264", "profile-level-id=640c32")));
        assert!(!h264_high.compatible(&codec("video/H264", "profile-level-id=640032")));
        assert!(
            Codec::from_rtp(RTCRtpCodec {
                mime_type: "video/AV1".into(),
                ..Default::default()
            })
            .is_none()
        );
    }
}
