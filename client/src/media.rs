//! Synthetic media for tests: deterministic VP8 and Opus RTP payloads, and the parsers that
//! recognise them on the receiving side.
//!
//! Payloads are not decodable video or audio, but every header a forwarding server may look at
//! is real: the VP8 payload descriptor (RFC 7741 §4.2), the VP8 frame tag that tells a keyframe
//! from an interframe (RFC 6386 §9.1, RFC 7741 §4.3), and the Opus TOC byte (RFC 6716 §3.1).
//! Every payload ends with a [`PayloadTag`] trailer naming the frame and packet it belongs to, so
//! a test can match what a viewer received with what the host sent whatever the server rewrote
//! in the RTP header (SSRC, sequence number, timestamp).

use bytes::{BufMut, Bytes, BytesMut};
use marquee_protocol::keyframe::{VideoCodec, starts_keyframe};
use marquee_protocol::wire::MediaKind;

/// RTP clock rate of VP8 (RFC 7741 §4.1).
pub const VP8_CLOCK_RATE: u32 = 90_000;
/// RTP clock rate of Opus, whatever the real sampling rate (RFC 7587 §4.1).
pub const OPUS_CLOCK_RATE: u32 = 48_000;
/// RTP timestamp step of one 20 ms Opus packet.
pub const OPUS_TICKS_PER_PACKET: u32 = OPUS_CLOCK_RATE / 50;

/// Width and height written into synthetic keyframe headers.
pub const SYNTHETIC_WIDTH: u16 = 640;
pub const SYNTHETIC_HEIGHT: u16 = 360;

/// Identifies a synthetic payload: which frame (video) or packet (audio) of the host's stream it
/// carries, and where in the frame it sits. Written as the last [`PayloadTag::LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadTag {
    pub kind: MediaKind,
    /// Frame number for video, packet number for audio; counts from 0 per host stream.
    pub frame: u32,
    /// Index of this packet within its frame (always 0 for audio).
    pub index: u16,
    /// Number of packets the frame was split into (always 1 for audio).
    pub count: u16,
    /// Whether the frame is a VP8 keyframe (always false for audio).
    pub keyframe: bool,
}

impl PayloadTag {
    /// Size of the trailer in bytes.
    pub const LEN: usize = 12;
    const MAGIC: [u8; 2] = *b"MQ";

    /// Reads the trailer of a synthetic payload; `None` for anything else.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let tail = payload.get(payload.len().checked_sub(Self::LEN)?..)?;
        if tail[..2] != Self::MAGIC {
            return None;
        }
        let kind = match tail[2] {
            b'v' => MediaKind::Video,
            b'a' => MediaKind::Audio,
            _ => return None,
        };
        Some(Self {
            kind,
            keyframe: tail[3] & 1 == 1,
            frame: u32::from_be_bytes(tail[4..8].try_into().ok()?),
            index: u16::from_be_bytes(tail[8..10].try_into().ok()?),
            count: u16::from_be_bytes(tail[10..12].try_into().ok()?),
        })
    }

    fn put(&self, buf: &mut BytesMut) {
        buf.put_slice(&Self::MAGIC);
        buf.put_u8(match self.kind {
            MediaKind::Video => b'v',
            MediaKind::Audio => b'a',
        });
        buf.put_u8(u8::from(self.keyframe));
        buf.put_u32(self.frame);
        buf.put_u16(self.index);
        buf.put_u16(self.count);
    }
}

/// Builds the RTP payloads of one synthetic VP8 frame split into `count` packets of
/// `payload_size` bytes each (at least the headers plus the tag).
///
/// The first packet starts a partition: its one-byte payload descriptor has S=1 and PID=0,
/// followed by the 3-byte VP8 frame tag whose P bit (bit 0) is 0 for a keyframe and 1 for an
/// interframe, and for a keyframe the start code `9d 01 2a` and the frame size. Following
/// packets carry a descriptor with S=0. Filler bytes are a function of `frame` and position.
pub fn vp8_frame_payloads(
    frame: u32,
    keyframe: bool,
    count: u16,
    payload_size: usize,
) -> Vec<Bytes> {
    let count = count.max(1);
    (0..count)
        .map(|index| {
            let mut buf = BytesMut::with_capacity(payload_size.max(16 + PayloadTag::LEN));
            // RFC 7741 §4.2: X=0, R=0, N=0, S=start of partition, PID=0.
            buf.put_u8(if index == 0 { 0x10 } else { 0x00 });
            if index == 0 {
                // RFC 6386 §9.1 frame tag, little-endian: P | version<<1 | show_frame<<4 |
                // first_part_size<<5. The size is nominal; nothing decodes these frames.
                let first_part_size = ((payload_size as u32 * u32::from(count)) / 2) & 0x7_ffff;
                let tag = u32::from(!keyframe) | (1 << 4) | (first_part_size << 5);
                buf.put_slice(&tag.to_le_bytes()[..3]);
                if keyframe {
                    buf.put_slice(&[0x9d, 0x01, 0x2a]);
                    buf.put_u16_le(SYNTHETIC_WIDTH);
                    buf.put_u16_le(SYNTHETIC_HEIGHT);
                }
            }
            fill(&mut buf, payload_size, frame, index);
            PayloadTag {
                kind: MediaKind::Video,
                frame,
                index,
                count,
                keyframe,
            }
            .put(&mut buf);
            buf.freeze()
        })
        .collect()
}

/// Builds one synthetic 20 ms Opus packet of `payload_size` bytes (at least TOC plus tag).
pub fn opus_payload(packet: u32, payload_size: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload_size.max(1 + PayloadTag::LEN));
    // RFC 6716 §3.1 TOC: config 31 (CELT-only, fullband, 20 ms), mono, one frame.
    buf.put_u8(31 << 3);
    fill(&mut buf, payload_size, packet, 0);
    PayloadTag {
        kind: MediaKind::Audio,
        frame: packet,
        index: 0,
        count: 1,
        keyframe: false,
    }
    .put(&mut buf);
    buf.freeze()
}

pub use marquee_protocol::keyframe::vp8_descriptor_len;

/// Whether an RTP payload starts a VP8 keyframe (the SFU's own test, `marquee_protocol::keyframe`).
pub fn is_vp8_keyframe_start(payload: &[u8]) -> bool {
    starts_keyframe(VideoCodec::Vp8, payload)
}

/// Deterministic filler up to `payload_size - PayloadTag::LEN` bytes.
fn fill(buf: &mut BytesMut, payload_size: usize, frame: u32, index: u16) {
    let target = payload_size.saturating_sub(PayloadTag::LEN);
    let seed = frame
        .wrapping_mul(31)
        .wrapping_add(u32::from(index).wrapping_mul(7));
    let mut i = 0u32;
    while buf.len() < target {
        buf.put_u8(seed.wrapping_add(i) as u8);
        i += 1;
    }
}
