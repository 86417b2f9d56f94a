//! Learning a peer's SRTP master keys through `rtc`'s public crypto-provider API.
//!
//! `rtc` exposes no accessor for the keys its DTLS handshake exports, but every peer
//! connection takes its crypto from the [`RTCCryptoProvider`] its `SettingEngine` is given.
//! The SRTP key derivation (RFC 3711 §4.3) runs the master key through one AES block
//! encryption per label, and for the first label the block *is* the master salt padded with
//! zeros. So a provider that forwards every call to the default one and notes the AES-128
//! block encryptions it sees holds, after the handshake, the master key and salt of both
//! directions, next to whatever else used AES blocks.
//!
//! Nothing here is trusted: [`KeyTap::candidates`] lists what *might* be keys, and the SFU
//! only uses a candidate after its output for a real packet was byte-identical to `rtc`'s
//! (see the fast path in `forward`). A future `rtc` that derives keys differently makes the
//! check fail, and forwarding stays on `rtc`'s path with a log line, never on wrong keys.

use std::sync::{Arc, Mutex};

use rtc::crypto::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher,
    CryptoAlgorithm, CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac,
    PublicKey, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher,
    StreamCipherAlgorithm,
};

use crate::srtp::MasterKey;

/// Distinct AES-128 keys remembered per peer: the two SRTP directions need two; DTLS record
/// protection uses AEAD objects, not single blocks, so a handful covers any cipher suite.
/// Later keys are ignored (a peer that re-keys stays on `rtc`'s path).
const MAX_CANDIDATES: usize = 8;

/// A crypto provider that forwards to `rtc`'s default one and remembers possible SRTP master
/// keys. One per peer connection.
pub struct KeyTap {
    inner: Arc<dyn RTCCryptoProvider>,
    seen: Mutex<Vec<MasterKey>>,
}

impl KeyTap {
    pub fn new() -> Result<Arc<Self>, CryptoError> {
        Ok(Arc::new(Self {
            inner: rtc::crypto::default_provider()?,
            seen: Mutex::new(Vec::new()),
        }))
    }

    /// The (key, salt) pairs seen so far, in the order `rtc` derived them.
    pub fn candidates(&self) -> Vec<MasterKey> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn note(&self, key: &[u8], block: &[u8]) {
        let (Ok(key), Ok(block)) = (<[u8; 16]>::try_from(key), <[u8; 16]>::try_from(block)) else {
            return;
        };
        // The first block derived under a master key is label 0, index 0: the salt, then
        // zeros (a 12-byte GCM salt leaves 4, a 14-byte one 2).
        if block[14..] != [0, 0] {
            return;
        }
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() < MAX_CANDIDATES && !seen.iter().any(|m| m.key == key) {
            let mut salt = [0u8; 14];
            salt.copy_from_slice(&block[..14]);
            seen.push(MasterKey { key, salt });
        }
    }
}

impl RTCCryptoProvider for KeyTap {
    fn name(&self) -> &'static str {
        "marquee-keytap"
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        self
    }

    fn random(&self) -> &dyn RTCRandom {
        self.inner.random()
    }
}

impl RTCCrypto for KeyTap {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        if algorithm == BlockCipherAlgorithm::Aes128 {
            self.note(key, block);
        }
        self.inner.crypto().block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.inner.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::srtp::context::Context;
    use rtc::srtp::protection_profile::ProtectionProfile;

    /// Building `rtc`'s own SRTP contexts through the tap reveals their master keys.
    #[test]
    fn srtp_context_creation_reveals_master_keys() {
        let tap = KeyTap::new().unwrap();
        let local = MasterKey {
            key: [0x11; 16],
            salt: *b"local-salt-14b",
        };
        let remote = MasterKey {
            key: [0x22; 16],
            salt: *b"remote-salt-xy",
        };
        Context::new(
            &local.key,
            &local.salt[..12],
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            tap.crypto(),
        )
        .unwrap();
        Context::new(
            &remote.key,
            &remote.salt,
            ProtectionProfile::Aes128CmHmacSha1_80,
            None,
            None,
            tap.crypto(),
        )
        .unwrap();
        let found = tap.candidates();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].key, local.key);
        assert_eq!(found[0].salt[..12], local.salt[..12]);
        assert_eq!(found[1], remote);
    }
}
