//! Classifying datagrams on the shared UDP port (RFC 7983) and reading the STUN USERNAME
//! (RFC 8489 §14.3) without allocating, so the driver can route a packet to its peer; and
//! reading the clear RTP header of an SRTP packet ([`RtpHeader`]), for clients and test
//! relays that look at media without keys.

/// What kind of protocol a datagram on the media port carries, by its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    Stun,
    Dtls,
    /// RTP or RTCP (SRTP/SRTCP on the wire).
    Rtp,
    Unknown,
}

/// Classifies by the first byte, as RFC 7983 prescribes for multiplexed ports.
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(0..=3) => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Dtls,
        Some(128..=191) => DatagramKind::Rtp,
        _ => DatagramKind::Unknown,
    }
}

/// Length of the fixed RTP header (RFC 3550 §5.1).
const RTP_HEADER_LEN: usize = 12;

/// The fields of an RTP header, which SRTP leaves in clear (RFC 3711 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// The header of an RTP (SRTP) datagram; `None` for STUN, DTLS, RTCP, a datagram shorter
    /// than the fixed header, or anything else. RTCP shares RTP's first-byte range
    /// ([`classify`]) and is told apart by its second byte: with the marker bit folded in, a
    /// payload type of 64..=95 is an RTCP packet type of 192..=223 (RFC 5761 §4).
    pub fn parse(datagram: &[u8]) -> Option<Self> {
        if classify(datagram) != DatagramKind::Rtp || datagram.len() < RTP_HEADER_LEN {
            return None;
        }
        let payload_type = datagram[1] & 0x7f;
        if (64..=95).contains(&payload_type) {
            return None;
        }
        Some(Self {
            payload_type,
            marker: datagram[1] & 0x80 != 0,
            seq: u16::from_be_bytes([datagram[2], datagram[3]]),
            timestamp: u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]),
            ssrc: u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]),
        })
    }
}

const STUN_HEADER_LEN: usize = 20;
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
/// RFC 8445 §7.1.2: the controlling agent nominates the pair a check with this travels on.
const ATTR_USE_CANDIDATE: u16 = 0x0025;
/// Binding request: method 0x001, class request.
const STUN_BINDING_REQUEST: u16 = 0x0001;

/// What routing needs from an ICE connectivity check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest<'a> {
    /// The local ufrag: the part of USERNAME before the colon (`"<server>:<client>"`,
    /// RFC 8445 §7.2.2).
    pub local_ufrag: &'a str,
    /// Carries USE-CANDIDATE: the client nominates the pair this check arrived on.
    pub use_candidate: bool,
}

/// Parses a STUN binding request far enough to route it. Returns `None` for anything that is
/// not a well-formed binding request with a USERNAME; never panics on arbitrary input.
pub fn parse_binding_request(datagram: &[u8]) -> Option<BindingRequest<'_>> {
    if datagram.len() < STUN_HEADER_LEN || datagram[4..8] != STUN_MAGIC_COOKIE {
        return None;
    }
    if u16::from_be_bytes([datagram[0], datagram[1]]) != STUN_BINDING_REQUEST {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(STUN_HEADER_LEN..STUN_HEADER_LEN + body_len)?;
    let mut rest = body;
    let mut local_ufrag = None;
    let mut use_candidate = false;
    while rest.len() >= 4 {
        let attr_type = u16::from_be_bytes([rest[0], rest[1]]);
        let attr_len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + attr_len)?;
        match attr_type {
            ATTR_USERNAME => {
                let username = std::str::from_utf8(value).ok()?;
                local_ufrag = username.split(':').next();
            }
            ATTR_USE_CANDIDATE => use_candidate = true,
            _ => {}
        }
        // Attributes are padded to a multiple of four bytes.
        let padded = (attr_len + 3) & !3;
        rest = rest.get(4 + padded..).unwrap_or_default();
    }
    Some(BindingRequest {
        local_ufrag: local_ufrag?,
        use_candidate,
    })
}

/// The local ufrag of a binding request; see [`parse_binding_request`].
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    parse_binding_request(datagram).map(|r| r.local_ufrag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str, nominate: bool) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        // A second attribute after USERNAME, as real checks carry (PRIORITY).
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        if nominate {
            attrs.extend_from_slice(&ATTR_USE_CANDIDATE.to_be_bytes());
            attrs.extend_from_slice(&[0, 0]);
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
        msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attrs);
        msg
    }

    #[test]
    fn reads_local_ufrag_from_binding_request() {
        let msg = binding_request("srvUfrag:cli", false);
        assert_eq!(classify(&msg), DatagramKind::Stun);
        assert_eq!(stun_local_ufrag(&msg), Some("srvUfrag"));
        assert!(!parse_binding_request(&msg).unwrap().use_candidate);
        let nominating = binding_request("srvUfrag:cli", true);
        assert_eq!(
            parse_binding_request(&nominating),
            Some(BindingRequest {
                local_ufrag: "srvUfrag",
                use_candidate: true
            })
        );
    }

    #[test]
    fn rejects_truncated_and_foreign_input() {
        let msg = binding_request("abc:def", true);
        for cut in 0..msg.len() {
            // Any truncation must be handled without panicking; a cut inside the body is None.
            let _ = stun_local_ufrag(&msg[..cut]);
        }
        assert_eq!(stun_local_ufrag(&msg[..msg.len() - 1]), None);
        let mut response = msg.clone();
        response[0] = 0x01; // 0x0101: binding success response
        assert_eq!(stun_local_ufrag(&response), None);
        assert_eq!(classify(&[0x80, 0x60]), DatagramKind::Rtp);
        assert_eq!(classify(&[22]), DatagramKind::Dtls);
        assert_eq!(classify(&[]), DatagramKind::Unknown);
    }

    #[test]
    fn reads_rtp_headers_and_nothing_else() {
        let rtp = [
            0x80, 0xe0, 0x01, 0x02, 0, 0, 0x03, 0xe8, 0xde, 0xad, 0xbe, 0xef, 0x10,
        ];
        assert_eq!(
            RtpHeader::parse(&rtp),
            Some(RtpHeader {
                payload_type: 96,
                marker: true,
                seq: 0x0102,
                timestamp: 1000,
                ssrc: 0xdead_beef,
            })
        );
        assert_eq!(
            RtpHeader::parse(&rtp[..11]),
            None,
            "shorter than the header"
        );
        // A receiver report: packet type 201, RTP's first-byte range.
        let rr = [0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(classify(&rr), DatagramKind::Rtp);
        assert_eq!(RtpHeader::parse(&rr), None);
        let stun = binding_request("a:b", false);
        assert_eq!(RtpHeader::parse(&stun), None);
        assert_eq!(RtpHeader::parse(&[22; 13]), None, "DTLS");
    }
}
