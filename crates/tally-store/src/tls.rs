//! TLS to PostgreSQL. `database.url` takes libpq's spelling, `sslmode=verify-full` with
//! `sslrootcert=PATH` (the PEM file of the CA that signed the server's certificate):
//! connections are then encrypted with rustls (the ring provider, already compiled for the
//! webhook client) and the server's certificate is checked against that CA and the URL's
//! host. tokio-postgres itself knows neither parameter, so they are taken out of the URL
//! here. Modes that would encrypt without checking who answers (`require`, `verify-ca`) are
//! refused rather than weakened or strengthened silently; `disable`/`prefer` (or none) mean
//! plaintext.

use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StoreError;

/// How to connect: plaintext, or TLS checked against a CA.
#[derive(Clone)]
pub enum Tls {
    Plain,
    VerifyFull(MakeRustlsConnect),
}

/// The connection settings of `url` and its TLS.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, Tls), StoreError> {
    let bad = |m: String| StoreError::Config(m);
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = None;
    let mut ca = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = Some(value),
            Some(("sslrootcert", value)) => ca = Some(value),
            _ => rest.push(pair),
        }
    }
    let tls = match (mode, ca) {
        (Some("verify-full"), Some(ca)) => Tls::VerifyFull(connector(ca)?),
        (Some("verify-full"), None) => {
            return Err(bad(
                "sslmode=verify-full needs sslrootcert=<CA file (PEM)>".into()
            ))
        }
        (Some(mode @ ("require" | "verify-ca")), _) => {
            return Err(bad(format!(
                "sslmode={mode} does not check the server's name; use sslmode=verify-full \
                 with sslrootcert=<CA file>"
            )))
        }
        (_, Some(_)) => {
            return Err(bad(
                "sslrootcert is only used with sslmode=verify-full".into()
            ))
        }
        (Some(other), None) => {
            rest.push(match other {
                "disable" => "sslmode=disable",
                "prefer" => "sslmode=prefer",
                _ => return Err(bad(format!("unknown sslmode {other:?}"))),
            });
            Tls::Plain
        }
        (None, None) => Tls::Plain,
    };
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
    if let Tls::VerifyFull(_) = tls {
        config.ssl_mode(SslMode::Require);
    }
    Ok((config, tls))
}

/// A rustls connector that trusts only the CA in `path`.
fn connector(path: &str) -> Result<MakeRustlsConnect, StoreError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |m: String| StoreError::Config(format!("sslrootcert={path}: {m}"));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tls_modes_that_would_not_check_the_server_are_refused() {
        let plain = parse("postgres://u:p@h:5432/db?sslmode=disable&application_name=x").unwrap();
        assert!(matches!(plain.1, Tls::Plain));
        assert_eq!(plain.0.get_ssl_mode(), SslMode::Disable);
        assert!(matches!(parse("postgres://h/db").unwrap().1, Tls::Plain));
        for bad in [
            "postgres://h/db?sslmode=require",
            "postgres://h/db?sslmode=verify-ca&sslrootcert=/x",
            "postgres://h/db?sslmode=verify-full",
            "postgres://h/db?sslrootcert=/x",
            "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "postgres://h/db?sslmode=sometimes",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
