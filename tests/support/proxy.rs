//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of a plain-HTTP registry. One request
//! per connection (it answers `Connection: close`); request bodies (`Content-Length` or
//! chunked) are forwarded; every request is logged; rules fire in order.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::token::read_head;

#[derive(Debug, Clone)]
pub enum Action {
    /// Answer with this status and headers without asking the registry.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// Pass the registry's headers and only the first `n` body bytes, then close.
    CutAfter(usize),
    /// Pass the response with one body byte flipped (same length).
    Corrupt,
    /// Pass the response with the body byte at this offset flipped.
    FlipByte(usize),
    /// Forward the request head and only the first `n` bytes of its body to the registry,
    /// then close both connections without answering: an upload cut in the middle.
    CutRequestAfter(usize),
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Applies to requests whose path contains this (empty: every request).
    pub path_contains: String,
    /// Applies only to this method, if set.
    pub method: Option<String>,
    /// How many more times it fires.
    pub times: usize,
    pub action: Action,
}

/// A request as the proxy saw it (header names lowercased).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Whether a rule answered it.
    pub faulted: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
}

pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stop2) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || {
                            let _ = handle(stream, upstream_port, &st);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy { port, state, stop }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn add_rule(&self, path_contains: &str, times: usize, action: Action) {
        self.state.lock().unwrap().rules.push(Rule {
            path_contains: path_contains.to_string(),
            method: None,
            times,
            action,
        });
    }

    /// A rule for requests with `method` only.
    pub fn add_method_rule(&self, method: &str, path_contains: &str, times: usize, action: Action) {
        self.state.lock().unwrap().rules.push(Rule {
            path_contains: path_contains.to_string(),
            method: Some(method.to_string()),
            times,
            action,
        });
    }

    /// Forgets the requests seen so far.
    pub fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn handle(mut client: TcpStream, upstream_port: u16, state: &Mutex<State>) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    // A TLS ClientHello (a client probing HTTPS first) is refused at once, so the client
    // falls back to plain HTTP instead of waiting for a timeout.
    let mut first = [0u8; 1];
    if client.peek(&mut first)? == 0 || first[0] == 0x16 {
        return Ok(());
    }
    let head = read_head(&mut client)?;
    if head.is_empty() {
        return Ok(());
    }
    let mut lines = head.trim_end().split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let action = {
        let mut st = state.lock().unwrap();
        let action = st
            .rules
            .iter_mut()
            .find(|r| {
                r.times > 0
                    && path.contains(&r.path_contains)
                    && r.method.as_ref().is_none_or(|m| *m == method)
            })
            .map(|r| {
                r.times -= 1;
                r.action.clone()
            });
        st.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            faulted: action.is_some(),
        });
        action
    };
    let body = read_body(&mut client, &headers)?;
    if let Some(Action::Respond { status, headers }) = &action {
        let body =
            format!("{{\"errors\":[{{\"code\":\"INJECTED\",\"message\":\"injected {status}\"}}]}}");
        let mut out = format!("HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\n");
        for (n, v) in headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        client.write_all(out.as_bytes())?;
        return client.flush();
    }
    // Forward with `Connection: close` and read the whole answer.
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    let mut req = format!("{request_line}\r\n");
    for (n, v) in &headers {
        if n != "connection" {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    req.push_str("connection: close\r\n\r\n");
    upstream.write_all(req.as_bytes())?;
    if let Some(Action::CutRequestAfter(n)) = action {
        upstream.write_all(&body[..n.min(body.len())])?;
        upstream.flush()?;
        // Give the registry the partial body before the connection goes away.
        std::thread::sleep(Duration::from_millis(200));
        let _ = upstream.shutdown(std::net::Shutdown::Both);
        let _ = client.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    upstream.write_all(&body)?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(response.len());
    let (resp_head, body) = response.split_at(split);
    let resp_head = String::from_utf8_lossy(resp_head);
    let mut new_head = String::new();
    for line in resp_head.trim_end().split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            new_head.push_str(line);
            new_head.push_str("\r\n");
        }
    }
    new_head.push_str("Connection: close\r\n\r\n");
    let mut body = body.to_vec();
    match action {
        Some(Action::CutAfter(n)) => body.truncate(n),
        Some(Action::Corrupt) if !body.is_empty() => {
            let i = body.len() / 2;
            body[i] ^= 0x01;
        }
        Some(Action::FlipByte(i)) if i < body.len() => body[i] ^= 0x01,
        _ => {}
    }
    client.write_all(new_head.as_bytes())?;
    client.write_all(&body)?;
    client.flush()?;
    let _ = client.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// The request body as it came (`Content-Length` bytes, or chunked framing up to and including
/// the last chunk); empty when there is none.
fn read_body(client: &mut TcpStream, headers: &[(String, String)]) -> std::io::Result<Vec<u8>> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0u8; len];
        client.read_exact(&mut body)?;
        return Ok(body);
    }
    if !header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Ok(Vec::new());
    }
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            let mut b = [0u8; 1];
            if client.read(&mut b)? == 0 {
                return Ok(raw);
            }
            line.push(b[0]);
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line);
        let size_text = text.trim().split(';').next().unwrap_or("0").to_string();
        let size = usize::from_str_radix(&size_text, 16).unwrap_or(0);
        let mut chunk = vec![0u8; size + 2];
        client.read_exact(&mut chunk)?;
        raw.extend_from_slice(&chunk);
        if size == 0 {
            return Ok(raw);
        }
    }
}
