//! `me.info` and `priv.key` (PROTOCOL.md §7), readable by the original
//! clients and reading theirs.
//!
//! Written: `me.info` = name, 32 lower-case hex digits, base64 of the
//! PKCS#8 DER private key on one line; `priv.key` = the same base64 line.
//! Read: the id in either case; the key as base64 on one line or wrapped
//! over every line after line 2 (Crypto++ wraps at 72 columns), PKCS#8 or
//! PKCS#1 inside; `priv.key` as base64 or raw DER, used when `me.info`
//! carries no key lines. Both files hold the private key, so they are
//! created with mode 0600 through a temporary file and a rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64ct::{Base64, Base64Unpadded, Encoding};
use sealdrop_protocol::crypto::RsaPrivateKey;
use sealdrop_protocol::{ClientId, Identity};
use zeroize::Zeroizing;

/// The client's identity file (§7).
pub const ME_INFO: &str = "me.info";
/// The client's private key file (§7).
pub const PRIV_KEY: &str = "priv.key";

/// Largest me.info / priv.key / --rsa-key file read. An RSA-1024 PKCS#8
/// key is 634 bytes of DER, under 1 KiB of base64; anything far beyond is
/// not a key file.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// Why the saved state cannot be used.
#[derive(Debug)]
pub enum LoadError {
    /// The file exists but cannot be read.
    Io(PathBuf, io::Error),
    /// The file's content is not what §7 describes.
    Malformed(PathBuf, String),
}

/// Reads `me.info` from `dir`; `Ok(None)` if there is none (a new client).
pub fn load(dir: &Path) -> Result<Option<Identity>, LoadError> {
    let path = dir.join(ME_INFO);
    let text = match read_limited(&path) {
        Ok(bytes) => Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::Io(path, e)),
    };
    let priv_key = dir.join(PRIV_KEY);
    let fallback = || match read_limited(&priv_key) {
        Ok(bytes) => {
            decode_key_file(&bytes).map_err(|why| LoadError::Malformed(priv_key.clone(), why))
        }
        Err(e) => Err(LoadError::Io(priv_key.clone(), e)),
    };
    parse_me_info(&text, fallback, &path).map(Some)
}

/// Parses the text of `me.info`; `priv_key` supplies the key when the
/// file has no key lines.
pub fn parse_me_info(
    text: &str,
    priv_key: impl FnOnce() -> Result<RsaPrivateKey, LoadError>,
    path: &Path,
) -> Result<Identity, LoadError> {
    let bad = |why: &str| LoadError::Malformed(path.to_path_buf(), why.to_string());
    let mut lines = text.lines();
    let name = lines.next().map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Err(bad("line 1 (client name) is missing"));
    }
    let hex = lines.next().map(str::trim).unwrap_or_default();
    let client_id =
        ClientId::from_hex(hex).ok_or_else(|| bad("line 2 is not a client id of 32 hex digits"))?;
    let b64: Zeroizing<String> = Zeroizing::new(
        lines
            .flat_map(str::chars)
            .filter(|c| !c.is_whitespace())
            .collect(),
    );
    let key = if b64.is_empty() {
        priv_key()?
    } else {
        let der = decode_base64(&b64).ok_or_else(|| bad("the private key is not valid base64"))?;
        RsaPrivateKey::from_der(&der).map_err(|e| bad(&format!("the private key: {e}")))?
    };
    Ok(Identity {
        name: name.to_string(),
        client_id,
        key,
    })
}

/// Reads a key file: raw DER (PKCS#8 or PKCS#1) or its base64.
pub fn read_key_file(path: &Path) -> Result<RsaPrivateKey, LoadError> {
    let bytes = read_limited(path).map_err(|e| LoadError::Io(path.to_path_buf(), e))?;
    decode_key_file(&bytes).map_err(|why| LoadError::Malformed(path.to_path_buf(), why))
}

/// Decodes key file content: DER if it parses as a key, else base64 text.
pub fn decode_key_file(bytes: &[u8]) -> Result<RsaPrivateKey, String> {
    if let Ok(key) = RsaPrivateKey::from_der(bytes) {
        return Ok(key);
    }
    let text: Zeroizing<String> = Zeroizing::new(
        String::from_utf8_lossy(bytes)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
    );
    let der = decode_base64(&text).ok_or("neither DER nor base64 of a private key")?;
    RsaPrivateKey::from_der(&der).map_err(|e| e.to_string())
}

fn decode_base64(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    Base64::decode_vec(text)
        .or_else(|_| Base64Unpadded::decode_vec(text))
        .ok()
        .map(Zeroizing::new)
}

fn read_limited(path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut bytes = Zeroizing::new(Vec::new());
    File::open(path)?
        .take(MAX_KEY_FILE_LEN)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The text of `me.info` and of `priv.key` for `identity` (§7).
pub fn render(identity: &Identity) -> (Zeroizing<String>, Zeroizing<String>) {
    let der = Zeroizing::new(identity.key.to_pkcs8_der());
    let b64 = Zeroizing::new(Base64::encode_string(&der));
    let me = format!(
        "{}\n{}\n{}\n",
        identity.name,
        identity.client_id.to_hex(),
        *b64
    );
    (Zeroizing::new(me), Zeroizing::new(format!("{}\n", *b64)))
}

/// Makes sure `dir` can hold the state files before anything goes on the
/// wire: creates it (and its parents; owner-only on Unix, as it will hold
/// a private key) if missing, and proves it writable by creating and
/// removing a probe file. A run that registered and then could not save
/// its key would leave its name held on the server by a key nobody has.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    let probe = dir.join(format!(".sealdrop-probe-{}", std::process::id()));
    let written = create_private(&probe).and_then(|mut f| f.write_all(b"probe"));
    // Best effort: the probe may not exist.
    let _ = fs::remove_file(&probe);
    written
}

/// Writes `priv.key`, then `me.info` (whose presence means "reconnect",
/// so it goes last), each atomically with mode 0600. Creates `dir`.
pub fn save(dir: &Path, identity: &Identity) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let (me, key) = render(identity);
    write_private(&dir.join(PRIV_KEY), key.as_bytes())?;
    write_private(&dir.join(ME_INFO), me.as_bytes())
}

/// Writes `bytes` to a temporary file beside `path` created with mode
/// 0600, syncs it, and renames it over `path`.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = fs::remove_file(path); // a stale temporary from a crashed run
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vectors/");

    fn vector(name: &str) -> Vec<u8> {
        fs::read(format!("{VECTORS}{name}")).unwrap()
    }

    fn no_priv_key() -> Result<RsaPrivateKey, LoadError> {
        panic!("priv.key must not be needed")
    }

    fn pkcs8() -> Vec<u8> {
        vector("rsa1024_private_pkcs8.der")
    }

    #[test]
    fn prepare_dir_creates_and_checks_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        prepare_dir(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "the probe is gone");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
            // A folder nobody may write to (root ignores modes: skip then).
            let ro = tmp.path().join("ro");
            fs::create_dir(&ro).unwrap();
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o500)).unwrap();
            let writable = File::create(ro.join("x")).is_ok();
            if !writable {
                assert!(prepare_dir(&ro).is_err());
                assert!(prepare_dir(&ro.join("sub")).is_err());
            }
        }
        // A file where the folder should be.
        let file = tmp.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(prepare_dir(&file).is_err());
    }

    #[test]
    fn reads_wrapped_pkcs1_with_uppercase_id() {
        let b64 = Base64::encode_string(&vector("rsa1024_private_pkcs1.der"));
        let wrapped: Vec<&str> = b64
            .as_bytes()
            .chunks(72)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let text = format!(
            "alice\r\nE5144C734123490E92FE9C54052B3A46\r\n{}\r\n",
            wrapped.join("\r\n")
        );
        let id = parse_me_info(&text, no_priv_key, Path::new("me.info")).unwrap();
        assert_eq!(id.name, "alice");
        assert_eq!(id.client_id.0.to_vec(), vector("client_id.bin"));
        assert_eq!(id.key.to_pkcs8_der(), pkcs8());
    }

    #[test]
    fn writes_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity {
            name: "alice".into(),
            client_id: ClientId(vector("client_id.bin").try_into().unwrap()),
            key: RsaPrivateKey::from_der(&pkcs8()).unwrap(),
        };
        save(dir.path(), &identity).unwrap();
        let me = fs::read_to_string(dir.path().join(ME_INFO)).unwrap();
        let lines: Vec<&str> = me.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[..2], ["alice", "e5144c734123490e92fe9c54052b3a46"]);
        assert_eq!(Base64::decode_vec(lines[2]).unwrap(), pkcs8());
        let key = fs::read_to_string(dir.path().join(PRIV_KEY)).unwrap();
        assert_eq!(key, format!("{}\n", lines[2]));
        #[cfg(unix)]
        for f in [ME_INFO, PRIV_KEY] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.client_id, identity.client_id);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary left"
        );
    }

    #[test]
    fn key_from_priv_key_when_me_info_has_none() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(ME_INFO),
            "bob\ne5144c734123490e92fe9c54052b3a46\n",
        )
        .unwrap();
        fs::write(
            dir.path().join(PRIV_KEY),
            vector("rsa1024_private_pkcs1.der"),
        )
        .unwrap();
        let id = load(dir.path()).unwrap().unwrap();
        assert_eq!(id.key.to_pkcs8_der(), pkcs8());
    }

    #[test]
    fn key_files_in_every_form() {
        for bytes in [
            pkcs8(),
            vector("rsa1024_private_pkcs1.der"),
            Base64::encode_string(&pkcs8()).into_bytes(),
            format!("{}\n", Base64Unpadded::encode_string(&pkcs8())).into_bytes(),
        ] {
            assert_eq!(decode_key_file(&bytes).unwrap().to_pkcs8_der(), pkcs8());
        }
        assert!(decode_key_file(b"not a key").is_err());
    }

    #[test]
    fn malformed_me_info_is_refused() {
        let p = Path::new("me.info");
        for text in [
            "",
            "alice\n",
            "alice\nxyz\nAAAA\n",
            "alice\ne5144c734123490e92fe9c54052b3a46\n!!!\n",
        ] {
            assert!(
                matches!(
                    parse_me_info(text, no_key, p),
                    Err(LoadError::Malformed(..))
                ),
                "{text:?}"
            );
        }
    }

    fn no_key() -> Result<RsaPrivateKey, LoadError> {
        Err(LoadError::Malformed(
            PathBuf::from(PRIV_KEY),
            "absent".into(),
        ))
    }

    #[test]
    fn missing_me_info_means_new_client() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
    }
}
