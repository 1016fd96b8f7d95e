//! Image references (`python:3.12-slim`, `ghcr.io/org/app:tag@sha256:…`) parsed exactly as Docker
//! reads them: github.com/distribution/reference's `ParseNormalizedNamed` (grammar from its
//! `regexp.go`, Docker Hub normalisation from `normalize.go`) followed by `TagNameOnly` (a bare
//! name gets the tag `latest`).
//!
//! A reference is always fully qualified once parsed: `ubuntu` is `docker.io/library/ubuntu:latest`.
//! [`Reference::familiar`] gives back the short form Docker prints.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::digest::{Digest, DigestError};

/// Docker Hub's canonical domain in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The legacy Docker Hub domain, normalised to [`DOCKER_HUB`].
pub const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// The host that actually serves Docker Hub's distribution API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The namespace of Docker Hub's official images.
const OFFICIAL_PREFIX: &str = "library/";
/// The tag a reference without tag or digest gets.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository path (without the registry) distribution accepts.
pub const REPOSITORY_MAX_LEN: usize = 255;

/// Why a string is not an image reference. Messages follow Docker's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format: {input:?}")]
    InvalidFormat { input: String },
    #[error("invalid reference format: repository name ({repository}) must be lowercase")]
    Uppercase { input: String, repository: String },
    #[error("invalid repository name ({input}), cannot specify 64-byte hexadecimal strings")]
    HexIdentifier { input: String },
    #[error(
        "invalid reference format: repository name must not be more than {REPOSITORY_MAX_LEN} characters ({input:?})"
    )]
    NameTooLong { input: String },
    #[error("invalid reference format: {input:?}: {source}")]
    InvalidDigest { input: String, source: DigestError },
    #[error("invalid tag format: {tag:?}")]
    InvalidTag { tag: String },
}

impl ReferenceError {
    /// The text that failed to parse (for [`ReferenceError::InvalidTag`], the tag).
    pub fn input(&self) -> &str {
        match self {
            ReferenceError::InvalidFormat { input }
            | ReferenceError::Uppercase { input, .. }
            | ReferenceError::HexIdentifier { input }
            | ReferenceError::NameTooLong { input }
            | ReferenceError::InvalidDigest { input, .. } => input,
            ReferenceError::InvalidTag { tag } => tag,
        }
    }
}

// The grammar of distribution/reference regexp.go. Go's `\w` is ASCII-only, so it is spelled out.
const ALPHANUMERIC: &str = r"[a-z0-9]+";
const SEPARATOR: &str = r"(?:[._]|__|[-]+)";
const DOMAIN_NAME_COMPONENT: &str = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const OPTIONAL_PORT: &str = r"(?::[0-9]+)?";
const TAG: &str = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
const DIGEST: &str = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9A-Fa-f]{32,}";
const IPV6_ADDRESS: &str = r"\[(?:[a-fA-F0-9:]+)\]";

fn domain_and_port() -> String {
    let domain_name = format!(r"{DOMAIN_NAME_COMPONENT}(?:\.{DOMAIN_NAME_COMPONENT})*");
    format!(r"(?:{domain_name}|{IPV6_ADDRESS}){OPTIONAL_PORT}")
}

fn remote_name() -> String {
    let path_component = format!(r"{ALPHANUMERIC}(?:{SEPARATOR}{ALPHANUMERIC})*");
    format!(r"{path_component}(?:/{path_component})*")
}

/// `^(name)(?::(tag))?(?:@(digest))?$`
static REFERENCE_RE: LazyLock<Regex> = LazyLock::new(|| {
    let name = format!(r"(?:{}/)?{}", domain_and_port(), remote_name());
    Regex::new(&format!(r"^({name})(?::({TAG}))?(?:@({DIGEST}))?$"))
        .expect("reference grammar is a valid regex")
});

/// `^(?:(domain)/)?(remote-name)$`
static ANCHORED_NAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^(?:({})/)?({})$",
        domain_and_port(),
        remote_name()
    ))
    .expect("name grammar is a valid regex")
});

static ANCHORED_TAG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{TAG}$")).expect("tag grammar is a valid regex"));

fn is_hex_identifier(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fully qualified image reference: registry, repository path, and a tag and/or a digest.
///
/// When both are present the digest decides what is pulled ([`Reference::manifest_reference`])
/// and the tag is kept for naming. A bare name gets the tag `latest`; a digest-only reference
/// has no tag.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses `s` as Docker does (`ParseNormalizedNamed` + `TagNameOnly`).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if is_hex_identifier(s) {
            return Err(ReferenceError::HexIdentifier {
                input: s.to_string(),
            });
        }
        let (domain, remainder) = split_docker_domain(s);
        let remote = remainder.split(':').next().unwrap_or_default();
        if remote.to_lowercase() != remote {
            return Err(ReferenceError::Uppercase {
                input: s.to_string(),
                repository: remote.to_string(),
            });
        }

        let qualified = format!("{domain}/{remainder}");
        let invalid = || ReferenceError::InvalidFormat {
            input: s.to_string(),
        };
        let Some(caps) = REFERENCE_RE.captures(&qualified) else {
            let lower = qualified.to_lowercase();
            if lower != qualified && REFERENCE_RE.is_match(&lower) {
                return Err(ReferenceError::Uppercase {
                    input: s.to_string(),
                    repository: remote.to_string(),
                });
            }
            return Err(invalid());
        };
        let name = caps.get(1).map_or("", |m| m.as_str());
        let name_caps = ANCHORED_NAME_RE.captures(name).ok_or_else(invalid)?;
        // distribution leaves the domain empty when the first component is not a valid host
        // (`foo_bar.com/x`); such a name cannot be pulled from anywhere, so kiln rejects it.
        let registry = name_caps.get(1).map(|m| m.as_str()).ok_or_else(invalid)?;
        let repository = name_caps.get(2).map_or("", |m| m.as_str());
        if repository.len() > REPOSITORY_MAX_LEN {
            return Err(ReferenceError::NameTooLong {
                input: s.to_string(),
            });
        }
        let tag = caps.get(2).map(|m| m.as_str().to_string());
        let digest = match caps.get(3) {
            Some(m) => Some(m.as_str().parse::<Digest>().map_err(|source| {
                ReferenceError::InvalidDigest {
                    input: s.to_string(),
                    source,
                }
            })?),
            None => None,
        };
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The registry as written in references, with Docker Hub as `docker.io`
    /// (`ghcr.io`, `localhost:5000`, `[::1]:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The `host[:port]` to contact for the distribution API: `registry-1.docker.io` for Docker
    /// Hub, the registry itself otherwise.
    pub fn api_host(&self) -> &str {
        if self.is_docker_hub() {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// The repository path inside the registry (`library/python`, `org/app`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Registry and repository without tag or digest (`docker.io/library/python`).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry for in `/v2/<repository>/manifests/<reference>`: the digest when
    /// there is one (it wins over a tag), else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same name with `tag`; a digest is kept (as distribution's `WithTag` does).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !ANCHORED_TAG_RE.is_match(tag) {
            return Err(ReferenceError::InvalidTag {
                tag: tag.to_string(),
            });
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            ..self.clone()
        })
    }

    /// The same name pinned to `digest`; a tag is kept for naming (as `WithDigest` does).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// Drops the tag when a digest pins the reference, as distribution's `ParseDockerRef` does
    /// (`busybox:latest@sha256:…` → `busybox@sha256:…`); a tag-only reference is unchanged.
    pub fn without_tag(&self) -> Reference {
        Reference {
            tag: if self.digest.is_some() {
                None
            } else {
                self.tag.clone()
            },
            ..self.clone()
        }
    }

    /// The short form Docker prints: Docker Hub's domain and `library/` dropped
    /// (`python:3.12-slim`, `user/app:1`, `ghcr.io/org/app:tag`).
    pub fn familiar(&self) -> String {
        let mut out = String::new();
        if self.is_docker_hub() {
            match self.repository.strip_prefix(OFFICIAL_PREFIX) {
                Some(rest) if !rest.contains('/') => out.push_str(rest),
                _ => out.push_str(&self.repository),
            }
        } else {
            out.push_str(&self.registry);
            out.push('/');
            out.push_str(&self.repository);
        }
        self.push_suffix(&mut out);
        out
    }

    fn push_suffix(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
    }

    /// The registry's host without the port, IPv6 brackets removed.
    pub fn registry_host(&self) -> &str {
        split_host_port(&self.registry).0
    }

    /// Whether the registry is on this machine (`localhost`, `127.0.0.0/8`, `::1`), where plain
    /// HTTP is allowed without configuration.
    pub fn is_loopback(&self) -> bool {
        let host = self.registry_host();
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        if let Ok(v4) = host.parse::<Ipv4Addr>() {
            return v4.is_loopback();
        }
        if let Ok(v6) = host.parse::<Ipv6Addr>() {
            return IpAddr::V6(v6).is_loopback();
        }
        false
    }
}

/// Splits `host[:port]` where host may be a bracketed IPv6 address.
fn split_host_port(registry: &str) -> (&str, Option<&str>) {
    if let Some(rest) = registry.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
        return (registry, None);
    }
    match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    }
}

/// distribution's `splitDockerDomain`: decides whether the first path component is a registry.
fn split_docker_domain(name: &str) -> (&str, String) {
    let Some((maybe_domain, maybe_remote)) = name.split_once('/') else {
        return (DOCKER_HUB, format!("{OFFICIAL_PREFIX}{name}"));
    };
    let (domain, remote) = if maybe_domain == "localhost" {
        (maybe_domain, maybe_remote)
    } else if maybe_domain == DOCKER_HUB_LEGACY {
        (DOCKER_HUB, maybe_remote)
    } else if maybe_domain.contains(['.', ':']) || maybe_domain.to_lowercase() != maybe_domain {
        (maybe_domain, maybe_remote)
    } else {
        (DOCKER_HUB, name)
    };
    if domain == DOCKER_HUB && !remote.contains('/') {
        (domain, format!("{OFFICIAL_PREFIX}{remote}"))
    } else {
        (domain, remote.to_string())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(s)
    }
}

/// The fully qualified form: `docker.io/library/python:3.12-slim`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.push_suffix(&mut out);
        f.write_str(&out)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Reference, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_F: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

    const SHA_D: &str = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn brief_examples() {
        let r = p("python:3.12-slim");
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("docker.io", "library/python", Some("3.12-slim"), None)
        );
        assert_eq!(r.to_string(), "docker.io/library/python:3.12-slim");
        assert_eq!(r.familiar(), "python:3.12-slim");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert!(!r.is_loopback());

        let r = p("ubuntu");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.to_string(), "docker.io/library/ubuntu:latest");
        assert_eq!(r.familiar(), "ubuntu:latest");

        let r = p("ghcr.io/org/app:tag");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("ghcr.io", "org/app", Some("tag"))
        );
        assert_eq!(r.api_host(), "ghcr.io");
        assert_eq!(r.familiar(), "ghcr.io/org/app:tag");

        for (s, registry, host) in [
            ("localhost:5000/x", "localhost:5000", "localhost"),
            ("localhost/x", "localhost", "localhost"),
            ("127.0.0.1:5000/x", "127.0.0.1:5000", "127.0.0.1"),
            ("127.1.2.3/x", "127.1.2.3", "127.1.2.3"),
            ("[::1]:5000/x", "[::1]:5000", "::1"),
            ("[::1]/x", "[::1]", "::1"),
        ] {
            let r = p(s);
            assert_eq!(
                (r.registry(), r.registry_host(), r.repository()),
                (registry, host, "x"),
                "{s}"
            );
            assert_eq!(r.api_host(), registry);
            assert!(r.is_loopback(), "{s}");
            assert_eq!(r.tag(), Some("latest"));
        }
        for s in [
            "localhost",
            "example.com:5000/x",
            "10.0.0.1/x",
            "[2001:db8::1]:5000/x",
        ] {
            assert!(!p(s).is_loopback(), "{s}");
        }

        let r = p(&format!("python@{SHA_D}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(|d| d.to_string()).as_deref(), Some(SHA_D));
        assert_eq!(r.manifest_reference(), SHA_D);
        assert_eq!(r.to_string(), format!("docker.io/library/python@{SHA_D}"));

        let r = p(&format!("python:3.12@{SHA_D}"));
        assert_eq!(r.tag(), Some("3.12"));
        assert_eq!(r.manifest_reference(), SHA_D);
        assert_eq!(r.familiar(), format!("python:3.12@{SHA_D}"));
        assert_eq!(
            r.without_tag().to_string(),
            format!("docker.io/library/python@{SHA_D}")
        );
        assert_eq!(p("python:3.12").manifest_reference(), "3.12");

        assert_eq!(p("index.docker.io/library/python").registry(), "docker.io");
        assert_eq!(p("docker.io/python"), p("docker.io/library/python"));
        assert_eq!(p("docker.io/python").repository(), "library/python");
        assert_eq!(
            p("index.docker.io/python").to_string(),
            "docker.io/library/python:latest"
        );
    }

    #[test]
    fn errors_name_the_input() {
        let e = Reference::parse("Python:3").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid reference format: repository name (library/Python) must be lowercase"
        );
        assert_eq!(e.input(), "Python:3");
        let e = Reference::parse("aa/asdf$$^/aa").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid reference format: "aa/asdf$$^/aa""#
        );
        assert!(matches!(
            Reference::parse(&format!("x@sha256:{}", "F".repeat(64))),
            Err(ReferenceError::InvalidDigest { .. })
        ));
        let e = Reference::parse("repo@sha256:ffffffffffffffffffffffffffffffffff").unwrap_err();
        assert!(matches!(e, ReferenceError::InvalidDigest { .. }), "{e}");
        assert!(e.to_string().contains("repo@sha256:ffff"), "{e}");
    }

    /// distribution reference_test.go `TestReferenceParse`, read through ParseNormalizedNamed:
    /// (input, registry, repository, tag, digest). Empty registry means Docker Hub.
    #[test]
    fn reference_test_go_valid() {
        let rep = "a/".repeat(127) + "a";
        let long_ok = format!("{rep}:tag-puts-this-over-max");
        let cases: Vec<Case> = vec![
            ("test_com", "docker.io", "library/test_com", Some("latest"), None),
            ("test.com:tag", "docker.io", "library/test.com", Some("tag"), None),
            ("test.com:5000", "docker.io", "library/test.com", Some("5000"), None),
            ("test.com/repo:tag", "test.com", "repo", Some("tag"), None),
            ("test:5000/repo", "test:5000", "repo", Some("latest"), None),
            ("test:5000/repo:tag", "test:5000", "repo", Some("tag"), None),
            (
                "test:5000/repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "test:5000",
                "repo",
                None,
                Some(SHA_F),
            ),
            (
                "test:5000/repo:tag@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "test:5000",
                "repo",
                Some("tag"),
                Some(SHA_F),
            ),
            ("lowercase:Uppercase", "docker.io", "library/lowercase", Some("Uppercase"), None),
            (&long_ok, "docker.io", &rep, Some("tag-puts-this-over-max"), None),
            ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", Some("latest"), None),
            (
                "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
                "sub-dom1.foo.com",
                "bar/baz/quux",
                Some("some-long-tag"),
                None,
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com",
                "b.gcr.io",
                "test.example.com/my-app",
                Some("test.example.com"),
                None,
            ),
            ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", Some("xn--n3h.com"), None),
            ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", Some("8080"), None),
            ("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", Some("8080"), None),
            ("192.168.1.1", "docker.io", "library/192.168.1.1", Some("latest"), None),
            ("192.168.1.1:tag", "docker.io", "library/192.168.1.1", Some("tag"), None),
            ("192.168.1.1:5000", "docker.io", "library/192.168.1.1", Some("5000"), None),
            ("192.168.1.1/repo", "192.168.1.1", "repo", Some("latest"), None),
            ("192.168.1.1:5000/repo", "192.168.1.1:5000", "repo", Some("latest"), None),
            ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", Some("5050"), None),
            ("[2001:db8::1]/repo", "[2001:db8::1]", "repo", Some("latest"), None),
            ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", Some("tag"), None),
            ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000", "repo", Some("latest"), None),
            ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000", "repo", Some("tag"), None),
            (
                "[2001:db8::1]:5000/repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "[2001:db8::1]:5000",
                "repo",
                None,
                Some(SHA_F),
            ),
            (
                "[2001:db8::1]:5000/repo:tag@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                "[2001:db8::1]:5000",
                "repo",
                Some("tag"),
                Some(SHA_F),
            ),
            ("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", Some("latest"), None),
            ("[::1]:5000/repo", "[::1]:5000", "repo", Some("latest"), None),
        ];
        for (input, registry, repository, tag, digest) in cases {
            let r = p(input);
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repository, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(
                r.digest().map(|d| d.to_string()).as_deref(),
                digest,
                "{input}"
            );
            // Display re-parses to the same reference.
            assert_eq!(p(&r.to_string()), r, "{input}");
            assert_eq!(p(&r.familiar()), r, "{input}");
        }
    }

    /// Invalid cases of reference_test.go, normalize_test.go `TestValidateReferenceName` and
    /// `TestValidateRemoteName`.
    #[test]
    fn distribution_invalid() {
        let too_long = "a/".repeat(128) + "a:tag";
        let long_tag = format!("python:{}", "t".repeat(129));
        let long_namespace = "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255/docker";
        let cases: Vec<&str> = vec![
            "",
            ":justtag",
            "@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "repo@sha256:ffffffffffffffffffffffffffffffffff",
            "validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "Uppercase:tag",
            "test:5000/Uppercase/lowercase:tag",
            &too_long,
            "aa/asdf$$^/aa",
            "[2001:db8::1]",
            "[2001:db8::1]:5000",
            "[2001:db8::1]:tag",
            "[fe80::1%eth0]:5000/repo",
            "[fe80::1%@invalidzone]:5000/repo",
            "https://github.com/docker/docker",
            "docker/Docker",
            "-docker",
            "-docker/docker",
            "-docker.io/docker/docker",
            "docker///docker",
            "docker.io/docker/Docker",
            "docker.io/docker///docker",
            "[fc00::1]",
            "[fc00::1]:5000",
            "fc00::1:5000/debian",
            "[fe80::1%eth0]:5000/debian",
            "[2001:db8:3:4::192.0.2.33]:5000/debian",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "docker-/docker",
            "-docker-/docker",
            "____/____",
            "_docker/_docker",
            "dock..er/docker",
            "dock_.er/docker",
            "dock-.er/docker",
            "docker/",
            long_namespace,
            "python:",
            "python@",
            "python:tag:tag",
            "python:-tag",
            &long_tag,
            // distribution parses this with an empty domain; kiln cannot pull it, so rejects it.
            "foo_bar.com/x",
        ];
        for input in cases {
            assert!(
                Reference::parse(input).is_err(),
                "{input:?} should be invalid"
            );
        }
        assert!(matches!(
            Reference::parse(&too_long),
            Err(ReferenceError::NameTooLong { .. })
        ));
        assert!(matches!(
            Reference::parse("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"),
            Err(ReferenceError::HexIdentifier { .. })
        ));
        assert!(matches!(
            Reference::parse("docker/Docker"),
            Err(ReferenceError::Uppercase { repository, .. }) if repository == "docker/Docker"
        ));
        assert!(matches!(
            Reference::parse("Uppercase:tag"),
            Err(ReferenceError::Uppercase { .. })
        ));
        // sha512 is well formed for distribution, but kiln only handles sha256.
        assert!(matches!(
            Reference::parse(&format!("x@sha512:{}", "f".repeat(128))),
            Err(ReferenceError::InvalidDigest {
                source: DigestError::UnsupportedAlgorithm { .. },
                ..
            })
        ));
    }

    /// normalize_test.go `TestValidateReferenceName` / `TestValidateRemoteName` valid names.
    #[test]
    fn normalize_test_go_valid_names() {
        for input in [
            "docker/docker",
            "library/debian",
            "debian",
            "docker.io/docker/docker",
            "docker.io/library/debian",
            "docker.io/debian",
            "index.docker.io/docker/docker",
            "index.docker.io/library/debian",
            "index.docker.io/debian",
            "127.0.0.1:5000/docker/docker",
            "127.0.0.1:5000/library/debian",
            "127.0.0.1:5000/debian",
            "192.168.0.1",
            "192.168.0.1:80",
            "192.168.0.1:8/debian",
            "192.168.0.2:25000/debian",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "[fc00::1]:5000/docker",
            "[fc00::1]:5000/docker/docker",
            "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
            "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "Docker/docker",
            "DOCKER/docker",
            "docker-rules/docker",
            "docker---rules/docker",
            "doc/docker",
            "d/docker",
            "jess/t",
            "dock__er/docker",
        ] {
            p(input);
        }
        assert_eq!(p("Docker/docker").registry(), "Docker");
    }

    /// normalize_test.go `TestParseRepositoryInfo`: (repository, familiar, full, ambiguous, registry).
    #[test]
    fn parse_repository_info() {
        let cases = [
            (
                "fooo/bar",
                "fooo/bar",
                "docker.io/fooo/bar",
                "index.docker.io/fooo/bar",
                "docker.io",
            ),
            (
                "library/ubuntu",
                "ubuntu",
                "docker.io/library/ubuntu",
                "library/ubuntu",
                "docker.io",
            ),
            (
                "nonlibrary/ubuntu",
                "nonlibrary/ubuntu",
                "docker.io/nonlibrary/ubuntu",
                "",
                "docker.io",
            ),
            (
                "other/library",
                "other/library",
                "docker.io/other/library",
                "",
                "docker.io",
            ),
            (
                "private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "privatebase",
                "127.0.0.1:8000/privatebase",
                "127.0.0.1:8000/privatebase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "private/moonbase",
                "example.com/private/moonbase",
                "example.com/private/moonbase",
                "",
                "example.com",
            ),
            (
                "privatebase",
                "example.com/privatebase",
                "example.com/privatebase",
                "",
                "example.com",
            ),
            (
                "private/moonbase",
                "example.com:8000/private/moonbase",
                "example.com:8000/private/moonbase",
                "",
                "example.com:8000",
            ),
            (
                "privatebasee",
                "example.com:8000/privatebasee",
                "example.com:8000/privatebasee",
                "",
                "example.com:8000",
            ),
            (
                "library/ubuntu-12.04-base",
                "ubuntu-12.04-base",
                "docker.io/library/ubuntu-12.04-base",
                "index.docker.io/library/ubuntu-12.04-base",
                "docker.io",
            ),
            (
                "library/foo",
                "foo",
                "docker.io/library/foo",
                "docker.io/foo",
                "docker.io",
            ),
            (
                "library/foo/bar",
                "library/foo/bar",
                "docker.io/library/foo/bar",
                "",
                "docker.io",
            ),
            (
                "store/foo/bar",
                "store/foo/bar",
                "docker.io/store/foo/bar",
                "",
                "docker.io",
            ),
            ("bar", "Foo/bar", "Foo/bar", "", "Foo"),
            ("bar", "FOO/bar", "FOO/bar", "", "FOO"),
        ];
        for (repository, familiar, full, ambiguous, registry) in cases {
            let mut inputs = vec![familiar, full];
            if !ambiguous.is_empty() {
                inputs.push(ambiguous);
            }
            for input in inputs {
                let r = p(input);
                assert_eq!(r.repository(), repository, "{input}");
                assert_eq!(r.registry(), registry, "{input}");
                assert_eq!(r.name(), full, "{input}");
                assert_eq!(r.familiar(), format!("{familiar}:latest"), "{input}");
                assert_eq!(r.to_string(), format!("{full}:latest"), "{input}");
            }
        }
    }

    /// normalize_test.go `TestNormalizedSplitHostname` and `TestParseAnyReference` (named cases).
    #[test]
    fn normalized_split_and_equivalents() {
        for (input, registry, repository) in [
            ("test.com/foo", "test.com", "foo"),
            ("test_com/foo", "docker.io", "test_com/foo"),
            ("docker/migrator", "docker.io", "docker/migrator"),
            ("test.com:8080/foo", "test.com:8080", "foo"),
            ("test-com:8080/foo", "test-com:8080", "foo"),
            ("foo", "docker.io", "library/foo"),
            ("xn--n3h.com/foo", "xn--n3h.com", "foo"),
            ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
            ("docker.io/foo", "docker.io", "library/foo"),
            ("docker.io/library/foo", "docker.io", "library/foo"),
            ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
        ] {
            let r = p(input);
            assert_eq!(
                (r.registry(), r.repository()),
                (registry, repository),
                "{input}"
            );
        }
        for (input, equivalent) in [
            ("redis", "docker.io/library/redis:latest"),
            ("redis:latest", "docker.io/library/redis:latest"),
            ("docker.io/library/redis:latest", "docker.io/library/redis:latest"),
            (&format!("redis@{SHA_D}"), &format!("docker.io/library/redis@{SHA_D}")),
            (
                &format!("docker.io/library/redis@{SHA_D}"),
                &format!("docker.io/library/redis@{SHA_D}"),
            ),
            ("dmcgowan/myapp", "docker.io/dmcgowan/myapp:latest"),
            ("dmcgowan/myapp:latest", "docker.io/dmcgowan/myapp:latest"),
            ("docker.io/mcgowan/myapp:latest", "docker.io/mcgowan/myapp:latest"),
            (&format!("dmcgowan/myapp@{SHA_D}"), &format!("docker.io/dmcgowan/myapp@{SHA_D}")),
            (
                "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9",
                "docker.io/library/dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9:latest",
            ),
            ("dbcc1", "docker.io/library/dbcc1:latest"),
        ] {
            assert_eq!(p(input).to_string(), equivalent, "{input}");
        }
    }

    #[test]
    fn tag_and_digest_together() {
        // normalize_test.go TestParseReferenceWithTagAndDigest
        let short = "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";
        let r = p(short);
        assert_eq!(r.to_string(), format!("docker.io/library/{short}"));
        assert_eq!(r.familiar(), short);
        assert!(r.tag().is_some() && r.digest().is_some());
    }

    #[test]
    fn with_tag_and_digest() {
        let r = p("test.com:8000/foo");
        assert_eq!(
            r.with_tag("TAG5").unwrap().to_string(),
            "test.com:8000/foo:TAG5"
        );
        assert!(matches!(
            r.with_tag("-foo"),
            Err(ReferenceError::InvalidTag { .. })
        ));
        assert!(r.with_tag("").is_err());
        assert!(r.with_tag(&"a".repeat(129)).is_err());
        assert!(r.with_tag(&"a".repeat(128)).is_ok());
        let d: Digest = SHA_D.parse().unwrap();
        let pinned = r.with_digest(d.clone());
        assert_eq!(
            pinned.to_string(),
            format!("test.com:8000/foo:latest@{SHA_D}")
        );
        assert_eq!(pinned.with_tag("v2").unwrap().digest(), Some(&d));
        assert_eq!(
            p(&format!("foo@{SHA_D}"))
                .with_tag("tag2")
                .unwrap()
                .familiar(),
            format!("foo:tag2@{SHA_D}")
        );
    }

    #[test]
    fn serde_as_string() {
        let r = p("python:3.12-slim");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#""docker.io/library/python:3.12-slim""#);
        assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), r);
        assert!(serde_json::from_str::<Reference>(r#""Bad:x""#).is_err());
    }
}
