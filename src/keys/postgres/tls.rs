//! TLS to PostgreSQL: libpq's `sslmode` and `sslrootcert`, over rustls.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` and
//! nothing of certificates: the TLS handshake is the connector's. So the
//! connection string is read here first: `sslmode` (all five of libpq's
//! modes) and `sslrootcert` are taken out of it, tokio-postgres gets the
//! rest and the mode it knows (`disable`, `prefer`, or `require` for the
//! three that demand TLS), and the mode becomes the rustls verifier of the
//! connector (`tokio-postgres-rustls`):
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (default) | if the server offers it | not checked; with `sslrootcert=FILE`, as `verify-ca` |
//! | `require` | always | not checked; with `sslrootcert=FILE`, as `verify-ca` |
//! | `verify-ca` | always | signed by a trusted CA; the host name is not compared |
//! | `verify-full` | always | signed by a trusted CA and naming the host connected to |
//!
//! The trusted CAs are those of `sslrootcert=FILE` (a PEM) alone, or the
//! webpki roots (Mozilla's) when it is absent or `system`. As in libpq,
//! `sslrootcert=system` makes `verify-full` the default mode and refuses a
//! weaker one.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode `allow` is not supported; use `prefer`, `require` or a `verify-*` mode"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "sslmode `{other}` is none of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    /// The mode tokio-postgres applies: whether TLS is tried and required.
    fn driver(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as M;
        match self {
            SslMode::Disable => M::Disable,
            SslMode::Prefer => M::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => M::Require,
        }
    }
}

/// A connection string read: tokio-postgres' configuration, the connector
/// for its TLS handshakes, and the mode (for messages and tests).
pub(crate) struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
}

/// Reads `url` (a `postgres://` URL or a `key=value` string) with libpq's
/// `sslmode` and `sslrootcert`; the CA file is read now, so a missing or
/// bad one fails here. Errors never contain the URL.
pub(crate) fn target(url: &str) -> Result<Target, String> {
    let (rest, params) = take_tls_params(url)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| format!("not a PostgreSQL connection URL ({})", super::Causes(&e)))?;
    let system = params.sslrootcert.as_deref() == Some("system");
    let mode = match params.sslmode.as_deref() {
        Some(m) => SslMode::parse(m)?,
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if system && mode != SslMode::VerifyFull {
        return Err(format!(
            "sslrootcert=system needs sslmode `verify-full` (as in libpq), not `{}`",
            params.sslmode.as_deref().unwrap_or_default()
        ));
    }
    config.ssl_mode(mode.driver());
    let file = params.sslrootcert.filter(|_| !system);
    let roots = match &file {
        Some(path) => {
            let pem = crate::tls::read_pem_file(Path::new(path))
                .map_err(|e| format!("sslrootcert: {e}"))?;
            crate::tls::pem_certificates(&pem).and_then(crate::tls::root_store)?
        }
        None => crate::tls::webpki_root_store(),
    };
    let check = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require if file.is_none() => Check::Nothing,
        SslMode::Disable | SslMode::Prefer | SslMode::Require | SslMode::VerifyCa => Check::Ca,
        SslMode::VerifyFull => Check::Full,
    };
    Ok(Target {
        config,
        tls: connector(check, roots)?,
        mode,
    })
}

/// What the connector checks of the server's certificate.
#[derive(Clone, Copy, Debug)]
enum Check {
    Nothing,
    Ca,
    Full,
}

fn connector(check: Check, roots: RootCertStore) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?;
    let webpki = || {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("TLS set-up failed: {e}"))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(EncryptOnly(provider.signature_verification_algorithms)),
        Check::Ca => Arc::new(CaOnly(webpki()?)),
        Check::Full => webpki()?,
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `prefer` and `require` without a CA: the session is encrypted and the
/// handshake's signatures are checked, but the certificate is whoever's.
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA (and be valid now), the
/// name in the certificate is not compared with the host. webpki checks
/// the chain before the name, so a name mismatch means the chain passed.
#[derive(Debug)]
struct CaOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// libpq's TLS parameters, taken out of a connection string.
#[derive(Debug, Default, PartialEq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Splits `url` into the connection string without `sslmode` and
/// `sslrootcert`, and those two (decoded). Both forms: a URL's query
/// (`?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem`), or `key=value`
/// pairs (`host=db sslmode=require sslrootcert='/etc/ca.pem'`).
fn take_tls_params(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), params));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match &*percent_decode(k)? {
                "sslmode" => params.sslmode = Some(percent_decode(v)?),
                "sslrootcert" => params.sslrootcert = Some(percent_decode(v)?),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    let mut rest = String::with_capacity(url.len());
    let mut s = url;
    while !s.trim_start().is_empty() {
        let start = s.len() - s.trim_start().len();
        let (key, value, len) = key_value(&s[start..])?;
        let pair = &s[..start + len];
        match key {
            "sslmode" => params.sslmode = Some(value),
            "sslrootcert" => params.sslrootcert = Some(value),
            _ => rest.push_str(pair),
        }
        s = &s[start + len..];
    }
    Ok((rest, params))
}

/// One `key = value` at the start of `s` (no leading space): the key, the
/// value unquoted and unescaped, and the length read (as tokio-postgres and
/// libpq read them: a value is `'quoted'` or runs to the next space; `\`
/// escapes the next character in both).
fn key_value(s: &str) -> Result<(&str, String, usize), String> {
    let key_end = s
        .find(|c: char| c == '=' || c.is_whitespace())
        .unwrap_or(s.len());
    let key = &s[..key_end];
    let after_key = s[key_end..].trim_start();
    let Some(after_eq) = after_key.strip_prefix('=') else {
        return Err(format!(
            "not a PostgreSQL connection URL (`{key}` has no `=` value)"
        ));
    };
    let value_at = after_eq.trim_start();
    let mut offset = s.len() - value_at.len();
    let mut value = String::new();
    let mut chars = value_at.chars();
    let quoted = value_at.starts_with('\'');
    if quoted {
        chars.next();
        offset += 1;
    }
    loop {
        let Some(c) = chars.next() else {
            if quoted {
                return Err(format!(
                    "not a PostgreSQL connection URL (the value of `{key}` has no closing quote)"
                ));
            }
            break;
        };
        offset += c.len_utf8();
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    offset += n.len_utf8();
                    value.push(n);
                }
            }
            '\'' if quoted => break,
            c if !quoted && c.is_whitespace() => {
                offset -= c.len_utf8();
                break;
            }
            c => value.push(c),
        }
    }
    Ok((key, value, offset))
}

/// `%XX` decoded (as tokio-postgres decodes a URL's query).
fn percent_decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("not a PostgreSQL connection URL (a bad `%` escape in its query)")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| "not a PostgreSQL connection URL (its query is not UTF-8)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Option<String>, Option<String>) {
        let (rest, p) = take_tls_params(url).unwrap();
        (rest, p.sslmode, p.sslrootcert)
    }

    #[test]
    fn url_query_loses_only_the_tls_params() {
        assert_eq!(
            split(
                "postgres://u:p@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca%20b.pem"
            ),
            (
                "postgres://u:p@h:5/db?application_name=x".into(),
                Some("verify-full".into()),
                Some("/tmp/ca b.pem".into())
            )
        );
        assert_eq!(
            split("postgresql://h/db?sslmode=require"),
            ("postgresql://h/db".into(), Some("require".into()), None)
        );
        assert_eq!(
            split("postgres://h/db"),
            ("postgres://h/db".into(), None, None)
        );
    }

    #[test]
    fn key_value_strings_lose_only_the_tls_params() {
        assert_eq!(
            split("host=h  sslmode = verify-ca user=u sslrootcert='/a b/c\\'d.pem' dbname=x"),
            (
                "host=h user=u dbname=x".into(),
                Some("verify-ca".into()),
                Some("/a b/c'd.pem".into())
            )
        );
        assert_eq!(
            split("host=h password='x y'"),
            ("host=h password='x y'".into(), None, None)
        );
        assert!(take_tls_params("host=h sslrootcert='/open").is_err());
        assert!(take_tls_params("host").is_err());
    }

    #[test]
    fn modes_map_to_what_the_driver_enforces() {
        let t = |url: &str| target(url).map(|t| (t.mode, t.config.get_ssl_mode()));
        use tokio_postgres::config::SslMode as M;
        assert_eq!(t("postgres://h/db").unwrap(), (SslMode::Prefer, M::Prefer));
        assert_eq!(
            t("postgres://h/db?sslmode=disable").unwrap(),
            (SslMode::Disable, M::Disable)
        );
        for (mode, m) in [
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let url = format!("host=h sslmode={mode}");
            assert_eq!(t(&url).unwrap(), (m, M::Require), "{mode}");
        }
        assert_eq!(
            t("postgres://h/db?sslrootcert=system").unwrap(),
            (SslMode::VerifyFull, M::Require)
        );
        let e = t("postgres://h/db?sslrootcert=system&sslmode=require").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        // What is not supported is refused, never ignored.
        for unsupported in [
            "sslmode=allow",
            "sslcert=/c.pem",
            "sslkey=/k.pem",
            "sslcrl=/r.pem",
        ] {
            let e = t(&format!("postgres://u:secret@h/db?{unsupported}")).unwrap_err();
            let name = unsupported.split('=').next().unwrap();
            assert!(e.contains(name) && !e.contains("secret"), "{e}");
        }
        let e = t("postgres://u:secret@h/db?sslmode=sure").unwrap_err();
        assert!(e.contains("`sure`") && !e.contains("secret"), "{e}");
        let e = t("postgres://u:secret@h/db?sslmode=verify-ca&sslrootcert=/nonexistent.pem")
            .unwrap_err();
        assert!(
            e.contains("sslrootcert") && e.contains("/nonexistent.pem") && !e.contains("secret"),
            "{e}"
        );
    }
}
