//! Running binaries of another architecture: the kernel's binfmt_misc hands them to a
//! registered qemu-user interpreter. A RUN (or `kiln run`) for a foreign platform is checked
//! here first, so that a missing handler is a clear error instead of `exec format error`.
//!
//! The handler must carry the `F` (fix binary) flag: the kernel then opens the interpreter
//! when it is registered, so it works inside a container whose root filesystem lacks it
//! (Debian's qemu-user-static registers its handlers that way).

use std::path::{Path, PathBuf};

use crate::oci::Platform;

/// Where binfmt_misc is mounted; `KILN_BINFMT_DIR` replaces it (tests point it at a
/// directory they control).
pub fn binfmt_dir() -> PathBuf {
    std::env::var_os("KILN_BINFMT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/sys/fs/binfmt_misc"))
}

#[derive(Debug, thiserror::Error)]
pub enum EmulationError {
    #[error(
        "cannot run {platform} binaries on this {host} machine: no binfmt_misc handler for \
         qemu-{qemu} is registered in {dir}. Install and register it: `apt-get install \
         qemu-user-static binfmt-support && update-binfmts --enable qemu-{qemu}` (mount \
         binfmt_misc first if {dir} is empty: `mount -t binfmt_misc binfmt_misc \
         /proc/sys/fs/binfmt_misc`), or build for {host}"
    )]
    Missing {
        platform: String,
        host: String,
        qemu: String,
        dir: PathBuf,
    },
    #[error(
        "the binfmt_misc handler {path} is disabled: enable it with `update-binfmts --enable \
         qemu-{qemu}`"
    )]
    Disabled { path: PathBuf, qemu: String },
    #[error(
        "the binfmt_misc handler {path} lacks the F (fix binary) flag, so its interpreter is \
         not found inside a container: register it with the F flag (Debian's \
         qemu-user-static package does: `apt-get install qemu-user-static`)"
    )]
    NotFixBinary { path: PathBuf },
}

/// qemu's name for the architecture of `platform` (`arm64` → `aarch64`).
pub fn qemu_arch(platform: &Platform) -> &str {
    match platform.architecture.as_str() {
        "arm64" => "aarch64",
        "amd64" => "x86_64",
        "386" => "i386",
        "mips64le" => "mips64el",
        "mipsle" => "mipsel",
        "loong64" => "loongarch64",
        other => other,
    }
}

/// Whether binaries of `platform` can run here: natively, or through a registered, enabled
/// binfmt_misc handler with the fix-binary flag.
pub fn check_can_run(platform: &Platform) -> Result<(), EmulationError> {
    check_can_run_in(platform, &Platform::host(), &binfmt_dir())
}

/// [`check_can_run`] on `host` with binfmt_misc at `dir`.
pub fn check_can_run_in(
    platform: &Platform,
    host: &Platform,
    dir: &Path,
) -> Result<(), EmulationError> {
    if platform.os == host.os && native_on(host, platform) {
        return Ok(());
    }
    let qemu = qemu_arch(platform).to_string();
    let path = dir.join(format!("qemu-{qemu}"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Err(EmulationError::Missing {
            platform: platform.to_string(),
            host: host.to_string(),
            qemu,
            dir: dir.to_path_buf(),
        });
    };
    let handler = Handler::parse(&text);
    if !handler.enabled {
        return Err(EmulationError::Disabled { path, qemu });
    }
    if !handler.flags.contains('F') {
        return Err(EmulationError::NotFixBinary { path });
    }
    Ok(())
}

/// Whether the host runs `platform`'s binaries itself (amd64 runs 386; arm64's 32-bit arm
/// support varies by CPU, so arm goes through emulation).
fn native_on(host: &Platform, platform: &Platform) -> bool {
    host.architecture == platform.architecture
        || matches!(
            (host.architecture.as_str(), platform.architecture.as_str()),
            ("amd64", "386")
        )
}

/// A `/proc/sys/fs/binfmt_misc/<name>` entry: `enabled`, `interpreter …`, `flags: PF`, ….
struct Handler {
    enabled: bool,
    flags: String,
}

impl Handler {
    fn parse(text: &str) -> Handler {
        let mut lines = text.lines();
        let enabled = lines.next().map(str::trim) == Some("enabled");
        let flags = text
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .unwrap_or_default()
            .trim()
            .to_string();
        Handler { enabled, flags }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap().normalized()
    }

    #[test]
    fn native_platforms_need_no_handler() {
        let empty = tempfile::tempdir().unwrap();
        let host = p("linux/amd64");
        check_can_run_in(&p("linux/amd64"), &host, empty.path()).unwrap();
        check_can_run_in(&p("linux/386"), &host, empty.path()).unwrap();
    }

    #[test]
    fn a_missing_handler_names_the_package_and_the_command() {
        let empty = tempfile::tempdir().unwrap();
        let err = check_can_run_in(&p("linux/arm64"), &p("linux/amd64"), empty.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/arm64")
                && err.contains("qemu-user-static")
                && err.contains("update-binfmts --enable qemu-aarch64"),
            "{err}"
        );
    }

    #[test]
    fn handlers_must_be_enabled_and_fix_binary() {
        let dir = tempfile::tempdir().unwrap();
        let host = p("linux/amd64");
        let entry = dir.path().join("qemu-aarch64");
        let write = |text: &str| std::fs::write(&entry, text).unwrap();
        write(
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n",
        );
        check_can_run_in(&p("linux/arm64"), &host, dir.path()).unwrap();
        write("disabled\ninterpreter /x\nflags: PF\n");
        assert!(matches!(
            check_can_run_in(&p("linux/arm64"), &host, dir.path()),
            Err(EmulationError::Disabled { .. })
        ));
        write("enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: P\n");
        assert!(matches!(
            check_can_run_in(&p("linux/arm64"), &host, dir.path()),
            Err(EmulationError::NotFixBinary { .. })
        ));
    }
}
