//! Root certificates for the crate's TLS clients, read in one place: the
//! upstream HTTP client (`[upstream] ca_file`), PostgreSQL (`sslrootcert`)
//! and Redis (`[state] ca_file`) all take their PEM through here, so a bad
//! file reads the same everywhere.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The certificates of a PEM (one or more `CERTIFICATE` blocks; other
/// blocks are skipped). An unreadable block, or none at all, is an error.
pub(crate) fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a root certificate PEM is invalid: {e}"))?;
    if certs.is_empty() {
        return Err("the root certificate PEM holds no certificate".into());
    }
    Ok(certs)
}

/// The PEM file at `path`, read and checked as [`pem_certificates`] and
/// [`root_store`] would take it; errors name the file.
#[cfg_attr(
    not(any(feature = "postgres", all(feature = "config", feature = "redis"))),
    allow(dead_code)
)]
pub(crate) fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("CA file `{}` cannot be read: {e}", path.display()))?;
    pem_certificates(&pem)
        .and_then(root_store)
        .map_err(|e| format!("CA file `{}`: {e}", path.display()))?;
    Ok(pem)
}

/// A root store of `certs` alone.
#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
pub(crate) fn root_store(certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    add_roots(&mut roots, certs)?;
    Ok(roots)
}

/// Adds `certs` to `roots` as trust anchors.
pub(crate) fn add_roots(
    roots: &mut RootCertStore,
    certs: Vec<CertificateDer<'static>>,
) -> Result<(), String> {
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("a root certificate is not usable: {e}"))?;
    }
    Ok(())
}

/// The webpki roots (Mozilla's), what a client trusts when not given a CA.
#[cfg(any(feature = "provider", feature = "postgres"))]
pub(crate) fn webpki_root_store() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_without_certificates_is_refused() {
        assert!(
            pem_certificates(b"nope")
                .unwrap_err()
                .contains("no certificate")
        );
        let e = read_pem_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("cannot be read"),
            "{e}"
        );
    }
}
