//! A test CA and a server certificate for 127.0.0.1 and localhost.

use std::path::{Path, PathBuf};

use harbor_relay::config::TlsMode;

/// A test CA and a server certificate for 127.0.0.1 and localhost.
pub struct Pki {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "harbor-relay test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut sp = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
        sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let cert = sp.signed_by(&key, &issuer).expect("server cert");
        std::fs::create_dir_all(dir).expect("pki dir");
        let out = Pki {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("server.pem"),
            key_pem: dir.join("server.key"),
        };
        std::fs::write(&out.ca_pem, ca_cert.pem()).expect("write ca");
        std::fs::write(&out.cert_pem, cert.pem()).expect("write cert");
        std::fs::write(&out.key_pem, key.serialize_pem()).expect("write key");
        out
    }
}

/// A CA pin for [`client`].
pub fn pinned(pki: &Pki) -> TlsMode {
    TlsMode::Pinned {
        file: pki.ca_pem.clone(),
        pem: std::fs::read(&pki.ca_pem).expect("ca"),
    }
}
