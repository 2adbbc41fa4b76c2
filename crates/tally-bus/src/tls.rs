//! TLS to RabbitMQ: an `amqps://` URL is connected over rustls (with the ring provider, the
//! one already compiled for the webhook client), and its `cacertfile=PATH` query parameter —
//! the name RabbitMQ's own URI spec uses — names the PEM file of the CA that signed the
//! broker's certificate. The server's name is checked against the URL's host. Without
//! `cacertfile`, the Mozilla roots (webpki) are trusted.

use lapin::tcp::OwnedTLSConfig;

use crate::BusError;

/// The TLS settings of `url`: its `cacertfile` read, refused on a plain `amqp://` URL (a CA
/// there would promise an encryption that does not happen).
pub fn config(url: &str) -> Result<OwnedTLSConfig, BusError> {
    let ca = url
        .split_once('?')
        .map(|(_, query)| query)
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("cacertfile="));
    let Some(ca) = ca else {
        return Ok(OwnedTLSConfig::default());
    };
    if !url.starts_with("amqps://") {
        return Err(BusError::Tls(
            "cacertfile is only for amqps:// URLs (TLS); this one is plain amqp://".into(),
        ));
    }
    let pem = std::fs::read_to_string(ca)
        .map_err(|e| BusError::Tls(format!("reading the CA file {ca}: {e}")))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(BusError::Tls(format!("{ca} holds no PEM certificate")));
    }
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_ca_file_belongs_to_an_amqps_url_and_must_hold_a_certificate() {
        assert!(config("amqp://guest:guest@h:5672/%2f")
            .unwrap()
            .cert_chain
            .is_none());
        assert!(config("amqps://h:5671/%2f").unwrap().cert_chain.is_none());
        assert!(matches!(
            config("amqp://h/%2f?cacertfile=/etc/hostname"),
            Err(BusError::Tls(_))
        ));
        assert!(matches!(
            config("amqps://h/%2f?heartbeat=5&cacertfile=/nonexistent/ca.pem"),
            Err(BusError::Tls(_))
        ));
        assert!(matches!(
            config("amqps://h/%2f?cacertfile=/etc/hostname"),
            Err(BusError::Tls(_))
        ));
    }
}
