//! HTTPS for the listener: the rustls server configuration (the `ring` provider, TLS 1.2 and
//! 1.3 only, ALPN `h2` then `http/1.1`) and a certificate that follows its files on disk.
//!
//! [`Tls::load`] reads the certificate chain and key once, failing start-up on anything wrong
//! with them. [`Tls::watch`] then looks at both files every [`RELOAD_POLL`] (modification time,
//! size and inode, so a rename or a Kubernetes secret's symlink swap counts); when either
//! changed it loads the pair again and, if the key matches the certificate, swaps it in: the
//! next handshake presents it, while connections already open keep the session they made. A
//! pair that does not load (half written, key and certificate from different renewals) leaves
//! the previous certificate in place and is logged once; it is tried again when a file
//! changes again.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are looked at.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate ({reason})")]
    NoCertificate { path: PathBuf, reason: String },
    #[error("{path} holds no PEM private key ({reason})")]
    NoKey { path: PathBuf, reason: String },
    #[error("cannot use the key in {key} with the certificate in {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("the TLS configuration was refused: {0}")]
    Config(rustls::Error),
}

/// The listener's TLS: what accepts handshakes, and the files it follows.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
    files: CertFiles,
    current: Arc<CurrentCert>,
    provider: Arc<CryptoProvider>,
}

impl Tls {
    /// Loads the pair and builds the server configuration.
    pub fn load(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        handshake_timeout: Duration,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = CertFiles {
            cert: cert.into(),
            key: key.into(),
        };
        let stamp = files.stamp();
        let certified = files.load(&provider)?;
        let current = Arc::new(CurrentCert {
            key: ArcSwap::from_pointee(certified),
            loaded: std::sync::Mutex::new(stamp),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout,
            files,
            current,
            provider,
        })
    }

    /// Follows the files until the task is aborted.
    pub fn watch(&self) -> tokio::task::JoinHandle<()> {
        let files = self.files.clone();
        let current = self.current.clone();
        let provider = self.provider.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failed: Option<Stamp> = None;
            loop {
                tick.tick().await;
                reload_if_changed(&files, &current, &provider, &mut failed);
            }
        })
    }
}

/// One look at the files: loads and swaps in a changed pair.
fn reload_if_changed(
    files: &CertFiles,
    current: &CurrentCert,
    provider: &CryptoProvider,
    failed: &mut Option<Stamp>,
) {
    let stamp = files.stamp();
    if stamp == *current.lock_loaded() || failed.as_ref() == Some(&stamp) {
        return;
    }
    match files.load(provider) {
        Ok(certified) => {
            current.key.store(Arc::new(certified));
            *current.lock_loaded() = stamp;
            *failed = None;
            tracing::info!(cert_file = %files.cert.display(), "TLS certificate reloaded");
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "TLS certificate files changed but do not load; still presenting the previous one"
            );
            *failed = Some(stamp);
        }
    }
}

/// The certificate handshakes present, swapped whole on reload.
struct CurrentCert {
    key: ArcSwap<CertifiedKey>,
    /// What the files looked like when the presented pair was read.
    loaded: std::sync::Mutex<Stamp>,
}

impl CurrentCert {
    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, Stamp> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentCert")
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }
}

/// The certificate chain and key files.
#[derive(Clone)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// What identifies a version of a file without reading it: modification time, size, inode.
type FileStamp = Option<(SystemTime, u64, u64)>;
/// Both files' stamps.
type Stamp = (FileStamp, FileStamp);

impl CertFiles {
    fn stamp(&self) -> Stamp {
        let one = |path: &Path| {
            let meta = fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len(), meta.ino()))
        };
        (one(&self.cert), one(&self.key))
    }

    /// Reads the pair; the key must be the certificate's.
    fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let read = |path: &PathBuf| {
            fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        };
        let chain = CertificateDer::pem_slice_iter(&read(&self.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::NoCertificate {
                path: self.cert.clone(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.clone(),
                reason: "no CERTIFICATE section".into(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(&read(&self.key)?).map_err(|e| TlsError::NoKey {
                path: self.key.clone(),
                reason: e.to_string(),
            })?;
        let certified =
            CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
                source,
            })?;
        certified
            .keys_match()
            .map_err(|source| TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
                source,
            })?;
        Ok(certified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn pair() -> (String, String, Vec<u8>) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (
            c.cert.pem(),
            c.signing_key.serialize_pem(),
            c.cert.der().to_vec(),
        )
    }

    fn presented(tls: &Tls) -> Vec<u8> {
        tls.current.key.load().cert[0].to_vec()
    }

    #[test]
    fn a_changed_pair_is_presented_only_once_its_key_fits() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert_a, key_a, der_a) = pair();
        fs::write(&cert, cert_a).unwrap();
        fs::write(&key, key_a).unwrap();
        let tls = Tls::load(&cert, &key, Duration::from_secs(1)).unwrap();
        assert_eq!(presented(&tls), der_a);

        // The renewal has written the new certificate but not yet its key.
        let (cert_b, key_b, der_b) = pair();
        fs::write(&cert, cert_b).unwrap();
        let mut failed = None;
        reload_if_changed(&tls.files, &tls.current, &tls.provider, &mut failed);
        assert_eq!(presented(&tls), der_a, "a mismatched pair is not presented");
        assert!(failed.is_some());

        fs::write(&key, key_b).unwrap();
        reload_if_changed(&tls.files, &tls.current, &tls.provider, &mut failed);
        assert_eq!(presented(&tls), der_b);
        assert!(failed.is_none());
    }

    #[test]
    fn a_missing_key_fails_start_up_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        fs::write(&cert, pair().0).unwrap();
        let err = Tls::load(&cert, &key, Duration::from_secs(1))
            .err()
            .expect("no key file");
        assert!(err.to_string().contains("tls.key"), "{err}");
    }
}
