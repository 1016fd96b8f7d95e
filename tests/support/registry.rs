//! `docker-registry serve` on 127.0.0.1:<free port>, killed on drop.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::registry::{Credential, EndpointConfig, RegistryClient, RetryPolicy};

use super::token::TokenIssuer;
use super::{free_port, require_tool, run};

pub const USER: &str = "kiln";
pub const PASSWORD: &str = "s3cret-Pa55";

/// A CA and a server certificate for 127.0.0.1 signed by it.
pub struct TestTls {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestTls {
    pub fn generate(dir: &Path) -> TestTls {
        let openssl = require_tool("openssl", "openssl");
        let ca_key = dir.join("ca.key");
        let ca_cert = dir.join("ca.pem");
        let server_key = dir.join("server.key");
        let csr = dir.join("server.csr");
        let server_cert = dir.join("server.pem");
        let ext = dir.join("server.ext");
        run(Command::new(&openssl)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=kiln test CA"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_cert));
        run(Command::new(&openssl)
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&server_key)
            .arg("-out")
            .arg(&csr));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new(&openssl)
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca_cert)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&server_cert));
        TestTls {
            ca_cert,
            server_cert,
            server_key,
        }
    }
}

pub enum Setup<'a> {
    Anonymous,
    /// htpasswd with one bcrypt entry for USER / PASSWORD.
    Htpasswd,
    Token(&'a TokenIssuer),
    Tls(&'a TestTls),
}

pub struct TestRegistry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub tls: bool,
    child: Option<Child>,
}

impl TestRegistry {
    pub fn start(setup: Setup<'_>) -> TestRegistry {
        let binary = require_tool("/usr/bin/docker-registry", "docker-registry");
        let mut dir = tempfile::tempdir().unwrap();
        let mut extra = String::new();
        let mut tls = false;
        match &setup {
            Setup::Anonymous => {}
            Setup::Htpasswd => {
                let htpasswd = require_tool("htpasswd", "apache2-utils");
                let out = run(Command::new(htpasswd).args(["-Bbn", USER, PASSWORD]));
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, out.stdout).unwrap();
                extra.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test-realm\n    path: {}\n",
                    path.display()
                ));
            }
            Setup::Token(issuer) => {
                extra.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    issuer.realm(),
                    super::token::SERVICE,
                    super::token::ISSUER,
                    issuer.cert.display()
                ));
            }
            Setup::Tls(t) => {
                tls = true;
                extra.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    t.server_cert.display(),
                    t.server_key.display()
                ));
            }
        }
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let http_extra = if tls { extra.as_str() } else { "" };
            let auth_extra = if tls { "" } else { extra.as_str() };
            let config = format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test-secret\n{http_extra}{auth_extra}",
                dir.path().join("data").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, &config).unwrap();
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(&binary)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let mut reg = TestRegistry {
                dir,
                port,
                tls,
                child: Some(child),
            };
            if reg.wait_ready(Duration::from_secs(20)) {
                return reg;
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            reg.stop();
            dir = reg.into_dir();
        }
        panic!("docker-registry did not come up; its log:\n{last_log}");
    }

    fn into_dir(mut self) -> tempfile::TempDir {
        self.stop();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Waits until `/v2/` answers (any HTTP status) or, for TLS, the port accepts connections.
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false; // exited: port taken or bad config
                }
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                if self.tls {
                    return true;
                }
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// host:port, as used in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Kills the registry (also done on drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An endpoint for this registry with a fast retry policy.
    pub fn endpoint(&self, credential: Option<Credential>) -> EndpointConfig {
        endpoint_for(&self.host(), !self.tls, credential)
    }

    pub fn client(&self, credential: Option<Credential>) -> RegistryClient {
        RegistryClient::new(self.endpoint(credential)).expect("client")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn endpoint_for(
    host: &str,
    plain_http: bool,
    credential: Option<Credential>,
) -> EndpointConfig {
    EndpointConfig {
        name: host.to_string(),
        host: host.to_string(),
        plain_http,
        allow_http_fallback: false,
        ca_file: None,
        credential,
        retry: fast_retry(),
    }
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}

pub fn basic(user: &str, password: &str) -> Credential {
    Credential::Basic {
        username: user.to_string(),
        password: password.to_string(),
    }
}
