//! The key material of sticky cookies: a [`Secret`] that cannot be weak, and
//! [`Secrets`], the handle that rotates it while requests run.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::base64url;
use super::codec::SecretKeys;
use crate::Error;

/// The shortest secret accepted, in bytes: 256 bits, as the `cookie` crate
/// and RFC 9106 ask of a key.
pub const MIN_SECRET_LEN: usize = 32;

/// The longest secret accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 1024;

/// How many previous secrets a [`Secrets`] handle accepts besides the
/// current one. Each is tried in turn on a cookie the current one rejects,
/// so a forged cookie costs one check per secret: a bound keeps that cost
/// bounded too.
pub const MAX_PREVIOUS_SECRETS: usize = 8;

/// How to make a good secret, said by every refusal.
const HOW_TO_MAKE_ONE: &str = "make one with `openssl rand -base64 32` and read it with \
     `Secret::from_base64`, or call `Secret::generate()`";

/// A sticky-cookie secret: at least [`MIN_SECRET_LEN`] bytes that look
/// random.
///
/// Anyone who knows the secret can read which backend a cookie names and
/// make a cookie for any backend, and one issued cookie is enough to test
/// guesses offline. So a `Secret` is made only from the operating system's
/// random number generator ([`generate`](Self::generate)) or from bytes
/// that pass two checks against the mistakes people make: they are not all
/// printable text (a passphrase, or a hex or base64 string passed as raw
/// bytes), and they are not made of a few repeated values or a regular
/// progression (`aaaa…`, `0123…`). Random bytes fail either check with a
/// probability under 10⁻¹³. The checks cannot tell a guessable secret that
/// looks random from a real one: generate it.
///
/// Secrets travel as base64 ([`from_base64`](Self::from_base64), standard
/// or URL-safe, padding optional) or hex ([`from_hex`](Self::from_hex)),
/// which an environment variable or a config file can hold. `Debug` never
/// shows the bytes.
///
/// ```
/// use tower_lb::sticky::Secret;
///
/// // A fresh secret, from the OS random number generator...
/// let fresh = Secret::generate()?;
/// // ...written out once for the secret store (`openssl rand -base64 32` works too),
/// let stored = fresh.to_base64();
/// // ...and read back by every replica, e.g. from the environment.
/// let secret: Secret = stored.parse()?;
/// assert_eq!(secret, fresh);
/// assert!(!format!("{secret:?}").contains(&stored));
///
/// // A phrase is refused, with the way to make a real one.
/// let err = Secret::from_bytes(b"32 random bytes from the vault!!").unwrap_err();
/// assert!(err.to_string().contains("openssl rand -base64 32"));
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone)]
pub struct Secret {
    bytes: Box<[u8]>,
}

impl Secret {
    /// A new 32-byte secret from the operating system's random number
    /// generator.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSecret`] if the operating system has no random
    /// numbers to give.
    pub fn generate() -> Result<Secret, Error> {
        use rand::TryRng;
        let mut bytes = vec![0u8; MIN_SECRET_LEN].into_boxed_slice();
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| Error::InvalidSecret {
                reason: format!("the operating system's random number generator failed ({e})"),
            })?;
        Ok(Secret { bytes })
    }

    /// A secret from raw bytes, checked: at least [`MIN_SECRET_LEN`] bytes,
    /// not all printable text, not a few repeated values or a progression.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSecret`] for bytes that are too short, too long or
    /// plainly not random; the message says how to make a good secret.
    pub fn from_bytes(bytes: impl AsRef<[u8]>) -> Result<Secret, Error> {
        let bytes = bytes.as_ref();
        check(bytes)?;
        Ok(Secret {
            bytes: bytes.into(),
        })
    }

    /// A secret from its base64 encoding, standard (`+/`) or URL-safe
    /// (`-_`), with or without `=` padding; whitespace around it (the
    /// newline `openssl rand -base64 32` ends with) is ignored.
    ///
    /// ```
    /// use tower_lb::sticky::Secret;
    ///
    /// // The output of `openssl rand -base64 32`.
    /// let secret = Secret::from_base64("q3M0V+8dXl0pVQw6C1bT4m9sZr2hYf7kP1aN5xJc/Eg=\n")?;
    /// assert_eq!(secret.len(), 32);
    /// assert!(Secret::from_base64("not base64!").is_err());
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSecret`] if `encoded` is not base64, or decodes to
    /// bytes [`from_bytes`](Self::from_bytes) refuses.
    pub fn from_base64(encoded: &str) -> Result<Secret, Error> {
        let trimmed = encoded.trim().trim_end_matches('=');
        let url_safe: Vec<u8> = trimmed
            .bytes()
            .map(|b| match b {
                b'+' => b'-',
                b'/' => b'_',
                b => b,
            })
            .collect();
        let mut bytes = vec![0u8; url_safe.len() / 4 * 3 + 3];
        let len =
            base64url::decode_into(&url_safe, &mut bytes).ok_or_else(|| Error::InvalidSecret {
                reason: format!(
                    "the secret is not base64 ({} characters given; {HOW_TO_MAKE_ONE})",
                    trimmed.len()
                ),
            })?;
        let secret = Secret::from_bytes(&bytes[..len]);
        bytes.fill(0);
        secret
    }

    /// A secret from its hex encoding (either case); whitespace around it
    /// is ignored.
    ///
    /// ```
    /// use tower_lb::sticky::Secret;
    ///
    /// // The output of `openssl rand -hex 32`.
    /// let hex = "9f1c2e4a7b3d5f60182a3c4e5d6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";
    /// assert_eq!(Secret::from_hex(hex)?.len(), 32);
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSecret`] if `encoded` is not hex, or decodes to
    /// bytes [`from_bytes`](Self::from_bytes) refuses.
    pub fn from_hex(encoded: &str) -> Result<Secret, Error> {
        let digits = encoded.trim().as_bytes();
        let not_hex = || Error::InvalidSecret {
            reason: format!(
                "the secret is not hex ({} characters given; {HOW_TO_MAKE_ONE})",
                digits.len()
            ),
        };
        if digits.len() % 2 != 0 {
            return Err(not_hex());
        }
        let mut bytes = Vec::with_capacity(digits.len() / 2);
        for pair in digits.chunks_exact(2) {
            let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
                bytes.fill(0);
                return Err(not_hex());
            };
            bytes.push(hi << 4 | lo);
        }
        let secret = Secret::from_bytes(&bytes);
        bytes.fill(0);
        secret
    }

    /// The secret in standard base64 with padding, as `openssl rand -base64`
    /// writes it: for putting a [generated](Self::generate) secret into a
    /// secret store. Handle the result as the secret itself.
    pub fn to_base64(&self) -> String {
        let mut url_safe = String::new();
        base64url::encode_into(&self.bytes, &mut url_safe);
        let mut out: String = url_safe
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        while out.len() % 4 != 0 {
            out.push('=');
        }
        out
    }

    /// The secret's length in bytes (never less than [`MIN_SECRET_LEN`]).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Parses base64 or hex: a string of hex digits only is read as hex (an
/// even number of them, at least 64), anything else as base64. A base64
/// string of 32 or more random bytes is all hex digits with a probability
/// under 10⁻²⁹.
impl FromStr for Secret {
    type Err = Error;

    fn from_str(s: &str) -> Result<Secret, Error> {
        let t = s.trim();
        if t.len() >= 2 * MIN_SECRET_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            Secret::from_hex(t)
        } else {
            Secret::from_base64(t)
        }
    }
}

/// Compared in constant time.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        if self.bytes.len() != other.bytes.len() {
            return false;
        }
        let diff = self
            .bytes
            .iter()
            .zip(other.bytes.iter())
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted>, {} bytes)", self.bytes.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: copies made on the way (moves, the allocator) are
        // out of reach without `unsafe`.
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Refuses bytes that are too short or too long, or plainly not random.
fn check(bytes: &[u8]) -> Result<(), Error> {
    let refuse = |what: String| {
        Err(Error::InvalidSecret {
            reason: format!("{what}; {HOW_TO_MAKE_ONE}"),
        })
    };
    let n = bytes.len();
    if n < MIN_SECRET_LEN {
        return refuse(format!(
            "the secret is {n} bytes long, it must be at least {MIN_SECRET_LEN} random bytes"
        ));
    }
    if n > MAX_SECRET_LEN {
        return refuse(format!(
            "the secret is {n} bytes long, more than the {MAX_SECRET_LEN} accepted"
        ));
    }
    // 32 random bytes are all printable ASCII with a probability of
    // (95/256)^32 ≈ 10⁻¹⁴.
    if bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return refuse(
            "the secret is printable text (a passphrase, or a hex or base64 string passed as raw \
             bytes: parse those with `Secret::from_hex` or `Secret::from_base64`), not random bytes"
                .into(),
        );
    }
    // n random bytes take about 256·(1 − e^(−n/256)) distinct values (30
    // of 32); fewer than a quarter of min(n, 256) is out of reach by chance.
    // The same for the steps between neighbours catches progressions.
    let floor = n.min(256) / 4;
    let steps = bytes.windows(2).map(|w| w[1].wrapping_sub(w[0]));
    if distinct(bytes.iter().copied()) < floor || distinct(steps) < floor {
        return refuse(format!(
            "the secret's {n} bytes are a few repeated values or a regular progression, not random"
        ));
    }
    Ok(())
}

fn distinct(values: impl Iterator<Item = u8>) -> usize {
    let mut seen = [false; 256];
    values.for_each(|v| seen[usize::from(v)] = true);
    seen.iter().filter(|&&s| s).count()
}

/// The sticky-cookie secrets in use, shared: the current one, which makes
/// every new cookie, and up to [`MAX_PREVIOUS_SECRETS`] previous ones,
/// whose cookies are still accepted and re-issued under the current one.
///
/// Cloning is cheap, and every clone is the same handle: give one to
/// [`StickyCookie::new`](super::StickyCookie::new) and keep another to
/// rotate the secrets while requests run (from a reload signal, an admin
/// endpoint, a watch on the secret store). The next request uses the new
/// secrets; a request being verified finishes with the ones it started
/// with. Verifying reads one atomic counter and a per-thread cache of the
/// derived keys, so rotation costs the hot path nothing measurable.
///
/// A fleet of gateway replicas rotates in three rolling steps, so that no
/// replica ever meets a cookie it cannot read:
/// 1. [`add_previous`](Self::add_previous) the new secret everywhere;
/// 2. [`rotate`](Self::rotate) to it everywhere (the old one becomes a
///    previous secret);
/// 3. after the cookie's `max_age`, [`retire`](Self::retire) the old one.
///
/// ```
/// use tower_lb::sticky::{Secret, Secrets, StickyCookie};
///
/// let old = Secret::generate()?;
/// let secrets = Secrets::new(old.clone());
/// let sticky = StickyCookie::new("lb", secrets.clone())?;
/// let issued_before = sticky.token_at("b1", std::time::SystemTime::now())?;
///
/// let new = Secret::generate()?;
/// secrets.add_previous(new.clone())?; // step 1, on every replica
/// secrets.rotate(new)?;               // step 2, on every replica
///
/// // The old cookie still names its backend, and is re-issued.
/// let now = std::time::SystemTime::now();
/// let verified = sticky.verify_token_at(issued_before.as_bytes(), now).unwrap();
/// assert_eq!(verified.id(), "b1");
/// assert!(verified.should_reissue());
///
/// assert!(secrets.retire(&old)); // step 3, after max_age
/// assert!(sticky.verify_token_at(issued_before.as_bytes(), now).is_none());
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone)]
pub struct Secrets {
    shared: Arc<Shared>,
}

struct Shared {
    /// Bumped, under the write lock, on every change of `list`.
    version: AtomicU64,
    list: RwLock<SecretList>,
}

#[derive(Clone)]
pub(crate) struct SecretList {
    pub(crate) current: Secret,
    pub(crate) previous: Vec<Secret>,
}

impl Secrets {
    /// A handle with `current` and no previous secret.
    pub fn new(current: Secret) -> Secrets {
        Secrets {
            shared: Arc::new(Shared {
                version: AtomicU64::new(0),
                list: RwLock::new(SecretList {
                    current,
                    previous: Vec::new(),
                }),
            }),
        }
    }

    /// A handle with `current`, accepting cookies made with `previous`
    /// (tried in this order) too.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for more than [`MAX_PREVIOUS_SECRETS`]
    /// previous secrets.
    pub fn with_previous(
        current: Secret,
        previous: impl IntoIterator<Item = Secret>,
    ) -> Result<Secrets, Error> {
        let secrets = Secrets::new(current.clone());
        secrets.replace(current, previous)?;
        Ok(secrets)
    }

    /// Replaces every secret at once: for a reload that reads them all from
    /// the secret store. A previous secret equal to `current`, or given
    /// twice, is kept once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for more than [`MAX_PREVIOUS_SECRETS`]
    /// previous secrets; the handle is then unchanged.
    pub fn replace(
        &self,
        current: Secret,
        previous: impl IntoIterator<Item = Secret>,
    ) -> Result<(), Error> {
        let mut kept: Vec<Secret> = Vec::new();
        for secret in previous {
            if secret != current && !kept.contains(&secret) {
                kept.push(secret);
            }
        }
        check_previous_count(kept.len())?;
        self.update(|list| {
            *list = SecretList {
                current,
                previous: kept,
            }
        });
        Ok(())
    }

    /// Accepts cookies made with `secret` too, without making any with it:
    /// step 1 of a rolling rotation. Adding the current secret or one
    /// already accepted changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if [`MAX_PREVIOUS_SECRETS`] are already
    /// accepted; the handle is then unchanged.
    pub fn add_previous(&self, secret: Secret) -> Result<(), Error> {
        let mut result = Ok(());
        self.update(|list| {
            if list.current == secret || list.previous.contains(&secret) {
                return;
            }
            result = check_previous_count(list.previous.len() + 1);
            if result.is_ok() {
                list.previous.push(secret);
            }
        });
        result
    }

    /// Makes `secret` the current one: new cookies are made with it, and the
    /// one it replaces becomes the first previous secret, still accepted
    /// (step 2 of a rolling rotation). If `secret` was a previous secret,
    /// it stops being one. Rotating to the current secret changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if the replaced secret would make more than
    /// [`MAX_PREVIOUS_SECRETS`] previous ones: [`retire`](Self::retire) one
    /// first. The handle is then unchanged.
    pub fn rotate(&self, secret: Secret) -> Result<(), Error> {
        let mut result = Ok(());
        self.update(|list| {
            if list.current == secret {
                return;
            }
            let mut previous: Vec<Secret> = list
                .previous
                .iter()
                .filter(|&p| *p != secret)
                .cloned()
                .collect();
            previous.insert(0, list.current.clone());
            result = check_previous_count(previous.len());
            if result.is_ok() {
                *list = SecretList {
                    current: secret,
                    previous,
                };
            }
        });
        result
    }

    /// Stops accepting cookies made with the previous secret `secret`
    /// (step 3 of a rolling rotation, once the cookie's `max_age` has
    /// passed, or at once if it leaked). Returns whether it was a previous
    /// secret; the current one cannot be retired, only rotated away from.
    pub fn retire(&self, secret: &Secret) -> bool {
        let mut found = false;
        self.update(|list| {
            let before = list.previous.len();
            list.previous.retain(|p| p != secret);
            found = list.previous.len() != before;
        });
        found
    }

    /// Stops accepting every previous secret.
    pub fn retire_all_previous(&self) {
        self.update(|list| list.previous.clear());
    }

    /// How many previous secrets are accepted.
    pub fn previous_count(&self) -> usize {
        self.read(|list| list.previous.len())
    }

    /// Whether `secret` is the current secret.
    pub fn is_current(&self, secret: &Secret) -> bool {
        self.read(|list| list.current == *secret)
    }

    /// The version of the secrets, bumped by every change.
    #[inline]
    pub(crate) fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Acquire)
    }

    /// The secrets and their version, read together.
    pub(crate) fn snapshot(&self) -> (u64, SecretList) {
        self.read(|list| (self.shared.version.load(Ordering::Acquire), list.clone()))
    }

    fn read<T>(&self, f: impl FnOnce(&SecretList) -> T) -> T {
        // A panic while the lock was held cannot leave the list half
        // changed (`update` replaces it whole or not at all).
        let list = self.shared.list.read().unwrap_or_else(|e| e.into_inner());
        f(&list)
    }

    fn update(&self, f: impl FnOnce(&mut SecretList)) {
        let mut list = self.shared.list.write().unwrap_or_else(|e| e.into_inner());
        f(&mut list);
        // Bumped while the lock is held, so that a snapshot's version and
        // list always go together.
        self.shared.version.fetch_add(1, Ordering::AcqRel);
    }
}

impl From<Secret> for Secrets {
    fn from(current: Secret) -> Secrets {
        Secrets::new(current)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("current", &"<redacted>")
            .field("previous", &self.previous_count())
            .finish()
    }
}

fn check_previous_count(n: usize) -> Result<(), Error> {
    if n > MAX_PREVIOUS_SECRETS {
        return Err(Error::InvalidConfig {
            reason: format!(
                "{n} previous sticky-cookie secrets: at most {MAX_PREVIOUS_SECRETS} are accepted \
                 (retire those older than the cookie's max_age)"
            ),
        });
    }
    Ok(())
}

/// The keys one sticky cookie derives from its [`Secrets`], re-derived when
/// the secrets change.
pub(crate) struct CookieKeys {
    /// Tells this cookie's keys apart in the per-thread cache; never reused.
    id: u64,
    name: Box<str>,
    secrets: Secrets,
    /// The keys as the cookie was made: used without any lookup until the
    /// secrets first change.
    initial: KeySet,
    /// The keys of the latest version derived.
    derived: RwLock<Arc<KeySet>>,
}

/// The keys of every secret accepted at one version of the secrets.
pub(crate) struct KeySet {
    version: u64,
    pub(crate) current: SecretKeys,
    pub(crate) previous: Box<[SecretKeys]>,
}

/// Entries in the per-thread cache: a process rarely has more sticky
/// cookies than this.
const CACHED: usize = 4;

/// A cookie's id and its keys at one version.
type CachedKeys = Option<(u64, Arc<KeySet>)>;

thread_local! {
    /// Recently used key sets, by cookie id, most recent first.
    static KEY_CACHE: RefCell<[CachedKeys; CACHED]> =
        const { RefCell::new([None, None, None, None]) };
}

impl CookieKeys {
    pub(crate) fn new(name: &str, secrets: Secrets) -> CookieKeys {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let initial = derive(name, &secrets);
        let derived = RwLock::new(Arc::new(derive(name, &secrets)));
        CookieKeys {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            secrets,
            initial,
            derived,
        }
    }

    pub(crate) fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Runs `f` with the keys of the secrets as they are now.
    ///
    /// The hot path reads the version counter (a plain load): until the
    /// secrets first change, the keys the cookie was made with serve; after,
    /// this thread's cache has them. No lock, no reference count touched, so
    /// threads verifying at once do not contend. After each change, each
    /// thread takes the lock once to pick up the new keys.
    #[inline]
    pub(crate) fn with<T>(&self, mut f: impl FnMut(&KeySet) -> T) -> T {
        let version = self.secrets.version();
        if version == self.initial.version {
            return f(&self.initial);
        }
        let hit = KEY_CACHE.try_with(|cache| {
            let cache = cache.try_borrow().ok()?;
            let keys = cache.iter().find_map(|entry| match entry {
                Some((id, keys)) if *id == self.id && keys.version == version => Some(keys),
                _ => None,
            })?;
            Some(f(keys))
        });
        match hit {
            Ok(Some(result)) => result,
            _ => self.with_slow(version, f),
        }
    }

    #[cold]
    fn with_slow<T>(&self, version: u64, mut f: impl FnMut(&KeySet) -> T) -> T {
        let keys = self.load(version);
        let _ = KEY_CACHE.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                let at = cache
                    .iter()
                    .position(|e| e.as_ref().is_some_and(|(id, _)| *id == self.id))
                    .unwrap_or(CACHED - 1);
                cache[..=at].rotate_right(1);
                cache[0] = Some((self.id, Arc::clone(&keys)));
            }
        });
        f(&keys)
    }

    /// The key set for `version` or later, derived if need be.
    fn load(&self, version: u64) -> Arc<KeySet> {
        {
            let derived = self.derived.read().unwrap_or_else(|e| e.into_inner());
            if derived.version >= version {
                return Arc::clone(&derived);
            }
        }
        let fresh = Arc::new(derive(&self.name, &self.secrets));
        let mut derived = self.derived.write().unwrap_or_else(|e| e.into_inner());
        if fresh.version > derived.version {
            *derived = Arc::clone(&fresh);
        }
        Arc::clone(&derived)
    }
}

fn derive(name: &str, secrets: &Secrets) -> KeySet {
    let (version, list) = secrets.snapshot();
    KeySet {
        version,
        current: SecretKeys::derive(list.current.as_bytes(), name.as_bytes()),
        previous: list
            .previous
            .iter()
            .map(|s| SecretKeys::derive(s.as_bytes(), name.as_bytes()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        rand::fill(&mut v[..]);
        v
    }

    fn refused(bytes: &[u8]) -> String {
        match Secret::from_bytes(bytes) {
            Err(Error::InvalidSecret { reason }) => reason,
            other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn short_phrase_like_and_patterned_secrets_are_refused_with_how_to_make_one() {
        assert!(refused(&random(31)).contains("31 bytes long"));
        assert!(refused(b"32 random bytes from the vault!!").contains("printable text"));
        assert!(refused(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").contains("printable"));
        let hex_as_bytes = b"9f1c2e4a7b3d5f60182a3c4e5d6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";
        assert!(refused(hex_as_bytes).contains("Secret::from_hex"));
        assert!(refused(&[0; 32]).contains("few repeated values"));
        assert!(refused(&[0xde, 0xad, 0xbe, 0xef].repeat(8)).contains("few repeated"));
        let counting: Vec<u8> = (0..64).collect();
        assert!(refused(&counting).contains("progression"));
        let stepping: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        assert!(refused(&stepping).contains("progression"));
        assert!(refused(&random(MAX_SECRET_LEN + 1)).contains("more than"));
        for bytes in [&random(0)[..], b"x", b"\x80\x81"] {
            assert!(refused(bytes).contains("openssl rand -base64 32"));
        }
    }

    #[test]
    fn random_secrets_of_any_accepted_length_pass() {
        for n in [32, 33, 48, 64, 100, 256, 512, MAX_SECRET_LEN] {
            for _ in 0..200 {
                assert!(Secret::from_bytes(random(n)).is_ok(), "{n} bytes");
            }
        }
        for _ in 0..1000 {
            assert_eq!(Secret::generate().unwrap().len(), 32);
        }
    }

    #[test]
    fn base64_and_hex_round_trip_in_every_spelling() {
        let bytes = random(32);
        let secret = Secret::from_bytes(&bytes).unwrap();
        let standard = secret.to_base64();
        assert_eq!(standard.len(), 44);
        assert!(standard.ends_with('='));
        let url_safe = standard.replace('+', "-").replace('/', "_");
        let unpadded = standard.trim_end_matches('=');
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        for spelling in [
            standard.clone(),
            url_safe,
            unpadded.to_owned(),
            format!("  {standard}\n"),
            hex.clone(),
            hex.to_uppercase(),
        ] {
            assert_eq!(spelling.parse::<Secret>().unwrap(), secret, "{spelling}");
        }
        assert_eq!(Secret::from_hex(&hex).unwrap(), secret);
        assert_eq!(Secret::from_base64(&standard).unwrap(), secret);
        assert!(Secret::from_hex(&hex[1..]).is_err(), "odd length");
        for bad in ["", "@@@@", "zz".repeat(32).as_str(), "a", "abc=def"] {
            assert!(matches!(
                bad.parse::<Secret>(),
                Err(Error::InvalidSecret { .. })
            ));
        }
        assert!(Secret::from_hex(&hex[..62]).is_err(), "31 bytes");
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let secret = Secret::generate().unwrap();
        let shown = format!("{secret:?} {:?}", Secrets::new(secret.clone()));
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>, 32 bytes)");
        assert!(!shown.contains(&secret.to_base64()));
        assert!(!shown.contains(secret.to_base64().trim_end_matches('=')));
    }

    proptest::proptest! {
        #[test]
        fn printable_text_of_any_length_is_refused(text in "[ -~\t\n]{0,300}") {
            let refused = matches!(
                Secret::from_bytes(text.as_bytes()),
                Err(Error::InvalidSecret { .. })
            );
            proptest::prop_assert!(refused);
        }

        #[test]
        fn every_encoding_of_a_random_secret_reads_back_the_same(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 32..=200),
        ) {
            // Random bytes pass the checks but with a negligible probability.
            let secret = Secret::from_bytes(&bytes).unwrap();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            proptest::prop_assert_eq!(&secret.to_base64().parse::<Secret>().unwrap(), &secret);
            proptest::prop_assert_eq!(&hex.parse::<Secret>().unwrap(), &secret);
            proptest::prop_assert_eq!(&Secret::from_hex(&hex.to_uppercase()).unwrap(), &secret);
        }

        #[test]
        fn a_secret_of_few_distinct_values_is_refused(
            values in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..8),
            picks in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 32..200),
        ) {
            let bytes: Vec<u8> = picks.iter().map(|i| values[i.index(values.len())]).collect();
            proptest::prop_assert!(Secret::from_bytes(&bytes).is_err());
        }
    }

    #[test]
    fn an_invalid_secret_is_a_configuration_error_for_a_proxy() {
        let err = Secret::from_bytes(b"short").unwrap_err();
        assert_eq!(err.status_code(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err
            .to_string()
            .starts_with("sticky-cookie secret refused: "));
    }

    #[test]
    fn rotation_steps_keep_the_list_in_order_and_bounded() {
        let s: Vec<Secret> = (0..12).map(|_| Secret::generate().unwrap()).collect();
        let secrets = Secrets::new(s[0].clone());
        let v0 = secrets.version();
        secrets.add_previous(s[1].clone()).unwrap();
        secrets.add_previous(s[1].clone()).unwrap();
        secrets.add_previous(s[0].clone()).unwrap();
        assert_eq!(secrets.previous_count(), 1);
        assert!(secrets.version() > v0);
        secrets.rotate(s[1].clone()).unwrap();
        assert!(secrets.is_current(&s[1]));
        let (_, list) = secrets.snapshot();
        assert_eq!(list.previous, [s[0].clone()]);
        assert!(!secrets.retire(&s[1]), "the current one cannot be retired");
        assert!(secrets.retire(&s[0]));
        assert_eq!(secrets.previous_count(), 0);

        for p in &s[2..2 + MAX_PREVIOUS_SECRETS] {
            secrets.add_previous(p.clone()).unwrap();
        }
        let before = secrets.snapshot().1.previous;
        assert!(matches!(
            secrets.add_previous(s[11].clone()),
            Err(Error::InvalidConfig { .. })
        ));
        assert!(secrets.rotate(s[11].clone()).is_err());
        assert!(secrets.is_current(&s[1]));
        assert_eq!(secrets.snapshot().1.previous, before, "unchanged");
        // Rotating to a previous secret takes it out of the list: room.
        secrets.rotate(s[2].clone()).unwrap();
        assert_eq!(secrets.snapshot().1.previous[0], s[1]);
        assert_eq!(secrets.previous_count(), MAX_PREVIOUS_SECRETS);
        secrets.retire_all_previous();
        assert_eq!(secrets.previous_count(), 0);

        let too_many = s[1..].iter().cloned();
        assert!(Secrets::with_previous(s[0].clone(), too_many).is_err());
        let dup = [s[0].clone(), s[1].clone(), s[1].clone()];
        let ok = Secrets::with_previous(s[0].clone(), dup).unwrap();
        assert_eq!(ok.snapshot().1.previous, [s[1].clone()]);
    }
}
