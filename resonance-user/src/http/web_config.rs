//! The web configuration file of Prometheus exporters (exporter-toolkit's
//! `--web.config.file`, also read by node_exporter and ebpf_exporter): TLS
//! for the endpoint, client certificates, basic auth with bcrypt hashes,
//! extra response headers. A file written for node_exporter works here;
//! the settings rustls decides for itself (cipher suites, curves) are
//! refused by name rather than ignored.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;
use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

/// A web config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// Unreadable file (the config itself, a certificate, a key).
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Not the format, or a setting resonance does not take.
    #[error("web config {path} is invalid: {message}")]
    Invalid {
        /// The web config file.
        path: PathBuf,
        /// What is wrong, with the setting's name.
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    /// User name → bcrypt hash.
    basic_auth_users: Option<BTreeMap<String, String>>,
    http_server_config: Option<HttpFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// HTTP/2 is not served; `false` says so and is accepted.
    #[serde(default)]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// What the endpoint does with a loaded web config.
#[derive(Clone, Default)]
pub struct WebSettings {
    /// TLS, when configured.
    pub tls: Option<Arc<ServerConfig>>,
    /// User name → bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Headers added to every response.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for WebSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSettings")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .finish()
    }
}

impl WebSettings {
    /// Reads and checks `path`; relative certificate paths are taken from
    /// the file's folder, as exporter-toolkit does.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| WebConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of the file at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, WebConfigError> {
        let invalid = |message: String| WebConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?
        };
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if user.contains(':') {
                return Err(invalid(format!(
                    "basic_auth_users: user {user:?} has a ':', which basic auth cannot carry"
                )));
            }
            if !is_bcrypt_hash(hash) {
                return Err(invalid(format!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash \
                     (expected $2a$, $2b$ or $2y$ and 60 characters, e.g. from `htpasswd -nBC 10 {user}`)"
                )));
            }
        }
        let mut headers = Vec::new();
        if let Some(http) = file.http_server_config {
            if http.http2 == Some(true) {
                return Err(invalid(
                    "http_server_config.http2: only HTTP/1.1 is served".to_owned(),
                ));
            }
            for (name, value) in http.headers {
                let lower = name.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "content-type" | "content-length" | "content-encoding" | "www-authenticate"
                ) {
                    return Err(invalid(format!(
                        "http_server_config.headers: {name} is set by the endpoint itself"
                    )));
                }
                headers.push((name, value));
            }
        }
        let folder = path.parent().unwrap_or(Path::new("."));
        let tls = match file.tls_server_config {
            Some(tls) => Some(Arc::new(tls_config(&tls, folder, path)?)),
            None => None,
        };
        Ok(Self {
            tls,
            users,
            headers,
        })
    }
}

fn is_bcrypt_hash(hash: &str) -> bool {
    hash.len() == 60 && ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// The rustls server config the file's TLS section describes.
fn tls_config(tls: &TlsFile, folder: &Path, path: &Path) -> Result<ServerConfig, WebConfigError> {
    let invalid = |message: String| WebConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let at = |file: &Path| folder.join(file);
    let read = |file: &Path| {
        std::fs::read(at(file)).map_err(|error| WebConfigError::Read {
            path: at(file),
            error,
        })
    };
    let cert_pem = read(&tls.cert_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("cert_file {}: {e}", at(&tls.cert_file).display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "cert_file {} holds no certificate",
            at(&tls.cert_file).display()
        )));
    }
    let key_pem = read(&tls.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid(format!("key_file {}: {e}", at(&tls.key_file).display())))?;

    let version = |name: &Option<String>, field: &str| -> Result<Option<u8>, WebConfigError> {
        match name.as_deref() {
            None => Ok(None),
            Some("TLS12") => Ok(Some(12)),
            Some("TLS13") => Ok(Some(13)),
            Some("TLS10" | "TLS11") => Err(invalid(format!(
                "{field}: TLS 1.0 and 1.1 are not offered (rustls speaks 1.2 and 1.3)"
            ))),
            Some(other) => Err(invalid(format!(
                "{field} {other:?}: expected TLS12 or TLS13"
            ))),
        }
    };
    let min = version(&tls.min_version, "min_version")?.unwrap_or(12);
    let max = version(&tls.max_version, "max_version")?.unwrap_or(13);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, version)| version)
            .collect();
    if versions.is_empty() {
        return Err(invalid("min_version is above max_version".to_owned()));
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| invalid(format!("TLS versions: {e}")))?;
    let auth = tls.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let Some(ca_file) = &tls.client_ca_file else {
                return Err(invalid(format!(
                    "client_auth_type {auth} needs client_ca_file"
                )));
            };
            let ca_pem = read(ca_file)?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca_pem) {
                let cert = cert.map_err(|e| {
                    invalid(format!("client_ca_file {}: {e}", at(ca_file).display()))
                })?;
                roots.add(cert).map_err(|e| {
                    invalid(format!("client_ca_file {}: {e}", at(ca_file).display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid(format!("client_ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(invalid(format!(
                "client_auth_type {auth}: a client certificate nobody verifies proves \
                 nothing; use RequireAndVerifyClientCert with client_ca_file"
            )));
        }
        other => {
            return Err(invalid(format!(
                "client_auth_type {other:?}: expected NoClientCert, VerifyClientCertIfGiven \
                 or RequireAndVerifyClientCert"
            )));
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$X0h1gDsPszWURQaxFN.eMOE7QCK5bBiURJu6sw/Dd1VSgwFmxkN.e";

    fn parse(text: &str) -> Result<WebSettings, WebConfigError> {
        WebSettings::parse(text, Path::new("/etc/resonance/web.yml"))
    }

    #[test]
    fn an_empty_file_means_plain_http_without_auth() {
        let settings = parse("").unwrap();
        assert!(settings.tls.is_none() && settings.users.is_empty());
    }

    #[test]
    fn users_and_headers_are_read() {
        let settings = parse(&format!(
            "basic_auth_users:\n  prometheus: {HASH}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        ))
        .unwrap();
        assert_eq!(settings.users["prometheus"], HASH);
        assert_eq!(
            settings.headers,
            vec![("X-Frame-Options".to_owned(), "deny".to_owned())]
        );
    }

    #[test]
    fn mistakes_name_the_setting() {
        let error = parse("basic_auth_users:\n  alice: hunter2\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("alice") && error.contains("bcrypt"),
            "{error}"
        );
        let error = parse(
            "tls_server_config:\n  cert_file: a.pem\n  key_file: a.key\n  cipher_suites: [x]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("cipher_suites"), "{error}");
        let error = parse("basic_auth_user:\n  a: b\n").unwrap_err().to_string();
        assert!(error.contains("basic_auth_user"), "{error}");
        let error = parse("tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: k\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/c.pem"), "{error}");
        let error = parse("http_server_config:\n  http2: true\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("HTTP/1.1"), "{error}");
    }
}
