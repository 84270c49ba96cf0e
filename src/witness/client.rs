//! The log's side of tlog-witness: `add-checkpoint` and the monitoring
//! `GET <origin hash>/checkpoint`, over plain HTTP (what travels is public
//! and signed: a checkpoint, a proof, a cosignature; integrity comes from
//! the signatures, not the transport).

use std::io::{BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::http::{read_message, HttpError};
use crate::merkle::Hash;
use crate::note::{NoteError, SignatureLine};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// The largest response read (signature lines, or a checkpoint).
const MAX_RESPONSE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid witness URL {0:?}: expected http://HOST:PORT[/PREFIX]")]
    Url(String),
    #[error("cannot reach the witness at {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("the witness at {url} did not answer properly: {source}")]
    Http { url: String, source: HttpError },
    #[error("the witness at {url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("the witness at {url} answered 200 with a malformed cosignature: {source}")]
    BadLine { url: String, source: NoteError },
}

/// What a witness said to a checkpoint.
#[derive(Debug)]
pub enum PushOutcome {
    /// 200: its cosignature lines (not yet verified).
    Cosigned(Vec<SignatureLine>),
    /// 409: the size of the newest checkpoint it cosigned for this log.
    Conflict(u64),
}

struct Target {
    host: String,
    prefix: String,
}

fn parse_url(url: &str) -> Result<Target, ClientError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| ClientError::Url(url.into()))?;
    let (host, prefix) =
        rest.split_once('/').map_or((rest, String::new()), |(h, p)| (h, format!("/{}", p.trim_end_matches('/'))));
    if host.is_empty() || !host.contains(':') {
        return Err(ClientError::Url(url.into()));
    }
    Ok(Target { host: host.to_string(), prefix: if prefix == "/" { String::new() } else { prefix } })
}

/// Checks a witness URL's form (for the config).
pub fn check_url(url: &str) -> Result<(), ClientError> {
    parse_url(url).map(|_| ())
}

fn request(url: &str, method: &str, path: &str, body: &[u8], timeout: Duration) -> Result<(u16, Vec<u8>), ClientError> {
    let t = parse_url(url)?;
    let connect = |source| ClientError::Connect { url: url.to_string(), source };
    let addrs: Vec<_> = t.host.to_socket_addrs().map_err(connect)?.collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut s = stream.ok_or_else(|| connect(last))?;
    let io = |source: std::io::Error| ClientError::Http { url: url.to_string(), source: source.into() };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let _ = s.set_nodelay(true);
    let mut req = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        t.prefix,
        t.host,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).map_err(io)?;
    let mut r = BufReader::new(s);
    let m = read_message(&mut r, MAX_RESPONSE, true)
        .map_err(|source| ClientError::Http { url: url.to_string(), source })?;
    let status: u16 = m.start.0.parse().expect("three digits");
    Ok((status, m.body))
}

/// POSTs a checkpoint with a consistency proof from `old`.
pub fn add_checkpoint(
    url: &str,
    old: u64,
    proof: &[Hash],
    note: &[u8],
    timeout: Duration,
) -> Result<PushOutcome, ClientError> {
    let mut body = format!("old {old}\n").into_bytes();
    for h in proof {
        body.extend_from_slice(B64.encode(h).as_bytes());
        body.push(b'\n');
    }
    body.push(b'\n');
    body.extend_from_slice(note);
    let (status, resp) = request(url, "POST", "/add-checkpoint", &body, timeout)?;
    let text = String::from_utf8_lossy(&resp);
    match status {
        200 => {
            let lines = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(SignatureLine::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| ClientError::BadLine { url: url.to_string(), source })?;
            Ok(PushOutcome::Cosigned(lines))
        }
        409 => text.strip_suffix('\n').and_then(|s| s.parse().ok()).map(PushOutcome::Conflict).ok_or_else(|| {
            ClientError::Status { url: url.into(), status, body: format!("a 409 without a size: {}", short(&text)) }
        }),
        _ => Err(ClientError::Status { url: url.into(), status, body: short(&text) }),
    }
}

/// The newest checkpoint the witness cosigned for `origin` (`None`: it has none).
pub fn get_checkpoint(url: &str, origin: &str, timeout: Duration) -> Result<Option<Vec<u8>>, ClientError> {
    let (status, body) = request(url, "GET", &format!("/{}/checkpoint", origin_hash(origin)), b"", timeout)?;
    match status {
        200 => Ok(Some(body)),
        404 => Ok(None),
        _ => Err(ClientError::Status { url: url.into(), status, body: short(&String::from_utf8_lossy(&body)) }),
    }
}

/// Lowercase hex SHA-256 of an origin (the monitoring path).
pub fn origin_hash(origin: &str) -> String {
    Sha256::digest(origin.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
