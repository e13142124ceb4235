//! A listener's TLS section: certificates and keys, checked as files (PEM,
//! bounded in size) before the gateway starts.

use super::*;

pub(super) fn convert_tls(c: &mut Checker, at: &str, t: &TlsSection, base: &Path) -> Tls {
    if t.certificates.is_empty() {
        c.fail(
            format!("{at}.certificates"),
            "at least one certificate is required",
        );
    }
    let mut seen_names = HashMap::new();
    let mut certificates = Vec::new();
    for (j, cert) in t.certificates.iter().enumerate() {
        let cat = format!("{at}.certificates[{j}]");
        let cert_path = base.join(&cert.cert);
        let key_path = base.join(&cert.key);
        check_pem(c, format!("{cat}.cert"), &cert_path, PemKind::Certificate);
        check_pem(c, format!("{cat}.key"), &key_path, PemKind::PrivateKey);
        let mut server_names = Vec::new();
        for (k, name) in cert.server_names.iter().enumerate() {
            let name = name.to_ascii_lowercase();
            let path = format!("{cat}.server_names[{k}]");
            if !valid_host_pattern(&name) {
                c.fail(
                    path,
                    format!("`{name}` is not a host name or `*.domain` wildcard"),
                );
            } else if let Some(other) = seen_names.insert(name.clone(), path.clone()) {
                c.fail(path, format!("`{name}` is already served by {other}"));
            }
            server_names.push(name);
        }
        certificates.push(Certificate {
            cert: cert_path,
            key: key_path,
            server_names,
        });
    }
    Tls {
        http2: t.http2,
        certificates,
    }
}

/// What a PEM file must hold.
pub(super) enum PemKind {
    Certificate,
    PrivateKey,
}

/// Largest certificate or key file read, in bytes (a chain is a few KiB).
pub const MAX_PEM_FILE_BYTES: u64 = 1 << 20;

/// A TLS file must exist, be readable, and hold what it should; name the file if not.
pub(super) fn check_pem(c: &mut Checker, path: String, file: &Path, kind: PemKind) {
    use std::io::Read;
    let mut bytes = Vec::new();
    let read = std::fs::File::open(file)
        .and_then(|f| f.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        c.fail(path, format!("cannot read `{}`: {e}", file.display()));
        return;
    }
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        c.fail(
            path,
            format!(
                "`{}` is larger than {MAX_PEM_FILE_BYTES} bytes",
                file.display()
            ),
        );
        return;
    }
    let mut reader = bytes.as_slice();
    let ok = match kind {
        PemKind::Certificate => rustls_pemfile::certs(&mut reader).any(|r| r.is_ok()),
        PemKind::PrivateKey => matches!(rustls_pemfile::private_key(&mut reader), Ok(Some(_))),
    };
    if !ok {
        let what = match kind {
            PemKind::Certificate => "no PEM certificate",
            PemKind::PrivateKey => "no PEM private key",
        };
        c.fail(path, format!("`{}` holds {what}", file.display()));
    }
}
