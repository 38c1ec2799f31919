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
//! derivation = "hkdf-sha256-v1"
//! ```
//!
//! `derivation` says how the version keys what it wraps and MACs: every version this code
//! generates uses purpose subkeys (`hkdf-sha256-v1`, `crypto::Derivation`); an entry without
//! the field was written before those existed and keeps its legacy derivation until a root
//! rotation replaces it with a new version (`crypto/subkey.rs`).
//!
//! The file is a list of versions so that rotation can add one, retire another and
//! destroy it later. The vault refuses a file that others can read.
//!
//! Rotation rewrites the file atomically: once to add the new version (then current), once,
//! after everything the old version wrapped has been re-wrapped, to mark the old version
//! retired (`retired_at_micros`: it opens what backups hold, it wraps nothing), and once
//! more when the backup window has passed to drop it. A crash in between leaves every
//! version in the file, and the next start finishes the rotation. Each rewrite refuses a
//! key directory that group or others can write, a symlinked or hard-linked key file and a
//! leftover `root.tmp`. Destroying a version means this file no longer holds it: keep the
//! file out of backups, or a backup of it brings the version back.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypto::{Derivation, Key, Root, Zeroize};
use crate::domain::Timestamp;

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
    /// Absent on entries written before purpose subkeys: those are legacy keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    derivation: Option<String>,
    /// When a rotation retired this version (microseconds since the Unix epoch): it no
    /// longer wraps, and is destroyed once the backup window has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at_micros: Option<u64>,
}

impl Drop for RawVersion {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// One version as the file holds it: the key and, for a version a rotation retired (kept
/// only to open what backups still hold), when it was retired.
pub(super) struct FileVersion {
    pub key: Key<Root>,
    pub retired_at: Option<Timestamp>,
}

/// Reads the file, refusing it if its permissions let anyone but the owner read it.
/// Returns the current version and every version in file order.
pub(super) fn load(path: &Path) -> Result<(u32, Vec<FileVersion>), KeyringError> {
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
        .map(|v| {
            let derivation = Derivation::from_file_name(v.derivation.as_deref())
                .map_err(|_| bad("a version names an unknown key derivation"))?;
            let key = Key::from_secret_hex(v.version, &v.key)
                .map(|k| k.with_derivation(derivation))
                .map_err(|_| bad("a key is not 64 hex digits"))?;
            Ok(FileVersion {
                key,
                retired_at: v.retired_at_micros.map(Timestamp),
            })
        })
        .collect::<Result<Vec<_>, KeyringError>>()?;
    if !versions.iter().any(|v| v.key.version() == raw.current) {
        return Err(bad("the current version is not in the file"));
    }
    if versions
        .iter()
        .any(|v| v.key.version() == raw.current && v.retired_at.is_some())
    {
        return Err(bad("the current version is marked retired"));
    }
    Ok((raw.current, versions))
}

/// Writes the file atomically (a new temporary file, fsync, rename) with mode 0600; see
/// `write_private` for what it refuses.
pub(super) fn save<'k>(
    path: &Path, current: u32, versions: impl Iterator<Item = (&'k Key<Root>, Option<Timestamp>)>,
) -> Result<(), KeyringError> {
    let raw = RawFile {
        format: FORMAT,
        current,
        versions: versions
            .map(|(k, retired_at)| RawVersion {
                version: k.version(),
                key: k.secret_hex().to_string(),
                derivation: k.derivation().file_name().map(str::to_owned),
                retired_at_micros: retired_at.map(|t| t.0),
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
    result
}

/// Writes `bytes` to `path` so that no one but the owner ever sees them: refuses a key
/// directory that group or others can write, a key file that is a symbolic link or has
/// other hard links, and a leftover `<name>.tmp` (the fixed temporary name of older
/// versions, which a planted hard link would have kept readable). The bytes go to a new
/// file with a random name, created exclusively without following symbolic links, mode
/// 0600 set on the open file, synced, then renamed over `path`; the directory is synced last.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyringError> {
    let unsafe_file = |at: &Path, problem: &str| KeyringError::UnsafeRootFile {
        path: at.display().to_string(),
        problem: problem.to_owned(),
    };
    let io = |at: &Path, e: std::io::Error| KeyringError::RootFile {
        path: at.display().to_string(),
        problem: e.to_string(),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_directory(&dir)?;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(unsafe_file(
                path,
                "it is a symbolic link; the key file must be a regular file",
            ))
        }
        Ok(meta) if hard_links(&meta) > 1 => {
            return Err(unsafe_file(
                path,
                "it has other hard links, which would keep old key versions readable; remove them",
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path, e)),
    }
    let stale = path.with_extension("tmp");
    if fs::symlink_metadata(&stale).is_ok() {
        return Err(unsafe_file(
            &stale,
            "a file with this name exists next to the key file (left over or planted); \
             remove it before rotating",
        ));
    }
    let tmp = temp_name(&dir, path)?;
    let written = write_new(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(not_writable(&dir, &e).unwrap_or_else(|| io(path, e)));
    }
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(&dir, e))
}

/// What an operator is told when the key file cannot be rewritten where it is.
const KEEP_THE_KEY_WRITABLE: &str = "rotation and key epochs rewrite the root key file, so keep \
     it in a directory the vault can write that survives restarts (systemd StateDirectory=, a \
     Kubernetes PersistentVolumeClaim; see deploy/)";

/// The error for a write that failed because the key directory cannot be written at all
/// (permissions, a read-only mount); `None` for any other failure.
fn not_writable(dir: &Path, e: &std::io::Error) -> Option<KeyringError> {
    let refused = matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    );
    refused.then(|| KeyringError::RootNotWritable {
        path: dir.display().to_string(),
        problem: format!("the directory cannot be written ({e}); {KEEP_THE_KEY_WRITABLE}"),
    })
}

/// Checks, at start-up, that the key file at `path` can be rewritten and that a rewrite
/// survives a restart: a file can be created, synced and removed in its directory, and the
/// directory is not on a memory file system (tmpfs, ramfs) unless the data directory
/// `data` is one too (a scratch vault). Either failure refuses the start, naming the path.
pub fn check_key_location(path: &Path, data: Option<&Path>) -> Result<(), KeyringError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let probe = temp_name(&dir, path)?;
    if let Err(e) = write_new(&probe, b"").and_then(|()| fs::remove_file(&probe)) {
        let _ = fs::remove_file(&probe);
        return Err(
            not_writable(&dir, &e).unwrap_or_else(|| KeyringError::RootNotWritable {
                path: dir.display().to_string(),
                problem: format!(
                    "a test file cannot be written there ({e}); {KEEP_THE_KEY_WRITABLE}"
                ),
            }),
        );
    }
    if on_memory_fs(&dir) && !data.is_some_and(on_memory_fs) {
        return Err(KeyringError::RootNotWritable {
            path: dir.display().to_string(),
            problem: format!(
                "the directory is on a memory file system (tmpfs): a rotated key would be \
                 lost at the next restart and the store could not be opened again; \
                 {KEEP_THE_KEY_WRITABLE}"
            ),
        });
    }
    Ok(())
}

/// True if `path` is on a file system kept only in memory (tmpfs, ramfs), as the kernel's
/// mount table (`/proc/self/mountinfo`) says: the mount with the longest mount point that
/// contains the path decides. False where there is no such table.
pub fn on_memory_fs(path: &Path) -> bool {
    let (Ok(path), Ok(table)) = (
        fs::canonicalize(path),
        fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return false;
    };
    mount_type(&table, &path).is_some_and(|kind| matches!(kind, "tmpfs" | "ramfs"))
}

/// The file system type of the mount holding `path`, from a mountinfo table: each line is
/// `id parent dev root mount-point options [optional…] - type source super-options`, with
/// spaces in the mount point written as `\040`.
fn mount_type<'t>(table: &'t str, path: &Path) -> Option<&'t str> {
    table
        .lines()
        .filter_map(|line| {
            let (mount, rest) = line.split_once(" - ")?;
            let point = mount.split(' ').nth(4)?.replace("\\040", " ");
            let kind = rest.split(' ').next()?;
            path.starts_with(&point).then_some((point.len(), kind))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

/// A fresh, unpredictable name for the temporary file, in the key file's directory.
fn temp_name(dir: &Path, path: &Path) -> Result<PathBuf, KeyringError> {
    let mut random = [0u8; 12];
    crate::crypto::fill_random(&mut random)
        .map_err(|_| KeyringError::Missing("randomness for a temporary file name"))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root.key".into());
    Ok(dir.join(format!(".{name}.{}.new", hex::encode(random))))
}

/// Creates `tmp` (it must not exist, and is never a followed symbolic link), sets mode 0600
/// on the open file, writes `bytes` and syncs them.
fn write_new(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    let mut file = opts.open(tmp)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(unix)]
fn hard_links(meta: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::nlink(meta)
}

#[cfg(not(unix))]
fn hard_links(_: &fs::Metadata) -> u64 {
    1
}

/// Refuses a key directory that group or others may write: whoever can write it can plant
/// links or swap files next to the key.
fn check_directory(dir: &Path) -> Result<(), KeyringError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir)
            .map_err(|e| KeyringError::RootFile {
                path: dir.display().to_string(),
                problem: e.to_string(),
            })?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(KeyringError::UnsafeRootFile {
                path: dir.display().to_string(),
                problem: format!(
                    "the key directory's mode is {:o}: group and others must not be able to \
                     write it (chmod go-w)",
                    mode & 0o777
                ),
            });
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write_text(path: &Path, text: &str) {
        write_new(path, text.as_bytes()).expect("write");
    }

    #[test]
    fn each_version_keeps_its_derivation_through_load_and_save() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("root.key");
        let key = "11".repeat(32);
        // As the vault wrote it before purpose subkeys: no derivation field.
        write_text(
            &path,
            &format!("format = 1\ncurrent = 1\n\n[[versions]]\nversion = 1\nkey = \"{key}\"\n"),
        );
        let mut keys = super::super::RootKeys::load(&path).expect("legacy file loads");
        assert_eq!(
            keys.file_key(1).map(Key::derivation),
            Some(Derivation::Legacy)
        );
        let added = keys.add_version().expect("rotation adds a version");
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.matches("derivation = \"hkdf-sha256-v1\"").count(), 1);
        let keys = super::super::RootKeys::load(&path).expect("loads");
        assert_eq!(
            keys.file_key(1).map(Key::derivation),
            Some(Derivation::Legacy)
        );
        assert_eq!(
            keys.file_key(added).map(Key::derivation),
            Some(Derivation::HkdfV1)
        );
        assert_eq!(
            super::super::RootKeys::generate()
                .expect("rng")
                .file_key(1)
                .map(Key::derivation),
            Some(Derivation::HkdfV1)
        );
    }

    #[test]
    fn the_longest_mount_point_holding_a_path_gives_its_type() {
        let table = "22 1 8:1 / / rw - ext4 /dev/vda rw\n\
                     30 22 0:5 / /dev/shm rw,nosuid - tmpfs tmpfs rw\n\
                     31 22 0:6 / /srv/key\\040dir rw shared:3 - ramfs none rw\n";
        assert_eq!(
            mount_type(table, Path::new("/dev/shm/k/root.key")),
            Some("tmpfs")
        );
        assert_eq!(
            mount_type(table, Path::new("/dev/shmx/root.key")),
            Some("ext4")
        );
        assert_eq!(
            mount_type(table, Path::new("/srv/key dir/root.key")),
            Some("ramfs")
        );
        assert_eq!(
            mount_type(table, Path::new("/etc/pii-vault/root.key")),
            Some("ext4")
        );
    }

    #[test]
    fn an_unknown_derivation_is_refused() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("root.key");
        let key = "22".repeat(32);
        write_text(
            &path,
            &format!(
                "format = 1\ncurrent = 1\n\n[[versions]]\nversion = 1\nkey = \"{key}\"\n\
                 derivation = \"hkdf-sha256-v9\"\n"
            ),
        );
        let err = super::super::RootKeys::load(&path).expect_err("refused");
        assert!(err.to_string().contains("unknown key derivation"), "{err}");
    }
}
