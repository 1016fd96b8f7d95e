//! Image platforms (`linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`) with containerd's
//! normalisation (`platforms.Normalize`) and its rules for choosing a manifest from an index
//! (`platforms.Only`: exact match first, then compatible fallbacks in order).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a `--platform` value is not a platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error("invalid platform {input:?}: {reason}")]
    Invalid { input: String, reason: &'static str },
}

/// An OCI platform. Field names on the wire are the OCI ones (`os`, `architecture`, `variant`,
/// `os.version`, `os.features`); fields kiln does not know (Docker's old `features`) are kept in
/// `extra` so re-serialising a manifest list loses nothing.
///
/// Equality is field-by-field (as written); use [`Platform::normalized`] or
/// [`Platform::matches`] to compare platforms the way containerd does.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Hash for Platform {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // `extra` is left out: equal platforms still hash equally.
        self.os.hash(state);
        self.architecture.hash(state);
        self.variant.hash(state);
        self.os_version.hash(state);
        self.os_features.hash(state);
    }
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
];

const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

impl Platform {
    /// A platform from its parts, not normalised.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
            ..Platform::default()
        }
    }

    /// The platform kiln runs on, normalised (`linux/amd64`, `linux/arm64`, `linux/arm/v7`).
    /// For 32-bit ARM the variant is taken from the compile target's features (containerd reads
    /// `/proc/cpuinfo`); without them it is `v7`, as containerd's normalisation assumes.
    pub fn host() -> Platform {
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => (
                "arm",
                Some(if cfg!(target_feature = "v7") {
                    "v7"
                } else if cfg!(target_feature = "v6") {
                    "v6"
                } else {
                    "v7"
                }),
            ),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "powerpc" => ("ppc", None),
            "mips" if cfg!(target_endian = "little") => ("mipsle", None),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
            "loongarch64" => ("loong64", None),
            "wasm32" => ("wasm", None),
            other => (other, None),
        };
        Platform::new(os, arch, variant).normalized()
    }

    /// Parses `os[/arch[/variant]]` or a lone architecture, as containerd's `platforms.Parse`:
    /// `linux` means the host architecture, `arm64` means the host OS (Linux on non-Linux hosts,
    /// since images are Linux). The result is normalised.
    pub fn parse(s: &str) -> Result<Platform, PlatformError> {
        let invalid = |reason| PlatformError::Invalid {
            input: s.to_string(),
            reason,
        };
        let parts: Vec<&str> = s.split('/').collect();
        for part in &parts {
            if part.is_empty() {
                return Err(invalid("empty component"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                return Err(invalid(
                    "components may contain only letters, digits, '_', '-' and '.'",
                ));
            }
        }
        let p = match parts.as_slice() {
            [one] => {
                let lower = one.to_ascii_lowercase();
                let os = normalize_os(&lower);
                if KNOWN_OS.contains(&os.as_str()) {
                    let host = Platform::host();
                    Platform {
                        os,
                        architecture: host.architecture,
                        variant: host.variant,
                        ..Platform::default()
                    }
                } else {
                    let (arch, variant) = normalize_arch(&lower, "");
                    if !KNOWN_ARCH.contains(&arch.as_str()) {
                        return Err(invalid("unknown operating system or architecture"));
                    }
                    Platform::new("linux", &arch, none_if_empty(&variant))
                }
            }
            [os, arch] => Platform::new(os, arch, None),
            [os, arch, variant] => Platform::new(os, arch, Some(variant)),
            _ => return Err(invalid("expected os/arch[/variant]")),
        };
        Ok(p.normalized())
    }

    /// containerd's `platforms.Normalize`: lower-case, `macos`→`darwin`, `x86_64`→`amd64`,
    /// `aarch64`→`arm64` (variant `v8` is the default and dropped), `armhf`→`arm/v7`,
    /// `armel`→`arm/v6`, `arm`→`arm/v7`, `i386`→`386`.
    pub fn normalized(&self) -> Platform {
        let (architecture, variant) = normalize_arch(
            &self.architecture.to_ascii_lowercase(),
            &self.variant.as_deref().unwrap_or("").to_ascii_lowercase(),
        );
        Platform {
            os: normalize_os(&self.os.to_ascii_lowercase()),
            architecture,
            variant: none_if_empty(&variant).map(str::to_string),
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone(),
            extra: self.extra.clone(),
        }
    }

    /// Whether `candidate` is this platform after normalisation (containerd's
    /// `platforms.NewMatcher`): `arm64` matches `arm64/v8`, `aarch64` matches `arm64`.
    pub fn matches(&self, candidate: &Platform) -> bool {
        let (a, b) = (self.normalized(), candidate.normalized());
        a.os == b.os
            && a.architecture == b.architecture
            && a.variant == b.variant
            && (a.os != "windows" || os_version_compatible(&a, &b))
    }

    /// The platforms this one can run, best first (containerd's `platforms.Only`): itself, then
    /// older variants (`arm/v7` → `arm/v6`, `arm/v5`; `amd64/v3` → `v2`, `v1`), 32-bit `386` for
    /// `amd64`, and 32-bit `arm` for `arm64`.
    pub fn compatible(&self) -> Vec<Platform> {
        let me = self.normalized();
        let mut out = vec![me.clone()];
        let with = |arch: &str, variant: Option<String>| Platform {
            architecture: arch.to_string(),
            variant,
            ..me.clone()
        };
        let level = |v: &Option<String>| -> Option<u32> {
            v.as_deref()
                .and_then(|v| v.strip_prefix('v'))
                .and_then(|n| n.parse().ok())
        };
        match me.architecture.as_str() {
            "amd64" => {
                if let Some(mut n) = level(&me.variant) {
                    while n > 1 {
                        n -= 1;
                        out.push(with(
                            "amd64",
                            if n == 1 { None } else { Some(format!("v{n}")) },
                        ));
                    }
                }
                out.push(with("386", None));
            }
            "arm" => arm_fallbacks(&me, level(&me.variant), &mut out),
            "arm64" => {
                let v8 = with("arm", Some("v8".to_string()));
                out.push(v8.clone());
                arm_fallbacks(&v8, Some(8), &mut out);
            }
            _ => {}
        }
        out
    }

    /// Where `candidate` ranks among [`Platform::compatible`] (0 is an exact match), or `None`
    /// when this platform cannot run it.
    pub fn rank(&self, candidate: &Platform) -> Option<usize> {
        self.compatible().iter().position(|p| p.matches(candidate))
    }

    /// The index of the best candidate for this platform (the exact match if any, else the
    /// best fallback; the first on ties), as containerd picks from an image index.
    pub fn best_match<'a, I>(&self, candidates: I) -> Option<usize>
    where
        I: IntoIterator<Item = &'a Platform>,
    {
        let order = self.compatible();
        candidates
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| order.iter().position(|p| p.matches(c)).map(|r| (r, i)))
            .min()
            .map(|(_, i)| i)
    }
}

fn arm_fallbacks(base: &Platform, level: Option<u32>, out: &mut Vec<Platform>) {
    if let Some(mut n) = level {
        while n > 5 {
            n -= 1;
            out.push(Platform {
                architecture: "arm".to_string(),
                variant: Some(format!("v{n}")),
                ..base.clone()
            });
        }
    }
}

/// Windows images match only the same build (`10.0.17763`); other systems ignore `os.version`.
fn os_version_compatible(a: &Platform, b: &Platform) -> bool {
    fn build(v: &Option<String>) -> Option<String> {
        v.as_deref()
            .map(|v| v.split('.').take(3).collect::<Vec<_>>().join("."))
    }
    match (build(&a.os_version), build(&b.os_version)) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

fn none_if_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn normalize_os(os: &str) -> String {
    match os {
        "macos" => "darwin".to_string(),
        other => other.to_string(),
    }
}

/// containerd/platforms `normalizeArch` (inputs already lower-cased).
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let (arch, variant) = match arch {
        "i386" | "i686" | "x86" => ("386", ""),
        "x86_64" | "x86-64" | "amd64" => ("amd64", if variant == "v1" { "" } else { variant }),
        "aarch64" | "arm64" => (
            "arm64",
            match variant {
                "8" | "v8" | "v8.0" => "",
                other => other,
            },
        ),
        "armhf" => ("arm", "v7"),
        "armel" => ("arm", "v6"),
        "arm" => (
            "arm",
            match variant {
                "" | "7" => "v7",
                "5" => "v5",
                "6" => "v6",
                "8" => "v8",
                other => other,
            },
        ),
        other => (other, variant),
    };
    (arch.to_string(), variant.to_string())
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Platform, PlatformError> {
        Platform::parse(s)
    }
}

/// `os/arch[/variant]` (containerd's `platforms.Format`).
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = if self.os.is_empty() {
            "unknown"
        } else {
            &self.os
        };
        let arch = if self.architecture.is_empty() {
            "unknown"
        } else {
            &self.architecture
        };
        write!(f, "{os}/{arch}")?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Platform({self}")?;
        if let Some(v) = &self.os_version {
            write!(f, ", os.version={v}")?;
        }
        if let Some(features) = &self.os_features {
            write!(f, ", os.features={features:?}")?;
        }
        if !self.extra.is_empty() {
            write!(f, ", extra={:?}", self.extra)?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parse_and_display() {
        for (input, shown) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64", "linux/arm64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/i386", "linux/386"),
            ("Linux/AMD64", "linux/amd64"),
            ("macos/arm64", "darwin/arm64"),
            ("windows/amd64", "windows/amd64"),
            ("linux/ppc64le", "linux/ppc64le"),
            ("linux/s390x", "linux/s390x"),
            ("linux/riscv64", "linux/riscv64"),
            ("arm64", "linux/arm64"),
            ("armhf", "linux/arm/v7"),
        ] {
            assert_eq!(p(input).to_string(), shown, "{input}");
        }
        let host = Platform::host();
        assert_eq!(p("linux").architecture, host.architecture);
        assert_eq!(p("linux").os, "linux");
        for bad in [
            "",
            "/",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "lin ux/amd64",
            "frobnicate",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_is_normalised() {
        let host = Platform::host();
        assert_eq!(host, host.normalized());
        assert!(!host.os.is_empty() && !host.architecture.is_empty());
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert_eq!(host.to_string(), "linux/amd64");
        }
        if cfg!(all(target_os = "linux", target_arch = "aarch64")) {
            assert_eq!(host.to_string(), "linux/arm64");
        }
    }

    #[test]
    fn matching_follows_containerd() {
        let arm64 = p("linux/arm64");
        assert!(arm64.matches(&Platform::new("linux", "arm64", Some("v8"))));
        assert!(arm64.matches(&Platform::new("linux", "arm64", None)));
        assert!(arm64.matches(&Platform::new("linux", "aarch64", None)));
        assert!(!arm64.matches(&Platform::new("linux", "amd64", None)));
        assert!(!arm64.matches(&Platform::new("windows", "arm64", None)));
        assert!(p("linux/arm/v7").matches(&Platform::new("linux", "arm", None)));
        assert!(!p("linux/arm/v7").matches(&Platform::new("linux", "arm", Some("v6"))));
        assert!(p("linux/amd64").matches(&Platform::new("linux", "x86_64", None)));
        // attestation manifests in BuildKit indexes
        assert!(!p("linux/amd64").matches(&Platform::new("unknown", "unknown", None)));

        let win = |v: &str| Platform {
            os_version: Some(v.to_string()),
            ..Platform::new("windows", "amd64", None)
        };
        assert!(win("10.0.17763.1234").matches(&win("10.0.17763.5678")));
        assert!(!win("10.0.17763.1234").matches(&win("10.0.20348.1")));
    }

    #[test]
    fn fallback_order() {
        let shown = |p: &Platform| {
            p.compatible()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shown(&p("linux/arm/v7")),
            ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
        );
        assert_eq!(
            shown(&p("linux/arm64")),
            [
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        assert_eq!(
            shown(&p("linux/amd64/v3")),
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        assert_eq!(shown(&p("linux/amd64")), ["linux/amd64", "linux/386"]);

        let index = [
            Platform::new("linux", "386", None),
            Platform::new("linux", "arm", Some("v6")),
            Platform::new("linux", "arm", Some("v7")),
            Platform::new("linux", "arm64", Some("v8")),
            Platform::new("linux", "amd64", None),
            Platform::new("unknown", "unknown", None),
        ];
        assert_eq!(p("linux/amd64").best_match(&index), Some(4));
        assert_eq!(p("linux/arm64").best_match(&index), Some(3));
        assert_eq!(p("linux/arm/v7").best_match(&index), Some(2));
        assert_eq!(p("linux/arm/v6").best_match(&index), Some(1));
        assert_eq!(p("linux/arm/v5").best_match(&index), None);
        assert_eq!(p("linux/amd64").best_match(&index[..2]), Some(0));
        assert_eq!(p("linux/arm64").best_match(&index[..3]), Some(2));
        assert_eq!(p("linux/s390x").best_match(&index), None);
        assert_eq!(p("linux/arm/v7").rank(&index[1]), Some(1));
    }

    #[test]
    fn serde_uses_oci_names_and_keeps_unknown_fields() {
        let json = r#"{"architecture":"amd64","os":"windows","os.version":"10.0.17763.5576","os.features":["win32k"],"features":["sse4"]}"#;
        let p: Platform = serde_json::from_str(json).unwrap();
        assert_eq!(p.os_version.as_deref(), Some("10.0.17763.5576"));
        assert_eq!(p.os_features, Some(vec!["win32k".to_string()]));
        assert_eq!(p.extra["features"], serde_json::json!(["sse4"]));
        let back: serde_json::Value = serde_json::to_value(&p).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );

        let p: Platform =
            serde_json::from_str(r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#)
                .unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#
        );
    }
}
