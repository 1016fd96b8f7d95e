//! Whether a string is a valid image reference, as distribution/reference's
//! `ParseNormalizedNamed` decides it (for InvalidDefaultArgInFrom).

use regex::Regex;
use std::sync::OnceLock;

fn reference_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let alnum = "[a-z0-9]+";
        let sep = "(?:[._]|__|[-]+)";
        let path_component = format!("{alnum}(?:{sep}{alnum})*");
        let domain_component = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let domain_name = format!(r"{domain_component}(?:\.{domain_component})*");
        let ipv6 = r"\[(?:[a-fA-F0-9:]+)\]";
        let host = format!("(?:{domain_name}|{ipv6})");
        let domain_and_port = format!("{host}(?::[0-9]+)?");
        let name = format!("(?:{domain_and_port}/)?{path_component}(?:/{path_component})*");
        let tag = r"[\w][\w.-]{0,127}";
        let digest = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
        // The pattern is a constant, so building it cannot fail.
        Regex::new(&format!("^({name})(?::({tag}))?(?:@({digest}))?$"))
            .unwrap_or_else(|e| panic!("reference regex: {e}"))
    })
}

/// `reference.ParseNormalizedNamed(s)` succeeds.
pub(crate) fn is_valid_normalized_named(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    // A bare 64-hex-digit string is refused (it would look like an image ID).
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return false;
    }
    let (domain, remainder) = split_docker_domain(s);
    let remote = match remainder.find(':') {
        Some(i) => &remainder[..i],
        None => remainder.as_str(),
    };
    if remote.to_lowercase() != remote {
        return false;
    }
    let full = format!("{domain}/{remainder}");
    let Some(caps) = reference_regex().captures(&full) else {
        return false;
    };
    caps.get(1).is_some_and(|name| name.as_str().len() <= 255)
}

fn split_docker_domain(name: &str) -> (String, String) {
    let (domain, mut remainder) = match name.find('/') {
        Some(i) => {
            let first = &name[..i];
            if !first.contains(['.', ':']) && first != "localhost" && first.to_lowercase() == first
            {
                ("docker.io".to_string(), name.to_string())
            } else {
                (first.to_string(), name[i + 1..].to_string())
            }
        }
        None => ("docker.io".to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io".to_string()
    } else {
        domain
    };
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

#[cfg(test)]
mod tests {
    use super::is_valid_normalized_named as ok;

    #[test]
    fn references() {
        for good in [
            "busybox",
            "busybox:latest",
            "busybox:stable-musl",
            "docker.io/library/alpine:3.20",
            "localhost:5000/a/b:c",
            "ghcr.io/owner/img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "scratch",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in [
            "",
            "busybox:",
            "Busybox",
            "a b",
            "nanoserver:plus:",
            ":latest",
            "$IMAGE",
        ] {
            assert!(!ok(bad), "{bad}");
        }
    }
}
