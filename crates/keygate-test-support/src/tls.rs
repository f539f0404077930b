//! A certificate authority made inside a test: it issues the gateway's certificate for
//! `localhost` and `127.0.0.1`, written as PEM files the gateway's `tls.cert_file` and
//! `tls.key_file` name, and gives clients its root to trust.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A test CA and the directory its issued files go to.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    dir: tempfile::TempDir,
}

/// The files of one issued certificate.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate's DER bytes, to recognise it on the wire.
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "keygate test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = params.self_signed(&key).expect("CA certificate");
        Self {
            issuer: Issuer::new(params, key),
            root_pem: root.pem(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The root certificate, for a client to trust.
    pub fn root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.root_pem.as_bytes()).expect("root PEM")
    }

    /// A client that trusts this CA (and only the built-in roots besides).
    pub fn client(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().add_root_certificate(self.root())
    }

    /// Where issued files are written.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a certificate for `localhost` and `127.0.0.1` named `common_name`, written to
    /// `{name}.crt` and `{name}.key` in [`TestCa::dir`] through a rename each (as a renewal
    /// tool replaces them), so a reader never sees half a file.
    pub fn issue(&self, name: &str, common_name: &str) -> CertFiles {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let files = CertFiles {
            cert: self.dir().join(format!("{name}.crt")),
            key: self.dir().join(format!("{name}.key")),
            der: cert.der().to_vec(),
        };
        replace(&files.cert, cert.pem().as_bytes());
        replace(&files.key, key.serialize_pem().as_bytes());
        files
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `path` whole: a temporary file beside it, renamed over it.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
