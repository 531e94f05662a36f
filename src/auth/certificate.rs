//! The names a client certificate stands for: its URI subject alternative names (SPIFFE ids in a mesh),
//! then its DNS names. The common name is not used; RFC 6125 deprecates it for identity.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// URI names first, then DNS names; empty when the certificate cannot be read or carries neither.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, certificate)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(alternative_names)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    let names = &alternative_names.value.general_names;
    let uris = names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) => Some(uri.to_string()),
        _ => None,
    });
    let dns = names.iter().filter_map(|name| match name {
        GeneralName::DNSName(dns) => Some(dns.to_string()),
        _ => None,
    });
    uris.chain(dns).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_names_come_before_dns_names() {
        let mut params =
            rcgen::CertificateParams::new(vec!["sync.crm.internal".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::Ia5String::try_from("spiffe://cluster.local/ns/crm/sa/sync").unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_names(certificate.der()),
            ["spiffe://cluster.local/ns/crm/sa/sync", "sync.crm.internal"]
        );
    }

    #[test]
    fn garbage_has_no_names() {
        assert!(certificate_names(b"not a certificate").is_empty());
    }
}
