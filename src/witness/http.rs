//! The little HTTP/1.1 the witness protocol needs, on blocking sockets:
//! requests and responses with a `Content-Length` body, keep-alive, and
//! hard bounds on every size and wait. (No chunked bodies: tlog-witness
//! bodies are small and their length is known before they are sent.)

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// The most header bytes read (request or status line and headers).
pub const MAX_HEAD: usize = 8 << 10;

#[derive(Debug)]
pub struct Message {
    /// Request: method and path; response: the status code (as text) and its reason.
    pub start: (String, String),
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the peer asked to close after this message.
    pub fn wants_close(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection before a new message began.
    #[error("connection closed")]
    Closed,
    #[error("bad HTTP message: {0}")]
    Bad(&'static str),
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
}

/// Reads one message. `response`: a status line instead of a request line.
/// A response without `Content-Length` runs to the end of the connection.
pub fn read_message(r: &mut BufReader<TcpStream>, max_body: usize, response: bool) -> Result<Message, HttpError> {
    let mut head = Vec::new();
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.by_ref().take((MAX_HEAD - head.len()) as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(if lines.is_empty() && head.is_empty() {
                HttpError::Closed
            } else {
                HttpError::Bad("truncated header")
            });
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(HttpError::Bad("header too large"));
        }
        if !line.ends_with(b"\n") {
            return Err(HttpError::Bad("truncated header"));
        }
        let text = String::from_utf8(line).map_err(|_| HttpError::Bad("header is not UTF-8"))?;
        let text = text.trim_end_matches(['\r', '\n']).to_string();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF between messages (RFC 9112 §2.2)
            }
            break;
        }
        lines.push(text);
    }
    let first = lines.remove(0);
    let mut parts = first.splitn(3, ' ');
    let (a, b, c) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let start = if response {
        if !a.starts_with("HTTP/1.") || b.len() != 3 || !b.bytes().all(|x| x.is_ascii_digit()) {
            return Err(HttpError::Bad("bad status line"));
        }
        (b.to_string(), c.to_string())
    } else {
        if a.is_empty() || !b.starts_with('/') || !c.starts_with("HTTP/1.") {
            return Err(HttpError::Bad("bad request line"));
        }
        (a.to_string(), b.to_string())
    };
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or(HttpError::Bad("a header without a colon"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut m = Message { start, headers, body: Vec::new() };
    if m.header("transfer-encoding").is_some() {
        return Err(HttpError::Bad("transfer-encoding is not supported; send Content-Length"));
    }
    match m.header("content-length") {
        Some(v) => {
            let len: usize = v.parse().map_err(|_| HttpError::Bad("bad content-length"))?;
            if len > max_body {
                return Err(HttpError::TooLarge(max_body));
            }
            m.body = vec![0; len];
            r.read_exact(&mut m.body)?;
        }
        None if response => {
            r.by_ref().take(max_body as u64 + 1).read_to_end(&mut m.body)?;
            if m.body.len() > max_body {
                return Err(HttpError::TooLarge(max_body));
            }
        }
        None => {}
    }
    Ok(m)
}

/// Writes a response.
pub fn write_response(w: &mut TcpStream, status: u16, content_type: &str, body: &[u8], close: bool) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}
