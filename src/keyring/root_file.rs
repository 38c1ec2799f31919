//! The root key file: the one secret that lives outside the store.
//!
//! ```toml
//! # pii-vault root key file: keep it secret (mode 0600) and out of data backups.
//! format = 1
//! current = 1
//!
//! [[versions]]
//! version = 1
//! key = "<64 hex digits>"
//! ```
//!
//! The file is a list of versions so that rotation can add one and destroy another; a
//! future `source = "kms"` entry can name an external key instead of holding bytes.
//! The vault refuses a file that others can read.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crypto::{Key, Root, Zeroize};

use super::KeyringError;

const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    format: u32,
    current: u32,
    versions: Vec<RawVersion>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    version: u32,
    key: String,
}

impl Drop for RawVersion {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// The versions of the root key, as read from its file.
pub struct RootKeys {
    current: u32,
    versions: Vec<Key<Root>>,
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
    /// A new root key set with one random version.
    pub fn generate() -> Result<Self, KeyringError> {
        Ok(Self {
            current: 1,
            versions: vec![Key::generate(1)?],
        })
    }

    /// The key that wraps new tenant KEKs.
    pub fn current(&self) -> &Key<Root> {
        // `load` and `generate` guarantee the current version is present.
        self.version(self.current)
            .unwrap_or_else(|| unreachable!("current root key version is always present"))
    }

    /// A specific version, if the file still holds it.
    pub fn version(&self, version: u32) -> Option<&Key<Root>> {
        self.versions.iter().find(|k| k.version() == version)
    }

    /// Reads the file, refusing it if its permissions let anyone but the owner read it.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        check_permissions(path)?;
        let mut text = fs::read_to_string(path).map_err(|e| KeyringError::RootFile {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        let parsed: Result<RawFile, _> = toml::from_str(&text);
        text.zeroize();
        let bad = |problem: &str| KeyringError::RootFile {
            path: path.display().to_string(),
            problem: problem.to_owned(),
        };
        // The parse error is not shown: it could quote the key line.
        let raw = parsed.map_err(|_| bad("it is not a valid root key file"))?;
        if raw.format != FORMAT {
            return Err(bad("unsupported format version"));
        }
        let versions = raw
            .versions
            .iter()
            .map(|v| Key::from_secret_hex(v.version, &v.key))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("a key is not 64 hex digits"))?;
        let keys = Self {
            current: raw.current,
            versions,
        };
        if keys.version(keys.current).is_none() {
            return Err(bad("the current version is not in the file"));
        }
        Ok(keys)
    }

    /// Writes the file atomically (temporary file, fsync, rename) with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        let raw = RawFile {
            format: FORMAT,
            current: self.current,
            versions: self
                .versions
                .iter()
                .map(|k| RawVersion {
                    version: k.version(),
                    key: k.secret_hex().to_string(),
                })
                .collect(),
        };
        let mut body = toml::to_string(&raw).map_err(|e| KeyringError::RootFile {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        drop(raw);
        body.insert_str(
            0,
            "# pii-vault root key file: keep it secret (mode 0600) and out of data backups.\n",
        );
        let result = write_private(path, body.as_bytes());
        body.zeroize();
        result.map_err(|e| KeyringError::RootFile {
            path: path.display().to_string(),
            problem: e.to_string(),
        })
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn check_permissions(path: &Path) -> Result<(), KeyringError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|e| KeyringError::RootFile {
                path: path.display().to_string(),
                problem: e.to_string(),
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyringError::RootFile {
                path: path.display().to_string(),
                problem: format!(
                    "its mode is {:o}: group and others must have no access (chmod 600)",
                    mode & 0o777
                ),
            });
        }
    }
    Ok(())
}
