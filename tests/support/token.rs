//! A tiny distribution token issuer: checks Basic credentials (USER / PASSWORD), lets anyone
//! pull repositories under `public/`, and signs RS256 JWTs by shelling out to `openssl`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::registry::{PASSWORD, USER};
use super::{require_tool, run};

pub const SERVICE: &str = "test-registry";
pub const ISSUER: &str = "kiln-test-issuer";
/// The identity (refresh) token the issuer accepts for USER in the OAuth2 POST flow.
pub const REFRESH_TOKEN: &str = "kiln-test-refresh-token";

/// One request the issuer saw.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub scopes: Vec<String>,
    pub account: Option<String>,
    pub status: u16,
}

pub struct TokenIssuer {
    pub port: u16,
    pub cert: PathBuf,
    key: PathBuf,
    pub requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl TokenIssuer {
    pub fn start() -> TokenIssuer {
        let openssl = require_tool("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("token.key");
        let cert = dir.path().join("token.pem");
        run(Command::new(&openssl)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=kiln-test-issuer"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = run(Command::new(&openssl)
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert))
        .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, stop2, key2) = (requests.clone(), stop.clone(), key.clone());
        let counter = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (reqs, key, x5c, counter) =
                            (reqs.clone(), key2.clone(), x5c.clone(), counter.clone());
                        std::thread::spawn(move || {
                            let _ = serve(stream, &reqs, &key, &x5c, &counter);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TokenIssuer {
            port,
            cert,
            key,
            requests,
            stop,
            _dir: dir,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    mut stream: TcpStream,
    log: &Mutex<Vec<TokenRequest>>,
    key: &Path,
    x5c: &str,
    counter: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = read_head(&mut stream)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut authorization = None;
    let mut content_length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_string()),
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    // Parameters come in the query (GET) or a form body (POST refresh-token grants).
    let mut params = target
        .split_once('?')
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    if method == "POST" && content_length > 0 {
        let mut body = vec![0u8; content_length];
        stream.read_exact(&mut body)?;
        params = String::from_utf8_lossy(&body).into_owned();
    }
    let mut scopes = Vec::new();
    let mut refresh_token = None;
    for pair in params.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "scope" => scopes.push(percent_decode(v)),
            "refresh_token" => refresh_token = Some(percent_decode(v)),
            _ => {}
        }
    }
    let mut account = None;
    let mut authenticated = false;
    let oauth = method == "POST";
    if let Some(t) = &refresh_token {
        if t != REFRESH_TOKEN {
            log.lock().unwrap().push(TokenRequest {
                scopes,
                account,
                status: 401,
            });
            return respond(
                &mut stream,
                "401 Unauthorized",
                r#"{"error":"invalid_grant"}"#,
            );
        }
        account = Some(USER.to_string());
        authenticated = true;
    }
    if let Some(b) = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .unwrap_or_default();
        let (u, p) = decoded.split_once(':').unwrap_or(("", ""));
        account = Some(u.to_string());
        if u != USER || p != PASSWORD {
            log.lock().unwrap().push(TokenRequest {
                scopes,
                account,
                status: 401,
            });
            let body = r#"{"details":"invalid credentials"}"#;
            return respond(&mut stream, "401 Unauthorized", body);
        }
        authenticated = true;
    }
    let mut access = Vec::new();
    for scope in &scopes {
        // repository:<name>:<actions>; the name may not contain ':' here.
        let mut it = scope.splitn(3, ':');
        let (Some(kind), Some(name), Some(actions)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if kind != "repository" {
            continue;
        }
        let granted: Vec<&str> = actions
            .split(',')
            .filter(|a| match *a {
                "pull" => authenticated || name.starts_with("public/"),
                "push" => authenticated,
                _ => false,
            })
            .collect();
        if !granted.is_empty() {
            access
                .push(serde_json::json!({"type": "repository", "name": name, "actions": granted}));
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let n = counter.fetch_add(1, Ordering::SeqCst);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": account.clone().unwrap_or_default(),
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("kiln-test-{now}-{n}"),
        "access": access,
    });
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let signing_input = format!("{}.{}", b64(&header), b64(&claims));
    let signature = sign(key, signing_input.as_bytes());
    let token = format!(
        "{signing_input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
    );
    log.lock().unwrap().push(TokenRequest {
        scopes,
        account,
        status: 200,
    });
    // The OAuth2 POST flow answers `access_token`; the GET flow `token`.
    let body = if oauth {
        serde_json::json!({"access_token": token, "expires_in": 300}).to_string()
    } else {
        serde_json::json!({"token": token, "expires_in": 300}).to_string()
    };
    respond(&mut stream, "200 OK", &body)
}

fn sign(key: &Path, input: &[u8]) -> Vec<u8> {
    use std::process::Stdio;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn openssl dgst");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign failed");
    out.stdout
}

pub(crate) fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
