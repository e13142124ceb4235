//! TLS termination: one rustls certificate resolver per listener, picking the
//! certificate by SNI (exact name, then `*.domain` wildcard, then the default).

use anyhow::{anyhow, Context};
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::collections::HashMap;
use std::sync::Arc;

/// Chooses a listener's certificate from the client's server name.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the domain after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Load every certificate of a listener. The first certificate without server
    /// names is the default; if all have names, the first one is.
    pub fn load(tls: &gantry_config::Tls) -> anyhow::Result<Self> {
        pingora::tls::install_default_crypto_provider();
        let provider =
            CryptoProvider::get_default().ok_or_else(|| anyhow!("no TLS crypto provider"))?;
        let mut resolver = SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        };
        let mut first = None;
        for c in &tls.certificates {
            let (cert, key) = (c.cert.display().to_string(), c.key.display().to_string());
            let (chain, key_der) = pingora::tls::load_certs_and_key_files(&cert, &key)
                .map_err(|e| anyhow!("{e}"))
                .and_then(|pair| pair.ok_or_else(|| anyhow!("no certificate or key found")))
                .with_context(|| format!("loading TLS certificate `{cert}` with key `{key}`"))?;
            let signing_key = provider
                .key_provider
                .load_private_key(key_der)
                .map_err(|e| anyhow!("unsupported private key in `{key}`: {e}"))?;
            let certified = Arc::new(CertifiedKey::new(chain, signing_key));
            first.get_or_insert_with(|| certified.clone());
            if c.server_names.is_empty() {
                resolver.default.get_or_insert_with(|| certified.clone());
            }
            for name in &c.server_names {
                match name.strip_prefix("*.") {
                    Some(domain) => resolver
                        .wildcard
                        .insert(domain.to_string(), certified.clone()),
                    None => resolver.exact.insert(name.clone(), certified.clone()),
                };
            }
        }
        if resolver.default.is_none() {
            resolver.default = first;
        }
        Ok(resolver)
    }

    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(|n| n.to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        if let Some((_, domain)) = name.split_once('.') {
            if let Some(c) = self.wildcard.get(domain) {
                return Some(c.clone());
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
    }
}

/// A listener's certificates, replaced whole when a reload reads their files
/// again (renewed certificates at the same paths): handshakes after the swap
/// present the new ones; connections already open keep theirs.
#[derive(Debug)]
pub struct Certificates {
    /// The listener's settings the files come from.
    tls: gantry_config::Tls,
    resolver: arc_swap::ArcSwap<SniResolver>,
}

impl Certificates {
    /// Load `tls`'s certificates.
    pub fn load(tls: &gantry_config::Tls) -> anyhow::Result<Arc<Certificates>> {
        Ok(Arc::new(Certificates {
            tls: tls.clone(),
            resolver: arc_swap::ArcSwap::from_pointee(SniResolver::load(tls)?),
        }))
    }

    /// Read the files again; [`Certificates::swap`] puts them in use.
    pub fn reread(&self) -> anyhow::Result<SniResolver> {
        SniResolver::load(&self.tls)
    }

    /// Present `resolver`'s certificates from the next handshake on.
    pub fn swap(&self, resolver: SniResolver) {
        self.resolver.store(Arc::new(resolver));
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.resolver.load().pick(client_hello.server_name())
    }
}
