//! SRTP protection of forwarded media, in place and without allocating (RFC 3711, RFC 7714).
//!
//! `rtc` encrypts each packet into a fresh buffer behind its interceptor chain; the
//! forwarding fast path instead writes the viewer's packet into a reused buffer and seals it
//! there. Keys come from the peer's DTLS handshake (see [`crate::keytap`]); this module only
//! derives session keys from master keys and protects RTP.
//!
//! Two families are supported, the ones `rtc` negotiates (the server offers no AES-256):
//! - AEAD_AES_128_GCM (RFC 7714): the header is the AAD, the payload is encrypted, a 16-byte
//!   tag is appended. One AES-GCM pass: the cheapest on CPUs with AES-NI and CLMUL.
//! - AES128_CM_HMAC_SHA1_80 / _32 (RFC 3711): AES counter mode over the payload, then an
//!   HMAC-SHA1 over the packet and the rollover counter, truncated to 10 or 4 bytes
//!   (RustCrypto's `aes`/`ctr` and `hmac`/`sha1`, which use AES-NI and the SHA extensions).

use aes::Aes128;
use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher};
use hmac::{Hmac, Mac};
use ring::aead;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use sha1::Sha1;

/// The SRTP protection profiles the fast path implements (RFC 5764 §4.1.2, RFC 7714 §14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpProfile {
    AeadAes128Gcm,
    Aes128CmHmacSha1_80,
    Aes128CmHmacSha1_32,
}

impl SrtpProfile {
    /// Every profile, in the order a verification tries them.
    pub const ALL: [SrtpProfile; 3] = [
        SrtpProfile::AeadAes128Gcm,
        SrtpProfile::Aes128CmHmacSha1_80,
        SrtpProfile::Aes128CmHmacSha1_32,
    ];

    /// Master salt length: 12 bytes for GCM (RFC 7714 §12), 14 for counter mode.
    pub fn salt_len(self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm => 12,
            _ => 14,
        }
    }

    /// Bytes the protection appends to an RTP packet.
    pub fn rtp_overhead(self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm => 16,
            SrtpProfile::Aes128CmHmacSha1_80 => 10,
            SrtpProfile::Aes128CmHmacSha1_32 => 4,
        }
    }

    /// The DTLS `use_srtp` profile (RFC 5764 §4.1.2) this is.
    pub fn dtls(self) -> SrtpProtectionProfile {
        match self {
            SrtpProfile::AeadAes128Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProfile::Aes128CmHmacSha1_80 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            SrtpProfile::Aes128CmHmacSha1_32 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
        }
    }

    /// The IANA name of the DTLS-SRTP profile (RFC 5764, RFC 7714), as configuration
    /// spells it.
    pub fn iana_name(self) -> &'static str {
        match self {
            SrtpProfile::AeadAes128Gcm => "SRTP_AEAD_AES_128_GCM",
            SrtpProfile::Aes128CmHmacSha1_80 => "SRTP_AES128_CM_HMAC_SHA1_80",
            SrtpProfile::Aes128CmHmacSha1_32 => "SRTP_AES128_CM_HMAC_SHA1_32",
        }
    }

    /// The profile whose [`SrtpProfile::iana_name`] is `name`, in any case.
    pub fn from_iana_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.iana_name().eq_ignore_ascii_case(name))
    }

    /// The name browsers report as `srtpCipher`.
    pub fn name(self) -> &'static str {
        match self {
            SrtpProfile::AeadAes128Gcm => "AEAD_AES_128_GCM",
            SrtpProfile::Aes128CmHmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpProfile::Aes128CmHmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }
}

/// One direction's master key and salt, as the DTLS-SRTP exporter yields them.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    pub key: [u8; 16],
    /// Up to 14 bytes; only the profile's [`SrtpProfile::salt_len`] are used.
    pub salt: [u8; 14],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)") // keys never reach logs
    }
}

/// Protects outbound RTP for one SRTP session (one viewer's transport).
pub struct SrtpSender {
    profile: SrtpProfile,
    cipher: Cipher,
}

// Both variants are large (expanded keys); a sender is boxed once per viewer
// (`FastPath::Active`), so the difference costs nothing per packet.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Gcm {
        key: aead::LessSafeKey,
        salt: [u8; 12],
    },
    CounterMode(CounterMode),
}

struct CounterMode {
    /// The expanded session key, kept so a packet costs no key schedule.
    aes: Aes128,
    salt: [u8; 14],
    /// HMAC-SHA1 keyed once; a packet clones the keyed state. RustCrypto's SHA-1 uses the
    /// CPU's SHA extensions where present (ring's SHA-1 is portable code, 3× slower here).
    auth: Hmac<Sha1>,
}

// RFC 3711 §4.3.1 key derivation labels.
const LABEL_RTP_ENCRYPTION: u8 = 0x00;
const LABEL_RTP_AUTHENTICATION: u8 = 0x01;
const LABEL_RTP_SALT: u8 = 0x02;

impl SrtpSender {
    /// Derives the session keys (RFC 3711 §4.3 with a key derivation rate of 0, as
    /// RFC 5764 requires; RFC 7714 §11 uses the same PRF for AES-128-GCM).
    pub fn new(profile: SrtpProfile, master: &MasterKey) -> Self {
        let salt = &master.salt[..profile.salt_len()];
        let cipher = match profile {
            SrtpProfile::AeadAes128Gcm => {
                let mut session_key = [0u8; 16];
                derive(&master.key, salt, LABEL_RTP_ENCRYPTION, &mut session_key);
                let mut session_salt = [0u8; 12];
                derive(&master.key, salt, LABEL_RTP_SALT, &mut session_salt);
                let unbound = aead::UnboundKey::new(&aead::AES_128_GCM, &session_key)
                    .expect("a 16-byte key is valid for AES-128-GCM");
                Cipher::Gcm {
                    key: aead::LessSafeKey::new(unbound),
                    salt: session_salt,
                }
            }
            SrtpProfile::Aes128CmHmacSha1_80 | SrtpProfile::Aes128CmHmacSha1_32 => {
                let mut session_key = [0u8; 16];
                derive(&master.key, salt, LABEL_RTP_ENCRYPTION, &mut session_key);
                let mut session_salt = [0u8; 14];
                derive(&master.key, salt, LABEL_RTP_SALT, &mut session_salt);
                let mut auth_key = [0u8; 20];
                derive(&master.key, salt, LABEL_RTP_AUTHENTICATION, &mut auth_key);
                Cipher::CounterMode(CounterMode {
                    aes: Aes128::new(&session_key.into()),
                    salt: session_salt,
                    auth: <Hmac<Sha1> as Mac>::new_from_slice(&auth_key)
                        .expect("HMAC takes a key of any length"),
                })
            }
        };
        Self { profile, cipher }
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Protects the RTP packet in `packet` in place: `packet[..header_len]` is its header,
    /// the rest its payload; the tag is appended (reserve [`SrtpProfile::rtp_overhead`] to
    /// keep this allocation-free). `roc` is the rollover counter of the packet's index.
    pub fn protect_rtp(&self, packet: &mut Vec<u8>, header_len: usize, roc: u32) {
        debug_assert!(packet.len() >= header_len && header_len >= 12);
        let ssrc = [packet[8], packet[9], packet[10], packet[11]];
        let seq = [packet[2], packet[3]];
        match &self.cipher {
            Cipher::Gcm { key, salt } => {
                // RFC 7714 §8.1: IV = (00 00 || SSRC || ROC || SEQ) XOR salt.
                let mut iv = *salt;
                xor_into(&mut iv[2..6], &ssrc);
                xor_into(&mut iv[6..10], &roc.to_be_bytes());
                xor_into(&mut iv[10..12], &seq);
                let (header, payload) = packet.split_at_mut(header_len);
                let tag = key
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(iv),
                        aead::Aad::from(&*header),
                        payload,
                    )
                    .expect("AES-GCM seals any packet shorter than 2^36 bytes");
                packet.extend_from_slice(tag.as_ref());
            }
            Cipher::CounterMode(keys) => {
                let CounterMode { aes, salt, auth } = keys;
                // RFC 3711 §4.1.1: IV = (salt * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16).
                let mut iv = [0u8; 16];
                iv[..14].copy_from_slice(salt);
                xor_into(&mut iv[4..8], &ssrc);
                xor_into(&mut iv[8..12], &roc.to_be_bytes());
                xor_into(&mut iv[12..14], &seq);
                let mut ctr = ctr::Ctr128BE::<Aes128>::from_core(ctr::CtrCore::inner_iv_init(
                    aes.clone(),
                    &iv.into(),
                ));
                ctr.apply_keystream(&mut packet[header_len..]);
                // RFC 3711 §4.2: the tag covers the packet and the ROC.
                let mut mac = auth.clone();
                mac.update(packet);
                mac.update(&roc.to_be_bytes());
                let tag = mac.finalize().into_bytes();
                packet.extend_from_slice(&tag[..self.profile.rtp_overhead()]);
            }
        }
    }
}

/// The AES-CM PRF of RFC 3711 §4.3.3: `out` is the keystream of AES-CTR under the master
/// key, starting from `(salt XOR label << 48) << 16`.
fn derive(master_key: &[u8; 16], master_salt: &[u8], label: u8, out: &mut [u8]) {
    let aes = Aes128::new(master_key.into());
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = [0u8; 16];
        block[..master_salt.len()].copy_from_slice(master_salt);
        block[7] ^= label;
        block[14..].copy_from_slice(&(i as u16).to_be_bytes());
        let mut block = block.into();
        aes.encrypt_block(&mut block);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

fn xor_into(target: &mut [u8], with: &[u8]) {
    for (t, w) in target.iter_mut().zip(with) {
        *t ^= w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::srtp::context::Context;
    use rtc::srtp::protection_profile::ProtectionProfile;

    fn rtc_profile(profile: SrtpProfile) -> ProtectionProfile {
        match profile {
            SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            SrtpProfile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpProfile::Aes128CmHmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }

    fn packet(seq: u16, payload_len: usize) -> Vec<u8> {
        let mut p = vec![0x80, 0x60, 0, 0, 0, 0, 0x30, 0x39, 0xde, 0xad, 0xbe, 0xef];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend((0..payload_len).map(|i| (i * 7) as u8));
        p
    }

    /// Our output must be byte-identical to `rtc`'s own SRTP context, which is what the
    /// viewer's stack decrypts with, across a sequence wrap (ROC 0 → 1).
    #[test]
    fn protect_matches_rtc_for_every_profile() {
        let crypto = rtc::crypto::default_provider().unwrap();
        let master = MasterKey {
            key: *b"0123456789abcdef",
            salt: *b"saltsaltsaltsa",
        };
        for profile in SrtpProfile::ALL {
            let salt = &master.salt[..profile.salt_len()];
            let mut reference = Context::new(
                &master.key,
                salt,
                rtc_profile(profile),
                None,
                None,
                crypto.crypto(),
            )
            .unwrap();
            let ours = SrtpSender::new(profile, &master);
            for (i, seq) in [65533u16, 65534, 65535, 0, 1, 2].into_iter().enumerate() {
                let plain = packet(seq, 100 + i * 300);
                let expected = reference.encrypt_rtp(&plain).unwrap();
                let roc = u32::from(i >= 3);
                let mut buf = plain.clone();
                ours.protect_rtp(&mut buf, 12, roc);
                assert_eq!(buf.len(), plain.len() + profile.rtp_overhead());
                assert_eq!(&buf[..], &expected[..], "{profile:?} seq {seq}");
            }
        }
    }

    #[test]
    fn other_keys_give_other_bytes() {
        let a = MasterKey {
            key: [1; 16],
            salt: [2; 14],
        };
        let b = MasterKey {
            key: [1; 16],
            salt: [3; 14],
        };
        for profile in SrtpProfile::ALL {
            let (mut x, mut y) = (packet(7, 50), packet(7, 50));
            SrtpSender::new(profile, &a).protect_rtp(&mut x, 12, 0);
            SrtpSender::new(profile, &b).protect_rtp(&mut y, 12, 0);
            assert_ne!(x, y);
        }
    }
}
