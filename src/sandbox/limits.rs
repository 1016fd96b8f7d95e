//! Resource settings of a build container that `docker build` takes on the command line:
//! `--ulimit NAME=SOFT[:HARD]` (go-units `ParseUlimit`) and `--shm-size SIZE` (go-units
//! `RAMInBytes`), which current BuildKit applies to every RUN.

use oci_spec::runtime::PosixRlimitType;

/// One `--ulimit`: a resource and its soft and hard limits (`-1` is unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    pub kind: PosixRlimitType,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("invalid --ulimit {spec:?}: {reason}")]
    Ulimit { spec: String, reason: String },
    #[error("invalid --shm-size {spec:?}: expected a size such as 64m, 1g or 1048576")]
    Size { spec: String },
}

/// The names go-units knows, as `RLIMIT_<NAME>`.
const NAMES: [(&str, PosixRlimitType); 15] = [
    ("core", PosixRlimitType::RlimitCore),
    ("cpu", PosixRlimitType::RlimitCpu),
    ("data", PosixRlimitType::RlimitData),
    ("fsize", PosixRlimitType::RlimitFsize),
    ("locks", PosixRlimitType::RlimitLocks),
    ("memlock", PosixRlimitType::RlimitMemlock),
    ("msgqueue", PosixRlimitType::RlimitMsgqueue),
    ("nice", PosixRlimitType::RlimitNice),
    ("nofile", PosixRlimitType::RlimitNofile),
    ("nproc", PosixRlimitType::RlimitNproc),
    ("rss", PosixRlimitType::RlimitRss),
    ("rtprio", PosixRlimitType::RlimitRtprio),
    ("rttime", PosixRlimitType::RlimitRttime),
    ("sigpending", PosixRlimitType::RlimitSigpending),
    ("stack", PosixRlimitType::RlimitStack),
];

impl Ulimit {
    /// `nofile=1024:2048`, or `nofile=1024` (the hard limit is then the soft one).
    pub fn parse(spec: &str) -> Result<Ulimit, LimitError> {
        let bad = |reason: &str| LimitError::Ulimit {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (name, values) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=SOFT[:HARD]"))?;
        let kind = NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
            .ok_or_else(|| bad(&format!("unknown limit {name:?}")))?;
        let number = |v: &str| -> Result<u64, LimitError> {
            match v.parse::<i64>() {
                Ok(-1) => Ok(u64::MAX),
                Ok(n) if n >= 0 => Ok(n as u64),
                _ => Err(bad(&format!("{v:?} is not a limit (a number, or -1)"))),
            }
        };
        let (soft, hard) = match values.split_once(':') {
            Some((s, h)) => (number(s)?, number(h)?),
            None => {
                let v = number(values)?;
                (v, v)
            }
        };
        if soft > hard {
            return Err(bad("the soft limit is above the hard limit"));
        }
        Ok(Ulimit { kind, soft, hard })
    }

    /// The `setrlimit` resource, for the chroot sandbox that sets it itself.
    pub fn resource(&self) -> libc::__rlimit_resource_t {
        match self.kind {
            PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
            PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
            PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
            PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
            PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
            PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
            PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
            PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
            PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
            PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
            PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
            PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
            PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
            PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
            PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
            PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
        }
    }

    /// How it reads in a cache key: `nofile=1024:2048`.
    pub fn describe(&self) -> String {
        let name = NAMES
            .iter()
            .find(|(_, k)| *k == self.kind)
            .map_or("?", |(n, _)| *n);
        let show = |v: u64| {
            if v == u64::MAX {
                "-1".to_string()
            } else {
                v.to_string()
            }
        };
        format!("{name}={}:{}", show(self.soft), show(self.hard))
    }
}

/// A size as `docker build --shm-size` reads it (go-units `RAMInBytes`): a number, maybe with
/// a fraction, then an optional unit `b`, `k`, `m`, `g`, `t` or `p` (powers of 1024, any case,
/// with or without a trailing `b`).
pub fn parse_ram_size(spec: &str) -> Result<u64, LimitError> {
    let bad = || LimitError::Size {
        spec: spec.to_string(),
    };
    let s = spec.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulimits_as_docker_reads_them() {
        let u = Ulimit::parse("nofile=1024:2048").unwrap();
        assert_eq!(u.kind, PosixRlimitType::RlimitNofile);
        assert_eq!((u.soft, u.hard), (1024, 2048));
        assert_eq!(u.describe(), "nofile=1024:2048");
        let u = Ulimit::parse("nproc=512").unwrap();
        assert_eq!((u.soft, u.hard), (512, 512));
        assert_eq!(Ulimit::parse("core=-1").unwrap().describe(), "core=-1:-1");
        for bad in [
            "nofile",
            "bogus=1",
            "nofile=2048:1024",
            "nofile=x",
            "nofile=-2",
        ] {
            let err = Ulimit::parse(bad).unwrap_err().to_string();
            assert!(err.contains("--ulimit"), "{err}");
        }
    }

    #[test]
    fn shm_sizes_as_docker_reads_them() {
        assert_eq!(parse_ram_size("128m").unwrap(), 128 << 20);
        assert_eq!(parse_ram_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_ram_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_ram_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_ram_size("1.5m").unwrap(), 3 << 19);
        assert_eq!(parse_ram_size("1048576").unwrap(), 1 << 20);
        assert!(parse_ram_size("12q").is_err());
        assert!(parse_ram_size("m").is_err());
        assert!(parse_ram_size("").is_err());
    }
}
