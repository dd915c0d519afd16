//! The CLI's HTTP client for a node on this machine (`kos peers`, `kos federation`,
//! `kos config publish`, `kos testnet`, `kos health`): reqwest over rustls, so it speaks
//! HTTP and HTTPS, with a timeout on every call, no redirects, and a bounded answer.
//!
//! The node is found from its run file (`run/node.json`, the address it actually bound,
//! see [`crate::runfile`]) or else its configuration's `api.listen` (an unspecified address
//! such as `0.0.0.0:7420` or `[::]:7420` is reached on the loopback address of the same
//! family; a specific address is reached as written), and `api.tls` (HTTPS, trusting the
//! node's own certificate file from its config directory besides the system's roots).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::{Method, Url};

/// Largest answer read from the node.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// Where the API of a node is reached from this machine.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `http://127.0.0.1:7420` or `https://[::1]:7420` (no trailing slash).
    pub base: Url,
    /// PEM of the node's own certificate, trusted for this endpoint.
    pub cert_pem: Option<Vec<u8>>,
}

impl Endpoint {
    /// Plain HTTP at `addr` (an unspecified address becomes loopback).
    pub fn http(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            base: base_url("http", addr)?,
            cert_pem: None,
        })
    }

    /// The API of the node whose configuration directory is `dir`.
    pub fn of_config(dir: &Path, config: &kos_config::Config) -> Result<Self> {
        let api = &config.api;
        let listen = crate::runfile::read(dir).map_or(api.listen, |r| r.api);
        match &api.tls {
            None => Self::http(listen),
            Some(tls) => {
                let path = dir.join(&tls.cert);
                let pem = std::fs::read(&path).with_context(|| {
                    format!("reading the node's certificate {}", path.display())
                })?;
                Ok(Self {
                    base: base_url("https", listen)?,
                    cert_pem: Some(pem),
                })
            }
        }
    }
}

/// The address a client on this machine uses for a node listening on `addr`.
pub fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

fn base_url(scheme: &str, addr: SocketAddr) -> Result<Url> {
    let addr = reachable(addr);
    Url::parse(&format!("{scheme}://{addr}")).with_context(|| format!("{addr}: not a URL"))
}

/// Settings of a [`NodeClient`] beyond its timeout.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Skip certificate verification (`kos health --insecure`; sends no credentials).
    pub accept_invalid_certs: bool,
    /// Largest answer read; a longer one is cut there (`request`) or an error (`*_json`).
    pub max_response: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            accept_invalid_certs: false,
            max_response: MAX_RESPONSE,
        }
    }
}

/// A blocking client for one node: its own single-threaded runtime, so it can be used from
/// the CLI's synchronous code (never from inside another runtime).
#[derive(Debug)]
pub struct NodeClient {
    endpoint: Endpoint,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
    max_response: usize,
}

impl NodeClient {
    /// A client with `timeout` for each whole call (connect, send, read).
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Result<Self> {
        Self::with_options(endpoint, timeout, Options::default())
    }

    /// A client with `timeout` for each whole call, and `options`.
    pub fn with_options(endpoint: Endpoint, timeout: Duration, options: Options) -> Result<Self> {
        let mut b = reqwest::Client::builder()
            // The node is on this machine: never through HTTP(S)_PROXY, which would see the
            // admin token the CLI sends.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .danger_accept_invalid_certs(options.accept_invalid_certs);
        if let Some(pem) = &endpoint.cert_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .context("the node's certificate file holds no PEM certificate")?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().context("building the HTTP client")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(Self {
            endpoint,
            client,
            rt,
            max_response: options.max_response,
        })
    }

    /// The base URL this client calls.
    pub fn base(&self) -> &Url {
        &self.endpoint.base
    }

    /// `GET <base><path>`, parsed as JSON; `Err` unless the status is 2xx.
    pub fn get_json(&self, path: &str, token: Option<&str>) -> Result<serde_json::Value> {
        self.request_json(Method::GET, path, token, None)
    }

    /// `<method> <base><path>` with an optional JSON body; parses the JSON answer. `Err`
    /// unless the status is 2xx, with the problem's `detail` and `errors` in the message.
    pub fn request_json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let (status, text) = self.request(method.clone(), path, token, body)?;
        if text.len() >= self.max_response {
            bail!(
                "{method} {path}: the answer is larger than {} bytes",
                self.max_response
            );
        }
        if !status.is_success() {
            bail!(
                "{method} {path}: HTTP {}: {}",
                status.as_u16(),
                problem_detail(&text)
            );
        }
        serde_json::from_str(&text).with_context(|| format!("{path}: invalid JSON"))
    }

    /// One call; the status and the body as text, cut at the client's `max_response` bytes
    /// (8 MiB unless set; decoded once whole, so a character split across chunks is kept).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(reqwest::StatusCode, String)> {
        let url = self
            .endpoint
            .base
            .join(path)
            .with_context(|| format!("`{path}` is not a path"))?;
        let mut rb = self
            .client
            .request(method, url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        self.rt.block_on(async {
            let mut resp = rb
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("{url}: {}", error_chain(&e)))?;
            let status = resp.status();
            let mut buf = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .with_context(|| format!("{url}: reading the answer"))?
            {
                buf.extend_from_slice(&chunk);
                if buf.len() >= self.max_response {
                    buf.truncate(self.max_response);
                    break;
                }
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            Ok((status, text))
        })
    }
}

/// reqwest's error with its causes ("error sending request: connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The `detail` (and each of `errors`) of a problem+json answer, else its first 300 chars.
fn problem_detail(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let d = v["detail"].as_str()?.to_string();
            let errs: Vec<String> = v["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e["message"].as_str().or(e.as_str()).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Some(if errs.is_empty() {
                d
            } else {
                format!("{d}\n  {}", errs.join("\n  "))
            })
        })
        .unwrap_or_else(|| body.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let b = |s: &str| Endpoint::http(s.parse().unwrap()).unwrap().base.to_string();
        assert_eq!(b("0.0.0.0:7420"), "http://127.0.0.1:7420/");
        assert_eq!(b("[::]:7420"), "http://[::1]:7420/");
        assert_eq!(b("192.0.2.7:7420"), "http://192.0.2.7:7420/");
        assert_eq!(b("[fe80::1]:80"), "http://[fe80::1]/");
    }

    #[test]
    fn problem_details_are_shown() {
        let body = r#"{"detail":"invalid config","errors":[{"message":"a: bad"},"b: worse"]}"#;
        assert_eq!(problem_detail(body), "invalid config\n  a: bad\n  b: worse");
        assert_eq!(problem_detail("plain text"), "plain text");
    }
}
