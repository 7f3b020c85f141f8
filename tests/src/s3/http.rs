//! The few plain HTTP/1.1 requests the S3 harness makes to moto itself
//! (no SDK, no signatures), and what it needs to read the answers.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use super::REQUEST_TIMEOUT;

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// [`http`], panicking when the exchange fails.
pub(super) fn http_ok(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    http(port, method, target, headers, body)
        .unwrap_or_else(|e| panic!("{method} {target} to 127.0.0.1:{port}: {e}"))
}

/// One HTTP/1.1 request to `127.0.0.1:port` on a connection of its own
/// (`Connection: close`); the answer read to its end (`Content-Length`,
/// chunked, or until the connection closes).
pub fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpAnswer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_answer(&raw, method == "HEAD")
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Parses a whole HTTP/1.x answer.
fn parse_answer(raw: &[u8], bodiless: bool) -> std::io::Result<HttpAnswer> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("no complete answer head in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| invalid(format!("not an HTTP status line: {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let rest = &raw[end + 4..];
    let body = if bodiless || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
        if rest.len() < length {
            return Err(invalid(format!(
                "answer body cut at {} of {length} bytes",
                rest.len()
            )));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// The payload of a chunked body.
fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("chunked body cut in a size line".into()))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(invalid("chunked body cut in a chunk".into()));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// `/<bucket>/<key>`, percent-encoded (slashes kept).
pub(super) fn object_path(bucket: &str, key: &str) -> String {
    format!("/{}/{}", encode_key(bucket), encode_key(key))
}

/// `text` percent-encoded but for unreserved characters and `/`.
pub(super) fn encode_key(text: &str) -> String {
    encode(text, b"-_.~/")
}

/// `text` percent-encoded but for unreserved characters (a query value).
pub(super) fn encode_query(text: &str) -> String {
    encode(text, b"-_.~")
}

fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The text of every `<tag>…</tag>` element of `xml`, in order, with XML's
/// escapes decoded.
pub(super) fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let Some(end) = rest.find(&close) else { break };
        out.push(unescape_xml(&rest[..end]));
        rest = &rest[end + close.len()..];
    }
    out
}

fn unescape_xml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_by_length_chunks_and_close() {
        let by_length = parse_answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabcdef",
            false,
        )
        .unwrap();
        assert_eq!((by_length.status, by_length.body), (200, b"abc".to_vec()));
        assert_eq!(by_length.headers[1], ("x-a".to_owned(), "b".to_owned()));
        let chunked = parse_answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(chunked.body, b"abcde");
        let until_close = parse_answer(b"HTTP/1.0 404 Not Found\r\n\r\nnope", false).unwrap();
        assert_eq!(
            (until_close.status, until_close.body),
            (404, b"nope".to_vec())
        );
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", false).is_err());
        assert!(parse_answer(b"garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn keys_and_xml() {
        assert_eq!(encode_key("a b/c:d"), "a%20b/c%3Ad");
        assert_eq!(encode_query("a/b"), "a%2Fb");
        let xml =
            "<R><Contents><Key>a/&amp;b</Key></Contents><Contents><Key>c</Key></Contents></R>";
        assert_eq!(xml_values(xml, "Key"), vec!["a/&b", "c"]);
    }
}
