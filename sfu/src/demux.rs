//! Classifying datagrams on the shared UDP port (RFC 7983) and reading the STUN USERNAME
//! (RFC 8489 §14.3) without allocating, so the driver can route a packet to its peer.

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

const STUN_HEADER_LEN: usize = 20;
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
/// Binding request: method 0x001, class request.
const STUN_BINDING_REQUEST: u16 = 0x0001;

/// Returns the local ufrag of an ICE connectivity check: the part of the USERNAME attribute
/// before the colon (`"<server ufrag>:<client ufrag>"`, RFC 8445 §7.2.2).
///
/// Returns `None` for anything that is not a well-formed STUN binding request with a
/// USERNAME; never panics on arbitrary input.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < STUN_HEADER_LEN || datagram[4..8] != STUN_MAGIC_COOKIE {
        return None;
    }
    if u16::from_be_bytes([datagram[0], datagram[1]]) != STUN_BINDING_REQUEST {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(STUN_HEADER_LEN..STUN_HEADER_LEN + body_len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let attr_type = u16::from_be_bytes([rest[0], rest[1]]);
        let attr_len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + attr_len)?;
        if attr_type == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        // Attributes are padded to a multiple of four bytes.
        let padded = (attr_len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        // A second attribute after USERNAME, as real checks carry (PRIORITY).
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
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
        let msg = binding_request("srvUfrag:cli");
        assert_eq!(classify(&msg), DatagramKind::Stun);
        assert_eq!(stun_local_ufrag(&msg), Some("srvUfrag"));
    }

    #[test]
    fn rejects_truncated_and_foreign_input() {
        let msg = binding_request("abc:def");
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
}
