//! The pure parts of the PKCS#11 root key source: how key objects are named (and retired
//! ones renamed), parsed back strictly so that another vault's objects on a shared token
//! never read as ours, and how the PIN is read from its file or environment variable.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;

use crate::crypto::Zeroizing;
use crate::domain::Timestamp;
use crate::keyring::KeyringError;

use super::{token_err, PinSource, TokenVersionInfo};

/// What the label of a retired version adds after `-v<N>`.
const RETIRED: &str = "-retired-";
/// A PIN file longer than this is not a PIN file.
const MAX_PIN_LEN: u64 = 4096;

/// The label of a live version: `<prefix>-v<N>`.
pub(super) fn version_label(prefix: &str, version: u32) -> String {
    format!("{prefix}-v{version}")
}

/// The label of a retired version: `<prefix>-v<N>-retired-<unix micros>`.
pub(super) fn retired_label(prefix: &str, version: u32, at: Timestamp) -> String {
    format!("{prefix}-v{version}{RETIRED}{}", at.0)
}

/// Parses either label form, numbers in canonical decimal (no sign, no leading zero), so
/// each version has exactly one label and a longer prefix is never taken for this one.
pub(super) fn parse_label(prefix: &str, label: &[u8]) -> Option<TokenVersionInfo> {
    let rest = std::str::from_utf8(label)
        .ok()?
        .strip_prefix(prefix)?
        .strip_prefix("-v")?;
    let (version, retired_at) = match rest.split_once(RETIRED) {
        Some((version, at)) => (version, Some(Timestamp(canonical_number(at)?))),
        None => (rest, None),
    };
    let version = u32::try_from(canonical_number(version)?).ok()?;
    Some(TokenVersionInfo {
        version,
        retired_at,
    })
}

fn canonical_number(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// Reads the PIN, without a trailing newline, from its file (which only its owner may
/// read, like the root key file) or environment variable. Messages name the source, never
/// the PIN.
pub(super) fn read_pin(source: &PinSource) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
    let (mut pin, what) = match source {
        PinSource::File(path) => {
            let what = format!("PIN file {}", path.display());
            let fail = |problem: String| token_err(format!("{what}: {problem}"));
            let file = File::open(path).map_err(|e| {
                fail(match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file".to_owned(),
                    _ => e.to_string(),
                })
            })?;
            // The mode of the file opened, not of whatever the path names a moment later.
            let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
            if !meta.is_file() {
                return Err(fail("not a regular file".to_owned()));
            }
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(fail(format!(
                    "its mode is {:o}: group and others must have no access (chmod 600)",
                    mode & 0o777
                )));
            }
            // Room for all of it up front: no reallocation leaves a copy behind.
            let mut pin = Zeroizing::new(Vec::with_capacity(MAX_PIN_LEN as usize + 1));
            file.take(MAX_PIN_LEN + 1)
                .read_to_end(&mut pin)
                .map_err(|e| fail(e.to_string()))?;
            if pin.len() as u64 > MAX_PIN_LEN {
                return Err(fail(format!("longer than {MAX_PIN_LEN} bytes")));
            }
            (pin, what)
        }
        PinSource::Env(name) => {
            let what = format!("PIN environment variable {name}");
            match std::env::var_os(name) {
                Some(value) => (Zeroizing::new(value.into_vec()), what),
                None => return Err(token_err(format!("{what} is not set"))),
            }
        }
    };
    while matches!(pin.last(), Some(b'\n' | b'\r')) {
        pin.pop();
    }
    if pin.is_empty() {
        return Err(token_err(format!("{what} is empty")));
    }
    Ok(pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(label: &str) -> Option<(u32, Option<u64>)> {
        parse_label("pii-vault-root", label.as_bytes())
            .map(|info| (info.version, info.retired_at.map(|at| at.0)))
    }

    #[test]
    fn labels_round_trip() {
        let label = version_label("pii-vault-root", 3);
        assert_eq!(label, "pii-vault-root-v3");
        assert_eq!(parsed(&label), Some((3, None)));
        let label = retired_label("pii-vault-root", 3, Timestamp(1_700_000_000_123_456));
        assert_eq!(label, "pii-vault-root-v3-retired-1700000000123456");
        assert_eq!(parsed(&label), Some((3, Some(1_700_000_000_123_456))));
        assert_eq!(parsed("pii-vault-root-v0"), Some((0, None)));
        assert_eq!(parsed("pii-vault-root-v4294967295"), Some((u32::MAX, None)));
    }

    #[test]
    fn foreign_and_malformed_labels_are_not_versions() {
        for label in [
            "other-v1",
            "pii-vault-root",
            "pii-vault-root-v",
            "pii-vault-root-1",
            "pii-vault-root-v01",
            "pii-vault-root-v+1",
            "pii-vault-root-v-1",
            "pii-vault-root-v1 ",
            "pii-vault-root-v4294967296",
            "pii-vault-root-v1-retired-",
            "pii-vault-root-v1-retired-x",
            "pii-vault-root-v1-retired-01",
            "pii-vault-root-v1-retired-5-retired-6",
            // another vault's, whose prefix extends this one
            "pii-vault-root-v1-v2",
            "pii-vault-root-prod-v1",
        ] {
            assert_eq!(parsed(label), None, "{label}");
        }
        assert_eq!(parse_label("p", &[b'p', b'-', b'v', 0xff]), None);
    }

    #[test]
    fn a_pin_loses_its_trailing_newline_and_an_empty_one_is_refused() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("pin");
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write("1234 5678\r\n", 0o600);
        let pin = read_pin(&PinSource::File(path.clone())).expect("read");
        assert_eq!(pin.as_slice(), b"1234 5678");
        write("1234", 0o640);
        let err = read_pin(&PinSource::File(path.clone())).expect_err("group-readable");
        assert!(err.to_string().contains("its mode is 640"), "{err}");
        write("\n", 0o400);
        let err = read_pin(&PinSource::File(path.clone())).expect_err("empty");
        assert!(err.to_string().ends_with("is empty"), "{err}");
        let err = read_pin(&PinSource::File(dir.path().to_path_buf())).expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
