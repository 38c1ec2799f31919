//! Where the root key versions live, behind one type: a file of keys held in this process
//! (`root_file.rs`) or non-extractable keys inside a PKCS#11 token that does every wrap and
//! unwrap itself (`root_pkcs11.rs`). Either way the wraps have one envelope format
//! (`crypto::wrap_external` builds the token's), so nothing above this file knows which.
//!
//! A version's life: added (current: it wraps new keys), retired by the rotation that
//! replaced it once everything it wrapped was re-wrapped (it still opens what backups hold,
//! it wraps nothing), destroyed when the backup window has passed since its retirement.
//! Retirement is recorded with the key itself (the file, the token object), never only in
//! the store, since a restored store must not bring a version back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::{
    external_check, external_check_matches, mac_eq, unwrap_external, wrap_external, Aad,
    CryptoError, Key, KeyRole, Root, Sealed,
};
use crate::domain::Timestamp;
use crate::storage::Store;

use super::root_file::{self, FileVersion};
use super::root_pkcs11::{Pkcs11Settings, TokenKey, TokenRoot};
use super::KeyringError;

/// Where the root key versions are kept.
#[derive(Clone, Debug)]
pub enum RootSource {
    /// A key file (mode 0600) in a durable, writable directory.
    File(PathBuf),
    /// Keys inside a PKCS#11 token.
    Pkcs11(Pkcs11Settings),
}

impl RootSource {
    /// Loads the versions that exist: reads the file, or opens the token (refusing one
    /// that holds no version).
    pub fn load(&self) -> Result<RootKeys, KeyringError> {
        match self {
            RootSource::File(path) => RootKeys::load(path),
            RootSource::Pkcs11(settings) => RootKeys::open_token(settings, TokenStore::Unknown),
        }
    }

    /// Loads the versions for `store`: a token that holds none gets version 1 when the
    /// store is new, and is refused, naming the version it lacks, when the store was bound
    /// to a root key already (another token, or another label prefix).
    pub fn load_for(&self, store: &dyn Store) -> Result<RootKeys, KeyringError> {
        match self {
            RootSource::File(path) => RootKeys::load(path),
            RootSource::Pkcs11(settings) => {
                let bound = store.meta(super::ROOT_CHECK)?;
                let bound = bound.as_deref().and_then(super::parse_root_check);
                let store = match bound {
                    Some((version, _)) => TokenStore::Bound(version),
                    None => TokenStore::New,
                };
                RootKeys::open_token(settings, store)
            }
        }
    }

    /// Where the keys are, for messages: the file's path or the token.
    pub fn describe(&self) -> String {
        match self {
            RootSource::File(path) => format!("root key file {}", path.display()),
            RootSource::Pkcs11(s) => format!(
                "PKCS#11 module {} ({})",
                s.module.display(),
                s.key_label_prefix
            ),
        }
    }
}

/// What a token's root key versions are opened for, which decides what an empty token means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStore {
    /// No store in view: an empty token is refused.
    Unknown,
    /// A new store: an empty token gets version 1.
    New,
    /// A store bound to this root key version: an empty token is refused, naming it.
    Bound(u32),
}

/// The key material of one version.
enum Material {
    File(Key<Root>),
    Token(TokenKey),
}

/// One root key version.
pub struct RootVersion {
    material: Material,
    /// When a rotation retired it; `None` while it may still become or stay current.
    retired_at: Option<Timestamp>,
}

impl std::fmt::Debug for RootVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootVersion")
            .field("version", &self.version())
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

impl RootVersion {
    pub fn version(&self) -> u32 {
        match &self.material {
            Material::File(k) => k.version(),
            Material::Token(k) => crate::crypto::ExternalKey::version(k),
        }
    }

    /// The key itself for a version held in this process (a file's): an exposure, for
    /// forensic tests that try every key the vault holds; `None` for a token's, which never
    /// leaves it.
    pub fn secret_file_key(&self) -> Option<&Key<Root>> {
        match &self.material {
            Material::File(k) => Some(k),
            Material::Token(_) => None,
        }
    }

    /// Wraps `child` under this version (in the token, for a token version).
    pub fn wrap<C: KeyRole>(&self, child: &Key<C>, aad: &Aad) -> Result<Sealed, CryptoError> {
        match &self.material {
            Material::File(k) => k.wrap(child, aad),
            Material::Token(k) => wrap_external::<Root, C>(k, child, aad),
        }
    }

    /// Unwraps a child key of version `child_version` wrapped under this version.
    pub fn unwrap_key<C: KeyRole>(
        &self, sealed: &Sealed, child_version: u32, aad: &Aad,
    ) -> Result<Key<C>, CryptoError> {
        match &self.material {
            Material::File(k) => k.unwrap_key(sealed, child_version, aad),
            Material::Token(k) => unwrap_external::<Root, C>(k, sealed, child_version, aad),
        }
    }

    /// What a data directory records to know its root key: a MAC of a fixed label under a
    /// file key; an envelope of a fixed plaintext from a token key (which cannot be MACed
    /// here). Public either way.
    pub fn check_value(&self) -> Result<Vec<u8>, KeyringError> {
        match &self.material {
            Material::File(k) => Ok(k.check_value().to_vec()),
            Material::Token(k) => Ok(external_check::<Root>(k)?),
        }
    }

    /// True if `recorded` is a check value of this version.
    pub fn check_matches(&self, recorded: &[u8]) -> bool {
        match &self.material {
            Material::File(k) => mac_eq(&k.check_value(), recorded),
            Material::Token(k) => external_check_matches::<Root>(k, recorded),
        }
    }
}

/// Where this set of versions came from, so it can be written back or read again.
enum Origin {
    /// Generated in memory (tests, a dev key about to be saved): cannot be rotated.
    Generated,
    File(PathBuf),
    Token(Arc<TokenRoot>),
}

/// The versions of the root key.
pub struct RootKeys {
    current: u32,
    versions: Vec<RootVersion>,
    origin: Origin,
}

impl std::fmt::Debug for RootKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootKeys")
            .field("current", &self.current)
            .field("versions", &self.versions.len())
            .finish()
    }
}

impl RootKeys {
    /// A new root key set with one random version, held in memory until `save`d.
    pub fn generate() -> Result<Self, KeyringError> {
        Ok(Self {
            current: 1,
            versions: vec![RootVersion {
                material: Material::File(Key::generate(1)?),
                retired_at: None,
            }],
            origin: Origin::Generated,
        })
    }

    /// Reads a root key file (see `root_file.rs` for what it refuses).
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let (current, versions) = root_file::load(path)?;
        Ok(Self {
            current,
            versions: versions
                .into_iter()
                .map(|FileVersion { key, retired_at }| RootVersion {
                    material: Material::File(key),
                    retired_at,
                })
                .collect(),
            origin: Origin::File(path.to_path_buf()),
        })
    }

    /// Opens the token and lists its root key versions; the current one is the newest not
    /// retired. What a token with none means depends on `store` (`TokenStore`).
    pub fn open_token(settings: &Pkcs11Settings, store: TokenStore) -> Result<Self, KeyringError> {
        let token = Arc::new(TokenRoot::open(settings)?);
        if token.versions()?.is_empty() {
            match store {
                TokenStore::New => {
                    token.generate(1)?;
                    tracing::info!(
                        token = %token.describe(),
                        "created root key version 1 in the token for a new store"
                    );
                }
                TokenStore::Bound(bound) => {
                    return Err(KeyringError::Token(format!(
                        "{} holds no root key version labelled {}-v*, but this data \
                         directory is bound to root key version {bound}: check keys.root \
                         (token_label or slot, key_label_prefix)",
                        token.describe(),
                        settings.key_label_prefix
                    )))
                }
                TokenStore::Unknown => {
                    return Err(KeyringError::Token(format!(
                        "{} holds no root key version labelled {}-v*",
                        token.describe(),
                        settings.key_label_prefix
                    )))
                }
            }
        }
        Self::from_token(token)
    }

    fn from_token(token: Arc<TokenRoot>) -> Result<Self, KeyringError> {
        let listed = token.versions()?;
        let mut versions = Vec::with_capacity(listed.len());
        for info in &listed {
            let key = token.key(info.version)?.ok_or_else(|| {
                KeyringError::Token(format!(
                    "{}: root key version {} was listed but cannot be opened",
                    token.describe(),
                    info.version
                ))
            })?;
            versions.push(RootVersion {
                material: Material::Token(key),
                retired_at: info.retired_at,
            });
        }
        let current = versions
            .iter()
            .filter(|v| v.retired_at.is_none())
            .map(RootVersion::version)
            .max()
            .ok_or_else(|| {
                KeyringError::Token(format!(
                    "{}: every root key version is retired; none can wrap",
                    token.describe()
                ))
            })?;
        Ok(Self {
            current,
            versions,
            origin: Origin::Token(token),
        })
    }

    /// The same source read again (another node may have changed it).
    pub(super) fn reload(&self) -> Result<Self, KeyringError> {
        match &self.origin {
            Origin::Generated => Err(KeyringError::NoRootFile),
            Origin::File(path) => Self::load(path),
            Origin::Token(token) => Self::from_token(token.clone()),
        }
    }

    /// Writes generated or file keys to `path` (mode 0600, atomically).
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        let keys = self
            .versions
            .iter()
            .map(|v| match &v.material {
                Material::File(k) => Ok((k, v.retired_at)),
                Material::Token(_) => Err(KeyringError::Token(
                    "keys held in a token cannot be written to a file".into(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        root_file::save(path, self.current, keys.into_iter())
    }

    /// The version that wraps new keys.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// Every version held (retired ones included), in order.
    pub fn version_numbers(&self) -> Vec<u32> {
        self.versions.iter().map(RootVersion::version).collect()
    }

    /// The retired versions and when each was retired.
    pub fn retired(&self) -> Vec<(u32, Timestamp)> {
        self.versions
            .iter()
            .filter_map(|v| v.retired_at.map(|at| (v.version(), at)))
            .collect()
    }

    /// The key that wraps new keys.
    pub fn current(&self) -> &RootVersion {
        // Every constructor guarantees the current version is present.
        self.version(self.current)
            .unwrap_or_else(|| unreachable!("current root key version is always present"))
    }

    /// A specific version, if still held (retired or not).
    pub fn version(&self, version: u32) -> Option<&RootVersion> {
        self.versions.iter().find(|k| k.version() == version)
    }

    /// Test only: a file version's key, to check what a file holds.
    #[cfg(test)]
    pub(super) fn file_key(&self, version: u32) -> Option<&Key<Root>> {
        self.version(version)?.secret_file_key()
    }

    /// True while a version other than the current one is not retired: a rotation (or an
    /// automatic one at the usage limit) still has to re-wrap and retire it.
    pub fn unconverged(&self) -> bool {
        self.versions
            .iter()
            .any(|v| v.version() != self.current && v.retired_at.is_none())
    }

    /// Adds a fresh version and makes it current. On a failed write nothing changes.
    pub(super) fn add_version(&mut self) -> Result<u32, KeyringError> {
        let next = self
            .versions
            .iter()
            .map(RootVersion::version)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or(KeyringError::Missing("a free root key version"))?;
        let material = match &self.origin {
            Origin::Generated => return Err(KeyringError::NoRootFile),
            Origin::File(_) => Material::File(Key::generate(next)?),
            Origin::Token(token) => Material::Token(token.generate(next)?),
        };
        let previous = self.current;
        self.versions.push(RootVersion {
            material,
            retired_at: None,
        });
        self.current = next;
        if let Origin::File(path) = &self.origin {
            if let Err(e) = self.save(path) {
                self.versions.retain(|k| k.version() != next);
                self.current = previous;
                return Err(e);
            }
        }
        Ok(next)
    }

    /// After everything the other versions wrapped was re-wrapped under the current one:
    /// marks every other version not yet retired as retired `now`, then destroys what the
    /// backup window lets go (`destroy_expired`). With a zero window the old versions are
    /// destroyed at once. Returns (retired, destroyed).
    pub(super) fn retire_others(
        &mut self, now: Timestamp, window: Duration,
    ) -> Result<(Vec<u32>, Vec<u32>), KeyringError> {
        let current = self.current;
        let fresh: Vec<u32> = self
            .versions
            .iter()
            .filter(|v| v.version() != current && v.retired_at.is_none())
            .map(RootVersion::version)
            .collect();
        if !fresh.is_empty() {
            let before: Vec<Option<Timestamp>> =
                self.versions.iter().map(|v| v.retired_at).collect();
            for v in self.versions.iter_mut() {
                if fresh.contains(&v.version()) {
                    v.retired_at = Some(now);
                }
            }
            let recorded = match &self.origin {
                Origin::Generated => Err(KeyringError::NoRootFile),
                Origin::File(path) => self.save(path),
                Origin::Token(token) => fresh.iter().try_for_each(|v| token.retire(*v, now)),
            };
            if let Err(e) = recorded {
                for (v, was) in self.versions.iter_mut().zip(before) {
                    v.retired_at = was;
                }
                return Err(e);
            }
        }
        let destroyed = self.destroy_expired(now, window)?;
        Ok((fresh, destroyed))
    }

    /// Destroys every retired version whose backup window has passed at `now`; the removed
    /// keys are zeroized when dropped (a token destroys the object). Returns their numbers.
    pub(super) fn destroy_expired(
        &mut self, now: Timestamp, window: Duration,
    ) -> Result<Vec<u32>, KeyringError> {
        let expired: Vec<u32> = self
            .versions
            .iter()
            .filter(|v| {
                v.retired_at
                    .is_some_and(|at| destroyed_after(at, window) <= now)
            })
            .map(RootVersion::version)
            .collect();
        if expired.is_empty() {
            return Ok(expired);
        }
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.versions)
            .into_iter()
            .partition(|v| expired.contains(&v.version()));
        self.versions = keep;
        let destroyed = match &self.origin {
            Origin::Generated => Err(KeyringError::NoRootFile),
            Origin::File(path) => self.save(path),
            Origin::Token(token) => expired.iter().try_for_each(|v| token.destroy(*v)),
        };
        if let Err(e) = destroyed {
            // A token may have destroyed some objects before failing: read it again.
            if let Origin::Token(token) = &self.origin {
                if let Ok(fresh) = Self::from_token(token.clone()) {
                    *self = fresh;
                    return Err(e);
                }
            }
            // Nothing was destroyed: keep the versions so what they wrap still opens.
            self.versions.extend(gone);
            self.versions.sort_by_key(RootVersion::version);
            return Err(e);
        }
        drop(gone);
        Ok(expired)
    }
}

/// When a version retired at `retired_at` is destroyed under `window`.
pub(super) fn destroyed_after(retired_at: Timestamp, window: Duration) -> Timestamp {
    let window = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
    Timestamp(retired_at.0.saturating_add(window))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(30 * 86_400);

    /// A key file whose version 1 a rotation replaced with version 2, not yet retired.
    fn rotated() -> (tempfile::TempDir, PathBuf, RootKeys) {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("root.key");
        RootKeys::generate()
            .expect("rng")
            .save(&path)
            .expect("save");
        let mut keys = RootKeys::load(&path).expect("load");
        assert_eq!(keys.add_version().expect("add"), 2);
        assert!(keys.unconverged());
        (dir, path, keys)
    }

    #[test]
    fn a_retirement_or_destruction_that_cannot_be_written_changes_nothing_and_a_retry_completes() {
        let (_dir, path, mut keys) = rotated();
        // A file planted where the rewrite would go makes every rewrite refuse.
        let plant = path.with_extension("tmp");
        std::fs::write(&plant, b"planted").expect("plant");
        let now = Timestamp(1_000_000);
        assert!(keys.retire_others(now, WINDOW).is_err());
        assert!(keys.unconverged(), "nothing retired in memory");
        assert!(
            RootKeys::load(&path).expect("load").unconverged(),
            "nor in the file"
        );

        std::fs::remove_file(&plant).expect("unplant");
        let (retired, destroyed) = keys.retire_others(now, WINDOW).expect("retire");
        assert_eq!((retired, destroyed), (vec![1], vec![]));
        let file = RootKeys::load(&path).expect("load");
        assert_eq!(file.retired(), vec![(1, now)]);
        assert!(!file.unconverged());
        assert_eq!(file.current_version(), 2);
        // Retiring again keeps the first time.
        let later = Timestamp(now.0 + 5);
        assert_eq!(
            keys.retire_others(later, WINDOW).expect("again").0,
            Vec::<u32>::new()
        );
        assert_eq!(keys.retired(), vec![(1, now)]);

        // Within the window nothing goes; after it, version 1 does, once it can be written.
        let due = destroyed_after(now, WINDOW);
        assert!(keys
            .destroy_expired(Timestamp(due.0 - 1), WINDOW)
            .expect("early")
            .is_empty());
        std::fs::write(&plant, b"planted").expect("plant");
        assert!(keys.destroy_expired(due, WINDOW).is_err());
        assert_eq!(
            keys.version_numbers(),
            [1, 2],
            "kept while the file keeps it"
        );
        assert_eq!(
            RootKeys::load(&path).expect("load").version_numbers(),
            [1, 2]
        );
        std::fs::remove_file(&plant).expect("unplant");
        assert_eq!(keys.destroy_expired(due, WINDOW).expect("destroy"), [1]);
        assert_eq!(RootKeys::load(&path).expect("load").version_numbers(), [2]);
    }

    #[test]
    fn a_zero_window_destroys_old_versions_at_the_rotation() {
        let (_dir, path, mut keys) = rotated();
        let (retired, destroyed) = keys
            .retire_others(Timestamp(7), Duration::ZERO)
            .expect("retire");
        assert_eq!((retired, destroyed), (vec![1], vec![1]));
        assert_eq!(RootKeys::load(&path).expect("load").version_numbers(), [2]);
    }

    #[test]
    fn a_file_marking_its_current_version_retired_is_refused() {
        let (_dir, path, mut keys) = rotated();
        keys.retire_others(Timestamp(7), WINDOW).expect("retire");
        let text = std::fs::read_to_string(&path).expect("read");
        let edited = text.replacen("current = 2", "current = 1", 1);
        assert_ne!(text, edited);
        std::fs::remove_file(&path).expect("rm");
        let mut f = std::fs::OpenOptions::new();
        std::os::unix::fs::OpenOptionsExt::mode(f.write(true).create_new(true), 0o600);
        std::io::Write::write_all(&mut f.open(&path).expect("create"), edited.as_bytes())
            .expect("write");
        let err = RootKeys::load(&path).expect_err("refused");
        assert!(err.to_string().contains("marked retired"), "{err}");
    }
}
