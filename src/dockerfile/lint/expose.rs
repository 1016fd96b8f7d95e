//! EXPOSE checks from BuildKit's `convert_expose.go`: ExposeProtoCasing and ExposeInvalidFormat.

use super::{rules, Linter};
use crate::diag::Span;

/// Checks the (expanded) EXPOSE words. A word whose protocol is not tcp, udp or sctp, or with no
/// port, is a build error in BuildKit, which stops before checking later words.
pub(super) fn check_expose(linter: &mut Linter, span: Span, ports: &[String]) {
    for raw in ports {
        let (ip, host_port, container) = split_parts(raw);
        let (port, proto) = container.split_once('/').unwrap_or((container, ""));
        if port.is_empty() || !matches!(proto.to_lowercase().as_str(), "" | "tcp" | "udp" | "sctp")
        {
            return;
        }
        if proto != proto.to_lowercase() {
            linter.report(
                &rules::EXPOSE_PROTO_CASING,
                span,
                rules::expose_proto_casing(raw),
            );
        }
        if !ip.is_empty() || !host_port.is_empty() {
            linter.report(
                &rules::EXPOSE_INVALID_FORMAT,
                span,
                rules::expose_invalid_format(raw),
            );
        }
    }
}

/// `[ip:][hostPort:]containerPort`; an IPv6 address keeps its colons.
fn split_parts(raw: &str) -> (String, &str, &str) {
    let parts: Vec<&str> = raw.split(':').collect();
    match parts.as_slice() {
        [c] => (String::new(), "", c),
        [h, c] => (String::new(), h, c),
        [ip, h, c] => (ip.to_string(), h, c),
        _ => {
            let n = parts.len();
            (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_parts;

    #[test]
    fn splits_like_buildkit() {
        assert_eq!(split_parts("80"), (String::new(), "", "80"));
        assert_eq!(
            split_parts("8080:80/tcp"),
            (String::new(), "8080", "80/tcp")
        );
        assert_eq!(
            split_parts("127.0.0.1:80:80"),
            ("127.0.0.1".into(), "80", "80")
        );
        assert_eq!(split_parts("[::1]:80:80"), ("[::1]".into(), "80", "80"));
    }
}
