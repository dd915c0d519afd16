//! A minimal HTTP/1.1 client for the CLI to ask a node on this machine (`kos peers list`,
//! `kos testnet`). Loopback only, bounded response size, timeouts on every step.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

const MAX_RESPONSE: u64 = 8 * 1024 * 1024;

/// `GET http://<addr><path>` and parse the JSON body; `Err` unless the status is 2xx.
pub fn get_json(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<serde_json::Value> {
    request_json(addr, "GET", path, token, None, timeout)
}

/// `<method> http://<addr><path>` with an optional JSON body; parses the JSON answer. `Err`
/// unless the status is 2xx (the problem's `detail` in the message).
pub fn request_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<serde_json::Value> {
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address");
    }
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let content = if body.is_some() {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        )
    } else {
        String::new()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{auth}{content}Connection: close\r\n\r\n{payload}"
    )?;
    let mut buf = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut buf)
        .context("reading the response")?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status line")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    if !(200..300).contains(&status) {
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let d = v["detail"].as_str()?.to_string();
                let errs: Vec<String> = v["errors"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| {
                                e["message"].as_str().or(e.as_str()).map(str::to_string)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Some(if errs.is_empty() {
                    d
                } else {
                    format!("{d}\n  {}", errs.join("\n  "))
                })
            })
            .unwrap_or_else(|| body.chars().take(300).collect());
        bail!("{method} {path}: HTTP {status}: {detail}");
    }
    serde_json::from_str(&body).with_context(|| format!("{path}: invalid JSON"))
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("malformed chunk")?;
        let n = usize::from_str_radix(size.trim(), 16).context("malformed chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).context("short chunk")?);
        s = rest.get(n + 2..).context("short chunk")?;
    }
}
