//! A minimal HTTP/1.1 keep-alive client: one TCP connection, one request at a time.
//!
//! Why not reqwest: on a 2-core machine the load generator competes with nginx, the API, the
//! workers, RabbitMQ and PostgreSQL for the same CPU, so every microsecond it spends per
//! request is taken from the system under test. Writing a request line and parsing a status
//! line plus `Content-Length` is a few microseconds; it is all the bench needs (no TLS, no
//! redirects, no compression). Chunked bodies are understood too, in case a proxy uses them.

use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `http://host:port` split into what the client needs.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to.
    pub addr: String,
    /// `Host` header value.
    pub host: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported: {url}"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let addr = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            addr,
            host: authority.to_string(),
        })
    }
}

/// One keep-alive connection, reopened when the server closes it.
pub struct Conn {
    target: Target,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Conn {
    pub fn new(target: Target, timeout: Duration) -> Self {
        Self {
            target,
            stream: None,
            buf: Vec::with_capacity(4096),
            timeout,
        }
    }

    /// Sends one request and reads its response. A failure on a reused connection (the
    /// server closed it while idle) is retried once on a fresh one: every request the bench
    /// sends is idempotent (POSTs carry their transaction id).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let reused = self.stream.is_some();
        match tokio::time::timeout(self.timeout, self.once(method, path, body)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.stream = None;
                if reused {
                    match tokio::time::timeout(self.timeout, self.once(method, path, body)).await {
                        Ok(Ok(r)) => Ok(r),
                        Ok(Err(e)) => {
                            self.stream = None;
                            Err(e)
                        }
                        Err(_) => {
                            self.stream = None;
                            Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out"))
                        }
                    }
                } else {
                    Err(e)
                }
            }
            Err(_) => {
                self.stream = None;
                Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out"))
            }
        }
    }

    async fn once(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.target.addr).await?;
            // Small request/response pairs: never wait for Nagle.
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n",
            self.target.host
        );
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no connection"))?;
        stream.write_all(&out).await?;
        self.buf.clear();
        let (response, close) = read_response(stream, &mut self.buf).await?;
        if close {
            self.stream = None;
        }
        Ok(response)
    }
}

/// Reads one response; returns it and whether the server will close the connection.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(Response, bool)> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = parse_head(&buf[..head_end])?;
    let mut rest = buf.split_off(head_end);
    let body = if head.chunked {
        read_chunked(stream, &mut rest).await?
    } else {
        let len = head.content_length.unwrap_or(0);
        while rest.len() < len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a body",
                ));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    };
    Ok((
        Response {
            status: head.status,
            body,
        },
        head.close,
    ))
}

#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn parse_head(raw: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(raw).map_err(|_| bad("non-UTF-8 response head"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty response"))?;
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x response"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        close: version == "HTTP/1.0",
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(value.parse().map_err(|_| bad("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(head)
}

async fn read_chunked(stream: &mut TcpStream, rest: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Size line.
        let line_end = loop {
            if let Some(i) = find(rest, b"\r\n") {
                break i;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("connection closed inside a chunked body"));
            }
            rest.extend_from_slice(&chunk[..n]);
        };
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("bad chunk"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        rest.drain(..line_end + 2);
        // Data plus its CRLF (the last chunk: just the final CRLF, no trailers expected).
        while rest.len() < size + 2 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad("connection closed inside a chunk"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        body.extend_from_slice(&rest[..size]);
        rest.drain(..size + 2);
        if size == 0 {
            return Ok(body);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_heads() {
        let h =
            parse_head(b"HTTP/1.1 201 Created\r\ncontent-length: 12\r\nConnection: close\r\n\r\n")
                .unwrap();
        assert_eq!(
            h,
            Head {
                status: 201,
                content_length: Some(12),
                chunked: false,
                close: true
            }
        );
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(h.chunked && !h.close);
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn parses_targets() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080");
        assert_eq!(
            Target::parse("http://localhost/x").unwrap().addr,
            "localhost:80"
        );
        assert!(Target::parse("https://x").is_err());
    }

    /// A toy server: answers two requests on one connection (one sized, one chunked), then
    /// closes; the client must reconnect for the third.
    #[tokio::test]
    async fn keeps_alive_reads_chunked_and_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut served = 0;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while served < 2 {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // Requests carry a 2-byte body.
                    while let Some(i) = find(&buf, b"\r\n\r\n") {
                        if buf.len() < i + 6 {
                            break;
                        }
                        buf.drain(..i + 6);
                        let answer: &[u8] = if served == 0 {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                        } else {
                            b"HTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                        };
                        s.write_all(answer).await.unwrap();
                        served += 1;
                    }
                }
            }
        });
        let mut c = Conn::new(
            Target::parse(&format!("http://{addr}")).unwrap(),
            Duration::from_secs(5),
        );
        let r = c.request("POST", "/t", Some(b"{}")).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = c.request("POST", "/t", Some(b"{}")).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (402, &b"abcde"[..]));
        // The server closed after two: the retry on a fresh connection answers.
        let r = c.request("POST", "/t", Some(b"{}")).await.unwrap();
        assert_eq!(r.status, 200);
    }
}
