//! Codes people type and secrets they hold: room codes (checked and case-folded once, then
//! carried as a [`RoomCode`]), fresh room and party codes, and host and member keys.
//! A leaf module: it knows no session, room or party.

use std::fmt;

use rand::Rng;

/// Fresh codes use 6 characters from an alphabet without look-alikes (0/O, 1/I/L), easy to
/// read off a TV and type on a phone: 31^6 ≈ 887 million codes.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
pub(crate) const CODE_LEN: usize = 6;
/// Secret keys (host keys, party member keys): 32 characters of the same alphabet, about
/// 158 bits.
pub(crate) const KEY_LEN: usize = 32;
/// Longest room code a client may choose.
pub const MAX_ROOM_CODE: usize = 32;

/// A valid room (or party) code: 1–32 ASCII letters, digits, `-` and `_`, upper-case. Codes
/// are case-insensitive (typed on phones and TV remotes), so `abc` and `ABC` are one room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomCode(String);

/// A code that is not a valid [`RoomCode`] (answered `invalid_room`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a room code is 1 to {MAX_ROOM_CODE} letters, digits, '-' or '_'")]
pub struct InvalidCode;

impl RoomCode {
    /// Checks and case-folds a code a client sent.
    pub fn parse(code: &str) -> Result<Self, InvalidCode> {
        let valid = !code.is_empty()
            && code.len() <= MAX_ROOM_CODE
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(InvalidCode);
        }
        Ok(Self(code.to_ascii_uppercase()))
    }

    /// A fresh random code of [`CODE_LEN`] characters (the caller checks it is unused).
    pub fn random() -> Self {
        Self(random_code(CODE_LEN))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for RoomCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `len` characters of the code alphabet, uniformly random (fresh codes and secret keys).
pub(crate) fn random_code(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_codes_are_validated_and_case_folded() {
        assert_eq!(RoomCode::parse("abc-12").unwrap().as_str(), "ABC-12");
        for bad in ["", "has space", "ünï", &"x".repeat(33), "a/b"] {
            assert_eq!(RoomCode::parse(bad), Err(InvalidCode), "{bad:?}");
        }
        let fresh = RoomCode::random();
        assert_eq!(RoomCode::parse(fresh.as_str()), Ok(fresh.clone()));
        assert_eq!(fresh.as_str().len(), CODE_LEN);
    }
}
