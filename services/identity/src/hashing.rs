//! Password hashing with argon2id, off the async threads, behind a bounded pool.
//!
//! Argon2 is deliberately slow and memory-hungry (defaults: 19 MiB, 2 passes, 1 lane — the OWASP
//! Password Storage Cheat Sheet minimum), so every hash or verification runs on
//! `tokio::task::spawn_blocking`, and [`Hasher`] bounds the work: at most `max_concurrent`
//! computations run at once, at most `max_waiting` further calls wait for a slot, and any call
//! beyond that fails at once with [`Error::Busy`] (RESOURCE_EXHAUSTED at the gRPC layer). A burst of
//! logins therefore costs bounded memory (`max_concurrent × memory_kib`) and bounded queueing,
//! never an unbounded backlog.
//!
//! A caller that gives up (its future is dropped) while waiting frees its place at once; one that
//! gives up while its computation runs keeps both its slot and its place until the computation
//! ends, so the bounds hold for the real CPU and memory use.
//!
//! [`Hasher::verify`] with no stored hash (unknown user) still runs one full argon2 computation
//! with the configured parameters, against a dummy hash, so the answer takes as long as for a
//! real user with a wrong password and does not reveal which accounts exist.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use argon2::{
    Algorithm, Argon2, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::{
        self,
        phc::{Output, ParamsString, Salt},
    },
};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::domain::password::Password;

/// The fixed salt of the dummy hash used for unknown users (16 bytes, the recommended length).
const DUMMY_SALT: &[u8; 16] = b"bankmesh-unknown";

/// The argon2 output length, in bytes, of every hash this module writes.
const OUTPUT_LEN: usize = 32;

/// Argon2id cost parameters (the `hashing` config section). Changing them makes every stored
/// hash report `needs_rehash` at its owner's next successful login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashParams {
    /// Memory per computation in KiB; at least 8 × `parallelism`. Default 19456 (19 MiB).
    pub memory_kib: u32,
    /// Passes over the memory; at least 1. Default 2.
    pub iterations: u32,
    /// Lanes; 1..=16777215. Default 1.
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

impl HashParams {
    /// Checks the parameters are acceptable to argon2.
    ///
    /// # Errors
    /// A one-line message naming the first bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.parallelism < argon2::Params::MIN_P_COST || self.parallelism > argon2::Params::MAX_P_COST {
            return Err(format!(
                "parallelism must be between {} and {}, got {}",
                argon2::Params::MIN_P_COST,
                argon2::Params::MAX_P_COST,
                self.parallelism
            ));
        }
        let min_memory = u64::from(self.parallelism) * 8;
        if u64::from(self.memory_kib) < min_memory {
            return Err(format!(
                "memory_kib must be at least 8 * parallelism = {min_memory}, got {}",
                self.memory_kib
            ));
        }
        if self.iterations < argon2::Params::MIN_T_COST {
            return Err(format!("iterations must be at least 1, got {}", self.iterations));
        }
        self.to_argon2().map(|_| ()).map_err(|e| format!("memory_kib/iterations/parallelism: {e}"))
    }

    fn to_argon2(self) -> Result<argon2::Params, argon2::Error> {
        argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(OUTPUT_LEN))
    }
}

/// Why hashing or verification did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Every slot is taken and the waiting line is full; try again later.
    #[error("the password hasher is busy")]
    Busy,
    /// argon2 failed, the stored hash is not a usable PHC string, or the task died. The text
    /// never contains the password.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The outcome of [`Hasher::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password, or unknown user.
    No,
    /// The password matches.
    Yes {
        /// The stored hash is not argon2id v19 with the configured parameters: store a fresh
        /// [`Hasher::hash`] of this password.
        needs_rehash: bool,
    },
}

/// Hashes and verifies passwords on the blocking pool, at most `max_concurrent` at a time with at
/// most `max_waiting` callers queued. Cheap to clone; clones share the limits.
#[derive(Clone)]
pub struct Hasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: HashParams,
    argon2: argon2::Params,
    /// One permit per computation allowed to run.
    running: Arc<Semaphore>,
    /// Calls admitted (running or waiting for a permit).
    admitted: AtomicUsize,
    max_concurrent: usize,
    max_waiting: usize,
    /// PHC string with the configured parameters whose output no password produces in practice.
    dummy: String,
}

impl Inner {
    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.argon2.clone())
    }
}

impl Hasher {
    /// A hasher with the given parameters and limits. `max_concurrent` is raised to at least 1
    /// (and capped at tokio's semaphore limit); `max_waiting` may be 0 (no queue: busy at once
    /// when every slot is taken).
    ///
    /// # Errors
    /// The message of [`HashParams::validate`] when the parameters are unusable.
    pub fn new(params: HashParams, max_concurrent: usize, max_waiting: usize) -> Result<Self, String> {
        params.validate()?;
        let argon2 = params.to_argon2().map_err(|e| e.to_string())?;
        let dummy = dummy_hash(&argon2).map_err(|e| format!("dummy hash: {e}"))?;
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                argon2,
                running: Arc::new(Semaphore::new(max_concurrent)),
                admitted: AtomicUsize::new(0),
                max_concurrent,
                max_waiting,
                dummy,
            }),
        })
    }

    /// The configured parameters.
    #[must_use]
    pub fn params(&self) -> HashParams {
        self.inner.params
    }

    /// Calls currently running or waiting (for a gauge).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.inner.admitted.load(Ordering::Acquire)
    }

    /// Hashes `password` with a fresh random salt into a PHC string
    /// (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    ///
    /// # Errors
    /// [`Error::Busy`] when the hasher is saturated; [`Error::Hash`] if argon2 or the random
    /// number generator fails.
    pub async fn hash(&self, password: &Password) -> Result<String, Error> {
        let password = password.clone();
        self.run(move |inner| {
            inner
                .argon2()
                .hash_password(password.expose().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| Error::Hash(e.to_string()))
        })
        .await
    }

    /// Checks `password` against the stored PHC string `phc`; `None` means the user is unknown,
    /// which is answered [`Verified::No`] after the same amount of work as a real check.
    ///
    /// # Errors
    /// [`Error::Busy`] when the hasher is saturated; [`Error::Hash`] when the stored string is
    /// not a PHC string of a supported argon2 variant, or argon2 fails.
    pub async fn verify(&self, password: &Password, phc: Option<&str>) -> Result<Verified, Error> {
        let password = password.clone();
        let known = phc.is_some();
        let phc = phc.map_or_else(|| self.inner.dummy.clone(), str::to_owned);
        self.run(move |inner| {
            let stored = PasswordHash::new(&phc)
                .map_err(|e| Error::Hash(format!("stored hash is not a PHC string: {e}")))?;
            match inner.argon2().verify_password(password.expose().as_bytes(), &stored) {
                Ok(()) if known => Ok(Verified::Yes { needs_rehash: needs_rehash(&stored, &inner.argon2) }),
                Ok(()) | Err(password_hash::Error::PasswordInvalid) => Ok(Verified::No),
                Err(e) => Err(Error::Hash(e.to_string())),
            }
        })
        .await
    }

    /// Admits the call or answers busy, waits for a slot, then runs `job` on the blocking pool.
    async fn run<T, F>(&self, job: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, Error> + Send + 'static,
    {
        let admission = self.admit()?;
        let permit = Arc::clone(&self.inner.running)
            .acquire_owned()
            .await
            .map_err(|_closed| Error::Hash("the hasher is shut down".to_owned()))?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // Held until the computation ends, even if the caller stops waiting for it.
            let _slot = (admission, permit);
            job(&inner)
        })
        .await
        .map_err(|e| Error::Hash(format!("hashing task failed: {e}")))?
    }

    fn admit(&self) -> Result<Admission, Error> {
        let limit = self.inner.max_concurrent.saturating_add(self.inner.max_waiting);
        self.inner
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .map_err(|_full| Error::Busy)?;
        Ok(Admission(Arc::clone(&self.inner)))
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("params", &self.inner.params)
            .field("max_concurrent", &self.inner.max_concurrent)
            .field("max_waiting", &self.inner.max_waiting)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// A place among the admitted calls; given back on drop.
struct Admission(Arc<Inner>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether `stored` differs from what [`Hasher::hash`] would write now: another algorithm or
/// version, other costs, or another output length.
fn needs_rehash(stored: &PasswordHash, configured: &argon2::Params) -> bool {
    if stored.algorithm != argon2::ARGON2ID_IDENT || stored.version != Some(u32::from(Version::V0x13)) {
        return true;
    }
    let Ok(params) = argon2::Params::try_from(stored) else {
        return true;
    };
    params.m_cost() != configured.m_cost()
        || params.t_cost() != configured.t_cost()
        || params.p_cost() != configured.p_cost()
        || params.output_len().unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN)
            != configured.output_len().unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN)
}

/// An argon2id PHC string with the configured parameters, a fixed salt and an all-zero output.
/// Verifying any password against it costs one full computation and never succeeds in practice
/// (and [`Hasher::verify`] answers `No` for unknown users regardless).
fn dummy_hash(params: &argon2::Params) -> Result<String, password_hash::Error> {
    let hash = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(u32::from(Version::V0x13)),
        params: ParamsString::try_from(params)?,
        salt: Some(Salt::new(DUMMY_SALT)?),
        hash: Some(Output::new(&[0; OUTPUT_LEN])?),
    };
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::Pin, task::Poll};

    use super::*;

    const FAST: HashParams = HashParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    fn hasher(max_concurrent: usize, max_waiting: usize) -> Hasher {
        Hasher::new(FAST, max_concurrent, max_waiting).unwrap()
    }

    fn pw(text: &str) -> Password {
        Password::new(text.to_owned())
    }

    /// Polls `future` once: `Some(output)` if it finished, `None` if it is pending.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *future).poll(cx) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test]
    async fn hash_then_verify_the_same_password() {
        let hasher = hasher(2, 2);
        let phc = hasher.hash(&pw("violet-Tractor-lagoon-58")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        let verified = hasher.verify(&pw("violet-Tractor-lagoon-58"), Some(&phc)).await.unwrap();
        assert_eq!(verified, Verified::Yes { needs_rehash: false });
        assert_eq!(hasher.in_flight(), 0);
    }

    #[tokio::test]
    async fn each_hash_has_its_own_salt() {
        let hasher = hasher(2, 2);
        let a = hasher.hash(&pw("same password here")).await.unwrap();
        let b = hasher.hash(&pw("same password here")).await.unwrap();
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn wrong_password_is_no() {
        let hasher = hasher(1, 1);
        let phc = hasher.hash(&pw("violet-Tractor-lagoon-58")).await.unwrap();
        let verified = hasher.verify(&pw("violet-Tractor-lagoon-59"), Some(&phc)).await.unwrap();
        assert_eq!(verified, Verified::No);
    }

    #[tokio::test]
    async fn unknown_user_is_no() {
        let hasher = hasher(1, 1);
        assert_eq!(hasher.verify(&pw("anything at all"), None).await.unwrap(), Verified::No);
        assert_eq!(hasher.verify(&pw(""), None).await.unwrap(), Verified::No);
    }

    #[test]
    fn the_dummy_hash_uses_the_configured_parameters() {
        let hasher =
            Hasher::new(HashParams { memory_kib: 256, iterations: 3, parallelism: 2 }, 1, 0).unwrap();
        let dummy = PasswordHash::new(&hasher.inner.dummy).unwrap();
        assert!(!needs_rehash(&dummy, &hasher.inner.argon2));
        assert!(hasher.inner.dummy.starts_with("$argon2id$v=19$m=256,t=3,p=2$"), "{}", hasher.inner.dummy);
    }

    #[tokio::test]
    async fn verification_uses_the_stored_parameters_and_flags_a_rehash() {
        let old = hasher(1, 1);
        let phc = old.hash(&pw("violet-Tractor-lagoon-58")).await.unwrap();
        for changed in [
            HashParams { memory_kib: 128, ..FAST },
            HashParams { iterations: 2, ..FAST },
            HashParams { memory_kib: 64, parallelism: 2, ..FAST },
        ] {
            let new = Hasher::new(changed, 1, 1).unwrap();
            let verified = new.verify(&pw("violet-Tractor-lagoon-58"), Some(&phc)).await.unwrap();
            assert_eq!(verified, Verified::Yes { needs_rehash: true }, "{changed:?}");
            let wrong = new.verify(&pw("violet-Tractor-lagoon-59"), Some(&phc)).await.unwrap();
            assert_eq!(wrong, Verified::No);
        }
    }

    #[tokio::test]
    async fn other_argon2_variants_verify_and_need_a_rehash() {
        let params = FAST.to_argon2().unwrap();
        for algorithm in [Algorithm::Argon2i, Algorithm::Argon2d] {
            let phc = Argon2::new(algorithm, Version::V0x13, params.clone())
                .hash_password(b"violet-Tractor-lagoon-58")
                .unwrap()
                .to_string();
            let verified = hasher(1, 1).verify(&pw("violet-Tractor-lagoon-58"), Some(&phc)).await.unwrap();
            assert_eq!(verified, Verified::Yes { needs_rehash: true }, "{algorithm:?}");
        }
        let v10 = Argon2::new(Algorithm::Argon2id, Version::V0x10, params)
            .hash_password(b"violet-Tractor-lagoon-58")
            .unwrap()
            .to_string();
        let verified = hasher(1, 1).verify(&pw("violet-Tractor-lagoon-58"), Some(&v10)).await.unwrap();
        assert_eq!(verified, Verified::Yes { needs_rehash: true });
    }

    #[tokio::test]
    async fn a_stored_string_that_is_not_argon2_is_an_error() {
        let hasher = hasher(1, 1);
        for bad in ["", "not a hash", "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"] {
            let result = hasher.verify(&pw("violet-Tractor-lagoon-58"), Some(bad)).await;
            assert!(matches!(result, Err(Error::Hash(_))), "{bad:?}: {result:?}");
        }
        assert_eq!(hasher.in_flight(), 0);
    }

    #[tokio::test]
    async fn no_queue_means_the_second_concurrent_call_is_busy() {
        let hasher = hasher(1, 0);
        let password = pw("violet-Tractor-lagoon-58");
        let (a, b) = tokio::join!(hasher.hash(&password), hasher.hash(&password));
        let busy = [&a, &b].iter().filter(|r| matches!(r, Err(Error::Busy))).count();
        assert!(busy >= 1, "{a:?} {b:?}");
        assert!(a.is_ok() || b.is_ok(), "one of them ran: {a:?} {b:?}");
        assert_eq!(hasher.in_flight(), 0);
    }

    #[tokio::test]
    async fn the_waiting_line_is_bounded_and_drains() {
        let hasher = hasher(1, 1);
        let password = pw("violet-Tractor-lagoon-58");
        // Take the only slot so that calls have to wait.
        let slot = Arc::clone(&hasher.inner.running).acquire_owned().await.unwrap();

        let mut first = Box::pin(hasher.hash(&password));
        let mut second = Box::pin(hasher.verify(&password, None));
        assert!(poll_once(&mut first).await.is_none(), "waits for the slot");
        assert!(poll_once(&mut second).await.is_none(), "waits for the slot");
        assert_eq!(hasher.in_flight(), 2);
        assert_eq!(hasher.hash(&password).await, Err(Error::Busy), "the line is full");
        assert_eq!(hasher.verify(&password, None).await, Err(Error::Busy));

        drop(slot);
        let phc = first.await.unwrap();
        assert_eq!(second.await.unwrap(), Verified::No);
        assert_eq!(hasher.in_flight(), 0);
        let verified = hasher.verify(&password, Some(&phc)).await.unwrap();
        assert_eq!(verified, Verified::Yes { needs_rehash: false });
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_while_waiting_frees_its_place() {
        let hasher = hasher(1, 1);
        let password = pw("violet-Tractor-lagoon-58");
        let slot = Arc::clone(&hasher.inner.running).acquire_owned().await.unwrap();
        let mut waiting = Box::pin(hasher.hash(&password));
        assert!(poll_once(&mut waiting).await.is_none());
        assert_eq!(hasher.in_flight(), 1);
        drop(waiting);
        assert_eq!(hasher.in_flight(), 0);
        drop(slot);
        assert!(hasher.hash(&password).await.is_ok());
    }

    #[tokio::test]
    async fn clones_share_the_limits() {
        let hasher = hasher(1, 0);
        let clone = hasher.clone();
        let slot = Arc::clone(&hasher.inner.running).acquire_owned().await.unwrap();
        let password = pw("violet-Tractor-lagoon-58");
        let mut waiting = Box::pin(hasher.hash(&password));
        assert!(poll_once(&mut waiting).await.is_none());
        assert_eq!(clone.hash(&password).await, Err(Error::Busy));
        drop(slot);
        assert!(waiting.await.is_ok());
    }

    #[tokio::test]
    async fn debug_shows_no_secrets() {
        let hasher = hasher(1, 1);
        let password = pw("violet-Tractor-lagoon-58");
        let phc = hasher.hash(&password).await.unwrap();
        let debug = format!("{hasher:?}");
        assert!(debug.contains("memory_kib: 64"), "{debug}");
        assert!(!debug.contains("argon2id") && !debug.contains('$'), "{debug}");
        assert!(!debug.contains(&phc));
        assert!(!debug.contains("violet"));
    }

    #[test]
    fn futures_are_send_for_tonic_handlers() {
        fn assert_send<T: Send>(_: &T) {}
        let hasher = hasher(1, 1);
        let password = pw("x");
        assert_send(&hasher.hash(&password));
        assert_send(&hasher.verify(&password, None));
    }

    #[test]
    fn zero_concurrency_is_raised_to_one() {
        let hasher = hasher(0, 0);
        assert_eq!(hasher.inner.max_concurrent, 1);
        assert_eq!(hasher.inner.running.available_permits(), 1);
    }

    #[test]
    fn params_defaults_follow_owasp() {
        let params = HashParams::default();
        assert_eq!(params, HashParams { memory_kib: 19456, iterations: 2, parallelism: 1 });
        assert_eq!(params.validate(), Ok(()));
    }

    #[test]
    fn params_validation_names_the_setting() {
        let bad = |params: HashParams| params.validate().expect_err("invalid");
        assert!(bad(HashParams { memory_kib: 7, ..FAST }).starts_with("memory_kib"));
        assert!(bad(HashParams { memory_kib: 15, parallelism: 2, ..FAST }).starts_with("memory_kib"));
        assert!(bad(HashParams { iterations: 0, ..FAST }).starts_with("iterations"));
        assert!(bad(HashParams { parallelism: 0, ..FAST }).starts_with("parallelism"));
        assert!(
            bad(HashParams { parallelism: 1 << 24, memory_kib: u32::MAX, ..FAST }).starts_with("parallelism")
        );
        assert_eq!(HashParams { memory_kib: 8, ..FAST }.validate(), Ok(()));
        assert_eq!(
            Hasher::new(HashParams { iterations: 0, ..FAST }, 1, 1).unwrap_err(),
            bad(HashParams { iterations: 0, ..FAST })
        );
    }

    #[test]
    fn params_deserialise_with_defaults_and_refuse_unknown_fields() {
        let params: HashParams = serde_json::from_str(r#"{"memory_kib": 65536}"#).unwrap();
        assert_eq!(params, HashParams { memory_kib: 65536, ..HashParams::default() });
        let unknown = serde_json::from_str::<HashParams>(r#"{"memory": 1}"#).unwrap_err();
        assert!(unknown.to_string().contains("memory"), "{unknown}");
    }
}
