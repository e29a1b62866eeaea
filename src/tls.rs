//! TLS configuration with rustls (aws-lc-rs): client configurations that trust either the
//! Mozilla root set or a given PEM bundle. Certificates are read here and nowhere else.
//!
//! Building configurations only; no sockets.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Certificates of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// A client configuration trusting `ca_file` if given, else the Mozilla roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in read_certificates(path)? {
                roots.add(c).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The public listener's certificate, swapped in place when its files change on disk (new
/// handshakes get the new one; open connections keep theirs).
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    current: arc_swap::ArcSwap<rustls::sign::CertifiedKey>,
    stamp: std::sync::Mutex<Stamp>,
}

type Stamp = (Option<std::time::SystemTime>, Option<std::time::SystemTime>);

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

fn certified_key(cert_file: &Path, key_file: &Path) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::PrivateKeyDer;
    let certs = read_certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("cannot read the private key {}: {e}", key_file.display()))?;
    let signing = provider().key_provider.load_private_key(key).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let ck = rustls::sign::CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| format!("{} does not match {}: {e}", key_file.display(), cert_file.display()))?;
    Ok(ck)
}

impl ReloadingCert {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ReloadingCert, String> {
        let ck = certified_key(cert_file, key_file)?;
        Ok(ReloadingCert {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: arc_swap::ArcSwap::from_pointee(ck),
            stamp: std::sync::Mutex::new(stamp(cert_file, key_file)),
        })
    }

    /// Reloads when either file changed; `Ok(true)` if a new certificate is in place. A
    /// broken pair is refused and the old certificate stays.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.cert_file, &self.key_file);
        let mut last = self.stamp.lock().map_err(|_| "certificate lock poisoned".to_owned())?;
        if *last == now {
            return Ok(false);
        }
        *last = now;
        let ck = certified_key(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(ck));
        Ok(true)
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The public listener's TLS configuration (HTTP/1.1 over TLS 1.2 and 1.3).
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<rustls::ServerConfig, String> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}
