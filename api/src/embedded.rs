//! The embedded mode's generated secrets: an encryption key and an admin token kept in a local
//! file, so that `cargo run --release` works on a fresh machine with nothing configured.
//!
//! This is for trying hookline out. In production, set `HOOKLINE_ENCRYPTION_KEY` and
//! `HOOKLINE_ADMIN_TOKEN` and keep them in a secret store.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The file's name inside the data directory.
pub const SECRETS_FILE: &str = "secrets.json";

/// Secrets generated for the embedded mode.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EmbeddedSecrets {
    /// Base64 of 32 random bytes.
    encryption_key: String,
    /// The admin bearer token.
    admin_token: String,
}

/// Loads the data directory's secrets, generating the file on first use. Returns the encryption
/// key, the admin token and the file's path.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<(SecretString, SecretString, PathBuf)> {
    let path = data_dir.join(SECRETS_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("could not read {}", path.display()))?;
        let secrets: EmbeddedSecrets = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a hookline secrets file", path.display()))?;
        return Ok((
            secrets.encryption_key.into(),
            secrets.admin_token.into(),
            path,
        ));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("could not create {}", data_dir.display()))?;
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    let mut token = [0u8; 24];
    rand::fill(&mut token);
    let secrets = EmbeddedSecrets {
        encryption_key: base64::engine::general_purpose::STANDARD.encode(key),
        admin_token: format!(
            "adm_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
        ),
    };
    let text = serde_json::to_string_pretty(&secrets).context("serialising secrets")?;
    write_private(&path, &text).with_context(|| format!("could not write {}", path.display()))?;
    Ok((
        secrets.encryption_key.into(),
        secrets.admin_token.into(),
        path,
    ))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}
