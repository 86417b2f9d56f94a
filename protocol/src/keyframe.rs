//! Detecting the first packet of a keyframe without decoding, so a joining viewer can start
//! at a picture its decoder can use instead of showing garbage until the next keyframe.

/// Video codecs the SFU forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    H264,
}

/// True when `payload` (an RTP payload) begins a keyframe.
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8_starts_keyframe(payload),
        VideoCodec::H264 => h264_starts_keyframe(payload),
    }
}

/// VP8 payload descriptor (RFC 7741 §4.2), then the VP8 frame tag whose bit 0 (P) is 0 for a
/// key frame (RFC 6386 §9.1). Only the first packet of partition 0 carries the frame tag.
fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    let Some(len) = vp8_descriptor_len(payload) else {
        return false;
    };
    let starts_partition_zero = payload[0] & 0x10 != 0 && payload[0] & 0x07 == 0;
    starts_partition_zero && payload.get(len).is_some_and(|tag| tag & 0x01 == 0)
}

/// Length of the VP8 payload descriptor at the start of `payload` (RFC 7741 §4.2), or `None`
/// if the payload is too short to hold the descriptor it announces.
pub fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let first = *payload.first()?;
    let mut len = 1;
    if first & 0x80 != 0 {
        // X: an extension byte with the I, L, T and K flags follows.
        let ext = *payload.get(1)?;
        len += 1;
        if ext & 0x80 != 0 {
            // I: PictureID, 15 bits when its M bit is set, else 7 bits.
            let picture_id = *payload.get(len)?;
            len += if picture_id & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            // L: TL0PICIDX.
            len += 1;
        }
        if ext & 0x30 != 0 {
            // T or K: one byte holding TID, Y and KEYIDX.
            len += 1;
        }
    }
    (len <= payload.len()).then_some(len)
}

/// H.264 (RFC 6184): an IDR slice (type 5) or SPS (type 7) in a single NAL unit, a STAP-A
/// aggregate (type 24), or the first fragment of an FU-A (type 28).
fn h264_starts_keyframe(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() >= 3 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if matches!(rest[2] & 0x1f, IDR | SPS) {
                    return true;
                }
                let Some(next) = rest.get(2 + size..) else {
                    return false;
                };
                rest = next;
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && matches!(fu & 0x1f, IDR | SPS)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_and_delta_frames() {
        // S=1, PID=0, no extension; tag bit0 = 0 → key frame.
        assert!(starts_keyframe(VideoCodec::Vp8, &[0x10, 0x00, 0x9d]));
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x10, 0x01, 0x9d]));
        // Continuation packet (S=0) never starts a frame.
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x00, 0x00]));
        // Extended descriptor with a 15-bit picture id: X=1, I=1, M=1.
        assert!(starts_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0x80, 0x81, 0x23, 0x00]
        ));
        assert!(!starts_keyframe(VideoCodec::Vp8, &[0x90, 0x80, 0x81]));
        assert!(!starts_keyframe(VideoCodec::Vp8, &[]));
    }

    #[test]
    fn h264_keyframes() {
        assert!(starts_keyframe(VideoCodec::H264, &[0x65, 0x88]));
        assert!(starts_keyframe(VideoCodec::H264, &[0x67, 0x42]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x41, 0x9a]));
        // STAP-A: [24][len=2][SPS..][len=1][PPS]
        assert!(starts_keyframe(
            VideoCodec::H264,
            &[0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]
        ));
        // FU-A start of an IDR, then its continuation.
        assert!(starts_keyframe(VideoCodec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!starts_keyframe(VideoCodec::H264, &[0x7c, 0x05, 0x00]));
        // Truncated STAP-A must not panic.
        assert!(!starts_keyframe(
            VideoCodec::H264,
            &[0x18, 0x00, 0x09, 0x41]
        ));
    }
}
