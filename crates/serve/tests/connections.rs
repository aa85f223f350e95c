//! The limits on connections, over raw TCP so that the test controls every byte: a request head that does not
//! arrive in time closes its connection (half a head, nothing at all, or nothing after a kept-alive answer), a
//! body that does not arrive in time is answered 408 and its connection closed, and connections beyond the
//! limit are not served until one closes.

use candle_core::DType;
use serde_json::Value;
use serve::openai::OpenAiState;
use serve::{Limits, Server};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Serves `server` within `limits` on an ephemeral loopback port from a background thread; returns its address.
fn start(server: Server, limits: Limits) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || server.with_limits(limits).serve_blocking(listener, false).unwrap());
    addr
}

/// Reads until the server closes the connection or `within` passes; returns what was read and, if it closed,
/// when (from `since`).
fn read_until_closed(s: &mut TcpStream, since: Instant, within: Duration) -> (String, Option<Duration>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(since.elapsed());
        if left.is_zero() {
            return (String::from_utf8_lossy(&out).into_owned(), None);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), Some(since.elapsed())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (String::from_utf8_lossy(&out).into_owned(), None)
            }
            // A reset is a close too.
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), Some(since.elapsed())),
        }
    }
}

const GET: &str = "GET /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

#[test]
fn a_connection_that_does_not_send_its_head_in_time_is_closed() {
    let limits = Limits { header_timeout: Duration::from_secs(1), ..Limits::default() };
    let addr = start(Server::new(), limits);
    let cases = [
        ("half a head", "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "),
        ("nothing", ""),
        // Answered, kept alive, then idle: the next head is just as late.
        ("nothing after an answer", GET),
    ];
    for (what, sent) in cases {
        let since = Instant::now();
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(sent.as_bytes()).unwrap();
        let (text, closed) = read_until_closed(&mut s, since, Duration::from_secs(10));
        let closed = closed.unwrap_or_else(|| panic!("{what}: the connection is still open after 10 s"));
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_secs(5),
            "{what}: closed after {closed:?}"
        );
        if sent == GET {
            assert!(text.starts_with("HTTP/1.1 404"), "{what}: {text}");
        }
    }
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_answered_408_and_its_connection_closed() {
    let model = lm::testing::tiny_model("llama", 1, DType::F32).unwrap();
    let app = Server::new().with_openai(Arc::new(OpenAiState::new(model, "tiny")));
    let limits = Limits { body_timeout: Duration::from_secs(1), ..Limits::default() };
    let addr = start(app, limits);
    let since = Instant::now();
    let mut s = TcpStream::connect(&addr).unwrap();
    // Ten bytes of a hundred promised, then nothing.
    let head = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"model\": ";
    s.write_all(head.as_bytes()).unwrap();
    let (text, closed) = read_until_closed(&mut s, since, Duration::from_secs(10));
    let closed = closed.expect("the connection is still open after 10 s");
    assert!(closed >= Duration::from_millis(900) && closed < Duration::from_secs(5), "closed after {closed:?}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // In OpenAI's format under /v1.
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");

    // A body that comes in pieces, but in time, is read as usual.
    let body = r#"{"model": "tiny", "prompt": "Hi", "max_tokens": 2}"#;
    let since = Instant::now();
    let mut s = TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    for piece in body.as_bytes().chunks(10) {
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(piece).unwrap();
    }
    let (text, closed) = read_until_closed(&mut s, since, Duration::from_secs(60));
    assert!(closed.is_some() && text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn connections_beyond_the_limit_are_not_served_until_one_closes() {
    let limits = Limits { max_connections: 2, ..Limits::default() };
    let addr = start(Server::new(), limits);
    let answer = |s: &mut TcpStream, wait: Duration| -> std::io::Result<String> {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    // Two connections, each answered and kept alive.
    let mut open: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(GET.as_bytes()).unwrap();
            let text = answer(&mut s, Duration::from_secs(10)).unwrap();
            assert!(text.starts_with("HTTP/1.1 404"), "{text}");
            s
        })
        .collect();
    // A third gets through the kernel's backlog, but its request is not read.
    let mut third = TcpStream::connect(&addr).unwrap();
    third.write_all(GET.as_bytes()).unwrap();
    match answer(&mut third, Duration::from_secs(1)) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a third connection was served beyond the limit of two: {other:?}"),
    }
    // One closes: the third is taken in and answered.
    drop(open.pop());
    let text = answer(&mut third, Duration::from_secs(10)).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    // The one still open is still served.
    let kept = &mut open[0];
    kept.write_all(GET.as_bytes()).unwrap();
    assert!(answer(kept, Duration::from_secs(10)).unwrap().starts_with("HTTP/1.1 404"));
}
