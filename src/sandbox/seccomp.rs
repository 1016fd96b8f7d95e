//! Docker's default seccomp profile for a container: moby's profile ([`default_syscalls`]) with
//! its conditions resolved the way moby's `setupSeccomp` resolves them, for the host's
//! architecture, the container's capabilities (its bounding set) and the running kernel.
//!
//! Everything not allowed fails with EPERM, as under `docker run` and `docker build`.

mod default_syscalls;

use oci_spec::runtime::{
    Arch as ScmpArch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use oci_spec::OciSpecError;

/// A machine architecture, as the profile's conditions name it (libseccomp's native names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    X86,
    Arm64,
    Arm,
    Ppc64le,
    S390x,
    Riscv64,
    Mips64,
    Mips64le,
    /// One the profile has no rules or filter architectures for: only its plain rules apply.
    Other,
}

impl Arch {
    /// The architecture kiln runs on (RUN for another platform goes through binfmt emulation,
    /// whose emulator is a host process, so the host's syscalls are what the filter sees).
    pub fn host() -> Arch {
        match std::env::consts::ARCH {
            "x86_64" => Arch::Amd64,
            "x86" => Arch::X86,
            "aarch64" => Arch::Arm64,
            "arm" => Arch::Arm,
            "powerpc64" if cfg!(target_endian = "little") => Arch::Ppc64le,
            "s390x" => Arch::S390x,
            "riscv64" => Arch::Riscv64,
            "mips64" if cfg!(target_endian = "big") => Arch::Mips64,
            "mips64" => Arch::Mips64le,
            _ => Arch::Other,
        }
    }

    /// The name in the profile's `includes.arches` / `excludes.arches`.
    fn native(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::X86 => "x86",
            Arch::Arm64 => "arm64",
            Arch::Arm => "arm",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
            Arch::Riscv64 => "riscv64",
            Arch::Mips64 => "mips64",
            Arch::Mips64le => "mipsel64",
            // Matches no condition, as moby's empty name for an unknown GOARCH.
            Arch::Other => "",
        }
    }

    /// The libseccomp architecture, looked up in the profile's `archMap`.
    fn seccomp(self) -> Option<ScmpArch> {
        match self {
            Arch::Amd64 => Some(ScmpArch::ScmpArchX86_64),
            Arch::X86 => Some(ScmpArch::ScmpArchX86),
            Arch::Arm64 => Some(ScmpArch::ScmpArchAarch64),
            Arch::Arm => Some(ScmpArch::ScmpArchArm),
            Arch::Ppc64le => Some(ScmpArch::ScmpArchPpc64le),
            Arch::S390x => Some(ScmpArch::ScmpArchS390x),
            Arch::Riscv64 => Some(ScmpArch::ScmpArchRiscv64),
            Arch::Mips64 => Some(ScmpArch::ScmpArchMips64),
            Arch::Mips64le => Some(ScmpArch::ScmpArchMipsel64),
            Arch::Other => None,
        }
    }
}

/// What a rule does to the syscalls it names.
#[derive(Debug, Clone, Copy)]
enum Action {
    Allow,
    Errno(u32),
}

/// A condition on a syscall argument.
#[derive(Debug, Clone, Copy)]
struct Arg {
    index: usize,
    value: u64,
    op: LinuxSeccompOperator,
}

/// A rule's `includes` (all must hold) or `excludes` (any one drops the rule); empty parts
/// say nothing.
#[derive(Debug, Clone, Copy)]
struct Cond {
    arches: &'static [&'static str],
    caps: &'static [Capability],
    /// (major, minor).
    min_kernel: Option<(u32, u32)>,
}

/// One entry of the profile's `syscalls`.
#[derive(Debug, Clone, Copy)]
struct Rule {
    names: &'static [&'static str],
    action: Action,
    args: &'static [Arg],
    includes: Cond,
    excludes: Cond,
}

impl Rule {
    /// Whether the rule is in the filter of a container on `arch` with bounding set `caps`
    /// under kernel `kernel` (unknown: taken as new enough).
    fn applies(&self, arch: Arch, caps: &[Capability], kernel: Option<(u32, u32)>) -> bool {
        let new_enough = |min: (u32, u32)| kernel.is_none_or(|k| k >= min);
        let ex = &self.excludes;
        if ex.arches.contains(&arch.native())
            || ex.caps.iter().any(|c| caps.contains(c))
            || ex.min_kernel.is_some_and(new_enough)
        {
            return false;
        }
        let inc = &self.includes;
        (inc.arches.is_empty() || inc.arches.contains(&arch.native()))
            && inc.caps.iter().all(|c| caps.contains(c))
            && inc.min_kernel.is_none_or(new_enough)
    }

    fn to_oci(self) -> Result<LinuxSyscall, OciSpecError> {
        let call = LinuxSyscallBuilder::default()
            .names(self.names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        let call = match self.action {
            Action::Allow => call.action(LinuxSeccompAction::ScmpActAllow),
            Action::Errno(errno) => call
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(errno),
        };
        let call = if self.args.is_empty() {
            call
        } else {
            call.args(
                self.args
                    .iter()
                    .map(|a| {
                        LinuxSeccompArgBuilder::default()
                            .index(a.index)
                            .value(a.value)
                            .op(a.op)
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        call.build()
    }
}

/// Docker's default profile for a container on `arch` whose bounding set is `caps`, on the
/// running kernel.
pub fn default_profile(arch: Arch, caps: &[Capability]) -> Result<LinuxSeccomp, OciSpecError> {
    profile_for_kernel(arch, caps, host_kernel())
}

fn profile_for_kernel(
    arch: Arch,
    caps: &[Capability],
    kernel: Option<(u32, u32)>,
) -> Result<LinuxSeccomp, OciSpecError> {
    let profile = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(default_syscalls::DEFAULT_ERRNO)
        .syscalls(
            default_syscalls::RULES
                .iter()
                .filter(|r| r.applies(arch, caps, kernel))
                .map(|r| r.to_oci())
                .collect::<Result<Vec<_>, _>>()?,
        );
    // An architecture the map lacks gets none: libseccomp then filters the native one only.
    let mapped = arch
        .seccomp()
        .and_then(|a| default_syscalls::ARCH_MAP.iter().find(|(n, _)| *n == a));
    match mapped {
        Some((native, subs)) => profile
            .architectures(
                std::iter::once(*native)
                    .chain(subs.iter().copied())
                    .collect::<Vec<_>>(),
            )
            .build(),
        None => profile.build(),
    }
}

/// The running kernel's (major, minor), from `/proc/sys/kernel/osrelease`.
fn host_kernel() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_release(&release)
}

/// `6.1.0-18-amd64` → (6, 1).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::DEFAULT_CAPABILITIES;

    fn rules_for<'a>(p: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        p.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.names().iter().any(|n| n == name))
            .collect()
    }

    fn allowed_unconditionally(p: &LinuxSeccomp, name: &str) -> bool {
        rules_for(p, name)
            .iter()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
    }

    #[test]
    fn default_caps_on_amd64_are_dockers_filter() {
        let p = profile_for_kernel(Arch::Amd64, &DEFAULT_CAPABILITIES, Some((6, 1))).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        assert_eq!(
            v["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        // The plain allowlist is the whole list, first.
        assert_eq!(v["syscalls"][0]["names"].as_array().unwrap().len(), 349);
        assert_eq!(v["syscalls"][0]["action"], "SCMP_ACT_ALLOW");
        for name in [
            "read",
            "execve",
            "arch_prctl",
            "modify_ldt",
            "chroot",
            "ptrace",
        ] {
            assert!(allowed_unconditionally(&p, name), "{name}");
        }
        // Blocked: needs caps Docker does not give, or on no list at all.
        for name in [
            "unshare",
            "mount",
            "setns",
            "keyctl",
            "add_key",
            "reboot",
            "bpf",
            "kexec_load",
            "open_by_handle_at",
            "clock_settime",
        ] {
            assert!(rules_for(&p, name).is_empty(), "{name}");
        }
        // clone only without namespace flags; clone3 is ENOSYS so libcs fall back to clone.
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        let args = clone[0].args().as_ref().unwrap();
        assert_eq!(args[0].index(), 0);
        assert_eq!(args[0].value(), 2114060288);
        assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        let clone3 = rules_for(&p, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(38));
        // socket: anything but AF_VSOCK; personality: five personas.
        let socket = rules_for(&p, "socket");
        assert_eq!(socket.len(), 1);
        let a = socket[0].args().as_ref().unwrap()[0];
        assert_eq!((a.value(), a.op()), (40, LinuxSeccompOperator::ScmpCmpNe));
        let personas: Vec<u64> = rules_for(&p, "personality")
            .iter()
            .map(|s| s.args().as_ref().unwrap()[0].value())
            .collect();
        assert_eq!(personas, [0, 8, 131072, 131080, 4294967295]);
    }

    #[test]
    fn cap_sys_admin_lifts_the_clone_filter() {
        let mut caps = DEFAULT_CAPABILITIES.to_vec();
        caps.push(Capability::SysAdmin);
        let p = profile_for_kernel(Arch::Amd64, &caps, Some((6, 1))).unwrap();
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert!(clone[0].args().is_none(), "{clone:?}");
        assert!(allowed_unconditionally(&p, "clone3"));
        assert!(rules_for(&p, "clone3")
            .iter()
            .all(|s| s.action() == LinuxSeccompAction::ScmpActAllow));
        for name in ["unshare", "mount", "setns", "bpf", "sethostname"] {
            assert!(allowed_unconditionally(&p, name), "{name}");
        }
        // Still no keyring, no kexec: no capability allows them.
        assert!(rules_for(&p, "keyctl").is_empty());
        assert!(rules_for(&p, "kexec_load").is_empty());
    }

    #[test]
    fn aarch64_has_arm_rules_and_no_x86_ones() {
        let p = profile_for_kernel(Arch::Arm64, &DEFAULT_CAPABILITIES, Some((6, 1))).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v["architectures"],
            serde_json::json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
        for name in [
            "arch_prctl",
            "modify_ldt",
            "s390_runtime_instr",
            "swapcontext",
        ] {
            assert!(rules_for(&p, name).is_empty(), "{name}");
        }
        for name in ["set_tls", "cacheflush", "sync_file_range2"] {
            assert!(allowed_unconditionally(&p, name), "{name}");
        }
    }

    #[test]
    fn s390x_checks_the_second_clone_argument() {
        let p = profile_for_kernel(Arch::S390x, &DEFAULT_CAPABILITIES, Some((6, 1))).unwrap();
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args().as_ref().unwrap()[0].index(), 1);
    }

    #[test]
    fn an_unknown_arch_gets_only_the_unconditional_rules_and_no_architectures() {
        let p = profile_for_kernel(Arch::Other, &DEFAULT_CAPABILITIES, Some((6, 1))).unwrap();
        assert!(p.architectures().is_none());
        assert!(rules_for(&p, "arch_prctl").is_empty());
        assert!(allowed_unconditionally(&p, "read"));
    }

    #[test]
    fn ptrace_needs_kernel_4_8_without_cap_sys_ptrace() {
        let old = profile_for_kernel(Arch::Amd64, &DEFAULT_CAPABILITIES, Some((4, 4))).unwrap();
        assert!(rules_for(&old, "ptrace").is_empty());
        let mut caps = DEFAULT_CAPABILITIES.to_vec();
        caps.push(Capability::SysPtrace);
        let old_traced = profile_for_kernel(Arch::Amd64, &caps, Some((4, 4))).unwrap();
        assert!(allowed_unconditionally(&old_traced, "ptrace"));
        assert!(allowed_unconditionally(&old_traced, "kcmp"));
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.1.0-18-amd64\n"), Some((6, 1)));
        assert_eq!(parse_release("4.8"), Some((4, 8)));
        assert_eq!(parse_release("6.18.44-fc-v1098"), Some((6, 18)));
        assert_eq!(parse_release("weird"), None);
    }
}
