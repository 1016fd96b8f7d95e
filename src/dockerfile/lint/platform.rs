//! Just enough of containerd's `platforms` package for the checks: the default (host) platform
//! that BuildKit's automatic platform ARGs describe, and `platforms.Parse` for
//! FromPlatformFlagConstDisallowed.

/// An OS/architecture/variant triple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: String,
}

impl Platform {
    /// The platform kiln runs on, normalised as containerd does (`linux/amd64`).
    pub(crate) fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", ""),
            "x86" => ("386", ""),
            "arm" => ("arm", "v7"),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", ""),
            "powerpc64" => ("ppc64", ""),
            "loongarch64" => ("loong64", ""),
            other => (other, ""),
        };
        Platform {
            os: "linux".into(),
            arch: arch.into(),
            variant: variant.into(),
        }
    }

    /// `os/arch[/variant]`.
    pub(crate) fn format(&self) -> String {
        if self.variant.is_empty() {
            format!("{}/{}", self.os, self.arch)
        } else {
            format!("{}/{}/{}", self.os, self.arch, self.variant)
        }
    }

    /// containerd's `platforms.Parse`: `os`, `arch`, `os/arch` or `os/arch/variant`.
    pub(crate) fn parse(spec: &str) -> Option<Platform> {
        if spec.contains('*') {
            return None;
        }
        let parts: Vec<&str> = spec.split('/').collect();
        let valid = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        };
        if !parts.iter().all(valid) {
            return None;
        }
        match parts.as_slice() {
            [one] => {
                let os = normalize_os(one);
                if KNOWN_OS.contains(&os.as_str()) {
                    let host = Platform::host();
                    return Some(Platform {
                        os,
                        arch: host.arch,
                        variant: host.variant,
                    });
                }
                let (arch, variant) = normalize_arch(one, "");
                if KNOWN_ARCH.contains(&arch.as_str()) {
                    return Some(Platform {
                        os: "linux".into(),
                        arch,
                        variant,
                    });
                }
                None
            }
            [os, arch] => {
                let (arch, variant) = normalize_arch(arch, "");
                Some(Platform {
                    os: normalize_os(os),
                    arch,
                    variant,
                })
            }
            [os, arch, variant] => {
                let (arch, variant) = normalize_arch(arch, variant);
                Some(Platform {
                    os: normalize_os(os),
                    arch,
                    variant,
                })
            }
            _ => None,
        }
    }
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];

const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

fn normalize_os(os: &str) -> String {
    let os = os.to_lowercase();
    if os == "macos" {
        "darwin".into()
    } else {
        os
    }
}

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_lowercase();
    let variant = variant.to_lowercase();
    match arch.as_str() {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => {
            let v = if variant == "v1" {
                String::new()
            } else {
                variant
            };
            ("amd64".into(), v)
        }
        "aarch64" | "arm64" => {
            let v = if variant == "8" || variant == "v8" {
                String::new()
            } else {
                variant
            };
            ("arm64".into(), v)
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let v = match variant.as_str() {
                "" | "7" => "v7".to_string(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), v)
        }
        _ => (arch, variant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_containerd() {
        let p = Platform::parse("linux/amd64").unwrap();
        assert_eq!((p.os.as_str(), p.arch.as_str()), ("linux", "amd64"));
        let p = Platform::parse("linux/aarch64").unwrap();
        assert_eq!(p.arch, "arm64");
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(p.variant, "v7");
        assert!(Platform::parse("arm64").is_some());
        assert!(Platform::parse("windows").is_some());
        assert!(Platform::parse("bogus").is_none());
        assert!(Platform::parse("linux/").is_none());
        assert!(Platform::parse("$TARGETPLATFORM").is_none());
        assert!(Platform::parse("a/b/c/d").is_none());
    }
}
