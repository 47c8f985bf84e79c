//! SipHash-2-4 with a 128-bit output, for the sticky-cookie token, written
//! so that two hashes run in lockstep.
//!
//! Verifying a token takes two hashes that do not depend on each other: the
//! tag over the token, and the first block of keystream from the nonce.
//! SipHash is a chain of dependent additions and rotations, so one hash
//! leaves most of a CPU's execution units idle; computing both in one loop,
//! round by round, lets the second fill them (about 13 ns of 57 on the
//! benchmark machine, see docs/benchmarks.md). `siphasher` hashes one
//! message at a time, hence these few lines; a test checks them against
//! `siphasher` bit for bit. The ring's SipHash-1-3 still comes from
//! `siphasher`.

/// The state of one SipHash computation.
#[derive(Clone, Copy)]
pub(crate) struct Sip {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

impl Sip {
    /// A SipHash-2-4-128 computation under `key`.
    #[inline(always)]
    pub(crate) fn new(key: &[u8; 16]) -> Sip {
        let (k0, k1) = key.split_at(8);
        let k0 = u64::from_le_bytes(k0.try_into().unwrap_or_default());
        let k1 = u64::from_le_bytes(k1.try_into().unwrap_or_default());
        Sip {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            // The 128-bit variant marks its initial state with 0xee.
            v1: k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    /// Absorbs one message word (two compression rounds).
    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.round();
        self.v0 ^= m;
    }

    /// The 128-bit output (four finalization rounds per half), laid out as
    /// `siphasher`'s `Hash128::as_bytes`.
    #[inline(always)]
    fn finish(mut self) -> [u8; 16] {
        self.v2 ^= 0xee;
        for _ in 0..4 {
            self.round();
        }
        let h1 = self.v0 ^ self.v1 ^ self.v2 ^ self.v3;
        self.v1 ^= 0xdd;
        for _ in 0..4 {
            self.round();
        }
        halves(h1, self.v0 ^ self.v1 ^ self.v2 ^ self.v3)
    }
}

/// The message words of `msg` as SipHash reads them: every whole eight
/// bytes little-endian, then the rest with the length in the top byte.
struct Words<'m> {
    whole: std::slice::ChunksExact<'m, u8>,
    len: usize,
    last: bool,
}

impl<'m> Words<'m> {
    #[inline(always)]
    fn new(msg: &'m [u8]) -> Self {
        Words {
            whole: msg.chunks_exact(8),
            len: msg.len(),
            last: false,
        }
    }
}

impl Iterator for Words<'_> {
    type Item = u64;

    #[inline(always)]
    fn next(&mut self) -> Option<u64> {
        if let Some(w) = self.whole.next() {
            let mut word = [0; 8];
            word.copy_from_slice(w);
            return Some(u64::from_le_bytes(word));
        }
        if self.last {
            return None;
        }
        self.last = true;
        let rest = self.whole.remainder();
        let mut word = [0; 8];
        word[..rest.len()].copy_from_slice(rest);
        Some(u64::from_le_bytes(word) | (self.len as u64) << 56)
    }
}

/// SipHash-2-4-128 of `msg` under `key`.
#[inline]
pub(crate) fn sip128(key: &[u8; 16], msg: &[u8]) -> [u8; 16] {
    let mut s = Sip::new(key);
    for w in Words::new(msg) {
        s.compress(w);
    }
    s.finish()
}

/// SipHash-2-4-128 of `a` under `key_a` and of the 13-byte `b` under
/// `key_b`, computed in lockstep: `b`'s two words alongside `a`'s first
/// two, then `b`'s eight finalization rounds alongside `a`'s next four
/// words (as many as there are), then the rest of `a` alone.
#[inline]
pub(crate) fn sip128_pair(
    key_a: &[u8; 16],
    a: &[u8],
    key_b: &[u8; 16],
    b: &[u8; 13],
) -> ([u8; 16], [u8; 16]) {
    let (mut sa, mut sb) = (Sip::new(key_a), Sip::new(key_b));
    let mut wa = Words::new(a);
    for wb in Words::new(b) {
        if let Some(w) = wa.next() {
            sa.compress(w);
        }
        sb.compress(wb);
    }
    // `b`'s finalization, two rounds a step.
    sb.v2 ^= 0xee;
    let mut h1 = 0;
    for step in 0..4 {
        if let Some(w) = wa.next() {
            sa.compress(w);
        }
        sb.round();
        sb.round();
        if step == 1 {
            h1 = sb.v0 ^ sb.v1 ^ sb.v2 ^ sb.v3;
            sb.v1 ^= 0xdd;
        }
    }
    let h2 = sb.v0 ^ sb.v1 ^ sb.v2 ^ sb.v3;
    for w in wa {
        sa.compress(w);
    }
    (sa.finish(), halves(h1, h2))
}

/// The two halves of a 128-bit output, as `siphasher`'s
/// `Hash128::as_bytes` lays them out.
#[inline(always)]
fn halves(h1: u64, h2: u64) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&h1.to_le_bytes());
    out[8..].copy_from_slice(&h2.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use siphasher::sip128::SipHasher24;

    fn reference(key: &[u8; 16], msg: &[u8]) -> [u8; 16] {
        SipHasher24::new_with_key(key).hash(msg).as_bytes()
    }

    #[test]
    fn matches_the_reference_vectors_of_the_siphash_paper() {
        // The key 00 01 .. 0f and messages 00 01 .. (n-1), as in the
        // reference implementation's vectors_sip128.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..64).collect();
        assert_eq!(
            sip128(&key, &[]),
            [
                0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
                0x02, 0x93
            ]
        );
        for n in 0..64 {
            assert_eq!(sip128(&key, &msg[..n]), reference(&key, &msg[..n]), "{n}");
        }
    }

    proptest! {
        #[test]
        fn agrees_with_siphasher(
            key in any::<[u8; 16]>(),
            msg in proptest::collection::vec(any::<u8>(), 0..320),
        ) {
            prop_assert_eq!(sip128(&key, &msg), reference(&key, &msg));
        }

        #[test]
        fn the_pair_is_two_independent_hashes(
            ka in any::<[u8; 16]>(),
            kb in any::<[u8; 16]>(),
            a in proptest::collection::vec(any::<u8>(), 0..80),
            b in any::<[u8; 13]>(),
        ) {
            prop_assert_eq!(sip128_pair(&ka, &a, &kb, &b), (reference(&ka, &a), reference(&kb, &b)));
        }
    }
}
