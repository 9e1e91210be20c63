//! What an anonymous client or an unlucky operator can do to a running gateway, and what they
//! must not be able to do: pin its descriptors with idle connections, keep resources that never
//! connect, starve new sessions of transcoder slots, hide kernel drops. Each test runs the real
//! `wisp serve` on 127.0.0.1 and asserts what a user would notice (answers, statuses, metrics,
//! log lines).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
mod harness;

use harness::Wisp;

/// The value of a metric line `name value` (or `name{labels} value`) in `/metrics`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}

async fn get(url: &str, timeout: Duration) -> Result<(u16, String, String), String> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, ctype, body))
}

fn http_addr(wisp: &Wisp) -> String {
    wisp.base.trim_start_matches("http://").to_string()
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A response (a 408, say) before the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_pin_the_gateway_under_a_small_descriptor_limit() {
    // 256 descriptors, as a `ulimit -n 256` leaves a process: 300 silent connections are
    // more than the gateway can hold open.
    let wisp = Wisp::start_limited(
        "idle-conns",
        "[limits]\nhttp_header_timeout = 3\nhttp_body_timeout = 2\n",
        &common::workspace_bin("wisp-transcoder"),
        Some(256),
    );
    let addr = http_addr(&wisp);
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        // The start of a request, and nothing more (a slow or dead client).
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        idle.push(s);
    }
    // The gateway still answers, at once, with the idle connections open.
    let started = Instant::now();
    let health = get(&format!("{}/healthz", wisp.base), Duration::from_secs(5)).await;
    assert!(
        matches!(&health, Ok((200, _, _))),
        "/healthz with 300 idle connections: {health:?} after {:?}\n{}",
        started.elapsed(),
        wisp.log()
    );
    // Every idle connection is closed by the gateway within its header timeout (3 s), either
    // to make room for a newer one or when its time is up.
    let closing = Instant::now();
    let mut held = 0;
    for s in &mut idle {
        let left = Duration::from_secs(6).saturating_sub(closing.elapsed());
        if !closed_by_server(s, left).await {
            held += 1;
        }
    }
    assert_eq!(held, 0, "connections still open after 6 s\n{}", wisp.log());
    let (_, _, text) = get(&format!("{}/metrics", wisp.base), Duration::from_secs(5))
        .await
        .unwrap();
    let evicted = metric(&text, "wisp_http_connections_evicted_total").unwrap();
    let timed_out = metric(&text, "wisp_http_connections_timed_out_total").unwrap();
    assert!(
        evicted + timed_out >= 300.0,
        "evicted {evicted} + timed out {timed_out}"
    );
    assert!(
        metric(&text, "wisp_http_connections").unwrap() <= 2.0,
        "only this scrape's connection is open\n{text}"
    );
    let log = wisp.log();
    assert!(
        log.contains("file descriptors:"),
        "the descriptor limits are logged\n{log}"
    );
    let lines = log
        .lines()
        .filter(|l| l.contains("HTTP connections closed by the gateway"))
        .count();
    assert!(
        (1..=10).contains(&lines),
        "closing connections is logged, rate-limited: {lines} lines\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_content_length_gets_408_not_an_open_wait() {
    let wisp = Wisp::start("short-body", "[limits]\nhttp_body_timeout = 2\n");
    let t = wisp.token("demo", "view");
    let mut s = TcpStream::connect(http_addr(&wisp)).await.unwrap();
    let head = format!(
        "POST /whep/demo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
         Content-Type: application/sdp\r\nContent-Length: 1000\r\n\r\nv=0\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut resp = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(read.is_ok(), "no answer within 6 s: {text:?}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "the body had its 2 s: {:?}",
        started.elapsed()
    );
}
