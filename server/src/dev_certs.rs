//! Certificates for trying TLS on one machine (`cairn dev-certs`, and the
//! tests): a development CA, a server certificate it signs (for `localhost`,
//! `127.0.0.1`, `::1` and any extra host names), a client certificate for
//! trying mutual TLS, and a cluster node's certificate (the same names and
//! [`NODE_PEER_NAME`], valid both as a server and as a client certificate: a
//! node serves its raft listener with it and presents it to its peers). Keys
//! are ECDSA P-256 (rcgen with ring).
//!
//! The CA's key is kept next to its certificate (`ca.key`, mode 0600) so that
//! running `cairn dev-certs` again on the same directory re-issues the server
//! and client certificates (with other `--host` names, say) under the same
//! CA: clients that trust `ca.pem` keep working. Delete the directory for a
//! new CA. This is a development CA: never trust it beyond your machine.
//!
//! ```no_run
//! let files = cairn_server::dev_certs::write(std::path::Path::new("certs"), &[]).unwrap();
//! println!("cairn --tls-cert-file {} --tls-key-file {}", files.server_cert.display(), files.server_key.display());
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The development CA's name (reused CAs are rebuilt with it).
const CA_NAME: &str = "Cairn development CA";
/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How long the server, client and node certificates are valid (below the 398
/// days clients accept for a leaf).
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// The host names and addresses every server and node certificate names.
pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// The name in the client certificate.
pub const CLIENT_NAME: &str = "cairn-dev-client";
/// The DNS name every node certificate carries besides its hosts: give nodes
/// `--cluster-tls-peer-name cairn-node` and their raft listeners take only
/// the CA's node certificates as peers, not its client certificate.
pub const NODE_PEER_NAME: &str = "cairn-node";

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevCertError {
    /// rcgen refused (e.g. a host name that is not a DNS name or address).
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A development CA that signs server and client certificates.
pub struct DevCa {
    /// The CA's certificate (PEM): what clients (and servers, for client
    /// certificates) trust.
    pub cert_pem: String,
    /// Signs what the CA issues.
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// Validity from an hour ago (clocks differ a little) for `lifetime`.
fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + lifetime).into();
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    name.push(DnType::OrganizationName, "Cairn");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl DevCa {
    /// A new CA with a new key.
    pub fn generate() -> Result<Self, DevCertError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        validity(&mut params, CA_LIFETIME);
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA that `cert_pem` and `key_pem` (written by [`DevCa::key_pem`])
    /// describe, to issue more certificates under it.
    pub fn from_pem(cert_pem: String, key_pem: &str) -> Result<Self, DevCertError> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Self {
            cert_pem,
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// The CA's private key (PKCS#8 PEM).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A server certificate for [`DEFAULT_HOSTS`] and `hosts` (DNS names or
    /// IP addresses).
    pub fn server(&self, hosts: &[String]) -> Result<Issued, DevCertError> {
        let mut params = CertificateParams::new(host_names(hosts))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "cairn server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A cluster node's certificate for [`DEFAULT_HOSTS`], `hosts` and
    /// [`NODE_PEER_NAME`] (the name `--cluster-tls-peer-name` requires of
    /// peers): both extended key usages, server and client authentication,
    /// since a node serves its raft listener with it and presents it to the
    /// peers it dials (`--cluster-tls-cert-file`), and rustls checks the usage
    /// on either side. It must name every host its peers dial it at.
    pub fn node(&self, hosts: &[String]) -> Result<Issued, DevCertError> {
        let mut names = host_names(hosts);
        if !names.iter().any(|name| name == NODE_PEER_NAME) {
            names.push(NODE_PEER_NAME.to_owned());
        }
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "cairn node");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params)
    }

    /// A client certificate naming `name` (common name and DNS name), for
    /// mutual TLS.
    pub fn client(&self, name: &str) -> Result<Issued, DevCertError> {
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, DevCertError> {
        validity(&mut params, LEAF_LIFETIME);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// [`DEFAULT_HOSTS`] followed by those of `hosts` not among them.
fn host_names(hosts: &[String]) -> Vec<String> {
    let mut names: Vec<String> = DEFAULT_HOSTS
        .iter()
        .map(|host| (*host).to_owned())
        .collect();
    for host in hosts {
        if !names.contains(host) {
            names.push(host.clone());
        }
    }
    names
}

/// The files [`write`] wrote.
#[derive(Debug, Clone)]
pub struct DevCertFiles {
    /// The CA certificate: `--ca-file` of clients, `--tls-client-ca-file` of
    /// the server for mutual TLS.
    pub ca: PathBuf,
    /// The CA's key (0600), kept to issue more certificates.
    pub ca_key: PathBuf,
    /// `--tls-cert-file` of the server.
    pub server_cert: PathBuf,
    /// `--tls-key-file` of the server (0600).
    pub server_key: PathBuf,
    /// `--cert-file` of a client, for mutual TLS.
    pub client_cert: PathBuf,
    /// `--key-file` of a client (0600).
    pub client_key: PathBuf,
    /// `--cluster-tls-cert-file` of a cluster node (with `ca` as its
    /// `--cluster-tls-ca-file`): the server names' certificate, valid as a
    /// client certificate too, and for [`NODE_PEER_NAME`]
    /// (`--cluster-tls-peer-name cairn-node`).
    pub node_cert: PathBuf,
    /// `--cluster-tls-key-file` of a cluster node (0600).
    pub node_key: PathBuf,
    /// True when an existing CA in the directory was used.
    pub reused_ca: bool,
}

/// Writes `ca.pem`, `ca.key`, `server.pem`, `server.key`, `client.pem`,
/// `client.key`, `node.pem` and `node.key` into `out` (created if needed),
/// reusing the CA already there. The server and node certificates name
/// [`DEFAULT_HOSTS`] and `hosts`, the node certificate [`NODE_PEER_NAME`]
/// too.
/// Every file is replaced atomically (a running server that reloads never
/// sees half a file); keys are readable by their owner only.
pub fn write(out: &Path, hosts: &[String]) -> Result<DevCertFiles, DevCertError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |error| DevCertError::Io { path, error }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let files = DevCertFiles {
        ca: out.join("ca.pem"),
        ca_key: out.join("ca.key"),
        server_cert: out.join("server.pem"),
        server_key: out.join("server.key"),
        client_cert: out.join("client.pem"),
        client_key: out.join("client.key"),
        node_cert: out.join("node.pem"),
        node_key: out.join("node.key"),
        reused_ca: files_exist(&[&out.join("ca.pem"), &out.join("ca.key")]),
    };
    let ca = if files.reused_ca {
        let cert_pem = std::fs::read_to_string(&files.ca).map_err(io(&files.ca))?;
        let key_pem = std::fs::read_to_string(&files.ca_key).map_err(io(&files.ca_key))?;
        DevCa::from_pem(cert_pem, &key_pem)?
    } else {
        let ca = DevCa::generate()?;
        write_file(&files.ca_key, &ca.key_pem(), true)?;
        write_file(&files.ca, &ca.cert_pem, false)?;
        ca
    };
    let server = ca.server(hosts)?;
    write_file(&files.server_key, &server.key_pem, true)?;
    write_file(&files.server_cert, &server.cert_pem, false)?;
    let client = ca.client(CLIENT_NAME)?;
    write_file(&files.client_key, &client.key_pem, true)?;
    write_file(&files.client_cert, &client.cert_pem, false)?;
    let node = ca.node(hosts)?;
    write_file(&files.node_key, &node.key_pem, true)?;
    write_file(&files.node_cert, &node.cert_pem, false)?;
    Ok(files)
}

fn files_exist(paths: &[&Path]) -> bool {
    paths.iter().all(|path| path.is_file())
}

/// Writes `text` to `path` through a temporary file renamed over it; a
/// `secret` is created readable and writable by its owner only.
pub fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), DevCertError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |error| DevCertError::Io { path, error }
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let _ = std::fs::remove_file(&temporary);
    let mut file = options.open(&temporary).map_err(io(&temporary))?;
    file.write_all(text.as_bytes()).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path(), &["cairn.example".to_owned()]).unwrap();
        assert!(!first.reused_ca);
        let ca = std::fs::read_to_string(&first.ca).unwrap();
        let server = std::fs::read_to_string(&first.server_cert).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            std::fs::read_to_string(&first.server_key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [
                &first.ca_key,
                &first.server_key,
                &first.client_key,
                &first.node_key,
            ] {
                let mode = std::fs::metadata(key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", key.display());
            }
        }
        let second = write(dir.path(), &[]).unwrap();
        assert!(second.reused_ca);
        assert_eq!(std::fs::read_to_string(&second.ca).unwrap(), ca);
        assert_ne!(
            std::fs::read_to_string(&second.server_cert).unwrap(),
            server
        );
        // The re-issued pair loads and fits together.
        crate::tls::load_certified_key(
            &second.server_cert,
            &second.server_key,
            &crate::tls::provider(),
        )
        .unwrap();
        crate::tls::load_certified_key(
            &second.node_cert,
            &second.node_key,
            &crate::tls::provider(),
        )
        .unwrap();
    }

    #[test]
    fn a_node_certificate_verifies_as_a_server_and_as_a_client_under_its_ca() {
        use std::sync::Arc;

        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

        fn der(pem: &str) -> CertificateDer<'static> {
            CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
        }
        let ca = DevCa::generate().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.cert_pem)).unwrap();
        let roots = Arc::new(roots);
        let provider = crate::tls::provider();
        // The verifiers rustls runs in a handshake: each checks the chain to
        // the CA and the extended key usage of its side (and the server's
        // name).
        let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::clone(&roots),
            Arc::clone(&provider),
        )
        .build()
        .unwrap();
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        let now = UnixTime::now();
        let as_server = |pem: &str, host: &str| {
            let name = ServerName::try_from(host.to_owned()).expect("a host name");
            servers
                .verify_server_cert(&der(pem), &[], &name, &[], now)
                .map(|_| ())
        };
        let as_client = |pem: &str| clients.verify_client_cert(&der(pem), &[], now).map(|_| ());

        let extra = ["node-2.cairn.lan".to_owned(), "10.0.0.2".to_owned()];
        let node = ca.node(&extra).unwrap();
        for host in [
            "localhost",
            "127.0.0.1",
            "::1",
            "node-2.cairn.lan",
            "10.0.0.2",
        ] {
            as_server(&node.cert_pem, host)
                .unwrap_or_else(|error| panic!("the node certificate as {host}: {error}"));
        }
        as_client(&node.cert_pem).expect("the node certificate as a client certificate");
        assert!(as_server(&node.cert_pem, "node-3.cairn.lan").is_err());

        // The usages are checked: a server certificate is no client
        // certificate and a client certificate no server certificate.
        let server = ca.server(&[]).unwrap();
        as_server(&server.cert_pem, "localhost").unwrap();
        let refused = as_client(&server.cert_pem).expect_err("a server-only certificate");
        assert!(
            matches!(refused, rustls::Error::InvalidCertificate(_)),
            "{refused:?}"
        );
        let client = ca.client(CLIENT_NAME).unwrap();
        as_client(&client.cert_pem).unwrap();
        assert!(as_server(&client.cert_pem, CLIENT_NAME).is_err());

        // Another CA's node certificate is refused on both sides.
        let stranger = DevCa::generate().unwrap().node(&[]).unwrap();
        assert!(as_server(&stranger.cert_pem, "localhost").is_err());
        assert!(as_client(&stranger.cert_pem).is_err());
    }

    #[test]
    fn only_the_node_certificate_carries_the_peer_name() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};

        let peer_name = ServerName::try_from(NODE_PEER_NAME).expect("a DNS name");
        let valid_for_peer_name = |pem: &str| {
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate");
            webpki::EndEntityCert::try_from(&der)
                .expect("a certificate")
                .verify_is_valid_for_subject_name(&peer_name)
                .is_ok()
        };
        let ca = DevCa::generate().unwrap();
        assert!(valid_for_peer_name(&ca.node(&[]).unwrap().cert_pem));
        // With extra hosts too, one of them the peer name itself.
        let node = ca
            .node(&[NODE_PEER_NAME.to_owned(), "node-2.cairn.lan".to_owned()])
            .unwrap();
        assert!(valid_for_peer_name(&node.cert_pem));
        assert!(!valid_for_peer_name(&ca.server(&[]).unwrap().cert_pem));
        assert!(!valid_for_peer_name(
            &ca.client(CLIENT_NAME).unwrap().cert_pem
        ));
    }

    #[test]
    fn a_bad_host_name_is_an_error() {
        let ca = DevCa::generate().unwrap();
        assert!(ca.server(&["hôst".to_owned()]).is_err());
    }
}
