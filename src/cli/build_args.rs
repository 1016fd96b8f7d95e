//! `kiln build` options, as `docker build` users write them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::pull::StoreOpts;
use super::registry_opts::RegistryOpts;
use super::render::ProgressMode;

/// A flag given twice takes its last value, as docker's flags do (CI scripts append
/// `--progress=plain` to a command that has one); repeatable flags still collect every value.
#[derive(Debug, clap::Args)]
#[command(args_override_self = true)]
pub struct BuildArgs {
    /// Build context: a directory, or `-` for a tar archive on stdin
    #[arg(default_value = ".")]
    pub context: String,
    /// Name and tag of the image (repeatable)
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads it from stdin)
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Build-time variable `K=V`, or `K` to take the value from the environment (repeatable)
    #[arg(long = "build-arg", value_name = "K[=V]")]
    pub build_args: Vec<String>,
    /// Build only up to this stage
    #[arg(long)]
    pub target: Option<String>,
    /// A named context `NAME=DIR` or `NAME=docker-image://REF`: what `FROM NAME`,
    /// `COPY --from=NAME` and `RUN --mount=from=NAME` read instead (repeatable)
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// Target platform (os/arch[/variant]); several, comma-separated, build a multi-platform index
    #[arg(long)]
    pub platform: Option<String>,
    /// Label for the image `K=V` (repeatable)
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Network for RUN steps
    #[arg(long, value_parser = ["default", "host", "none"], default_value = "default")]
    pub network: String,
    /// Extra privileges (buildx's entitlements, comma-separated or repeated):
    /// `security.insecure` lets `RUN --security=insecure` run with every capability and no
    /// seccomp filter; `network.host` is accepted (RUN already uses the host's network)
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_delimiter = ',',
          value_parser = ["security.insecure", "network.host"])]
    pub allow: Vec<String>,
    /// Extra `/etc/hosts` entry for RUN steps, `HOST:IP` (repeatable)
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,
    /// Size of RUN steps' `/dev/shm` (e.g. 128m, 1g; default 64m)
    #[arg(long = "shm-size", value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Resource limit for RUN steps, `NAME=SOFT[:HARD]` (e.g. nofile=1024:1024; repeatable)
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimits: Vec<String>,
    /// SSH agent forwarding (`default|ID[=SOCKET|KEY]`): not supported by kiln, an error
    #[arg(long = "ssh", value_name = "SPEC")]
    pub ssh: Vec<String>,
    /// Secret for RUN --mount=type=secret: `id=ID,src=PATH` or `id=ID,env=VAR` (repeatable)
    #[arg(long = "secret", value_name = "id=..,src=..|env=..")]
    pub secrets: Vec<String>,
    /// Do not use the build cache
    #[arg(long)]
    pub no_cache: bool,
    /// Do not use the build cache for these stages (name or index; repeatable, comma-separated)
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Import build cache: `type=registry,ref=REF` or `type=local,src=DIR` (repeatable)
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Export build cache: `type=registry,ref=REF[,mode=min|max]` or `type=local,dest=DIR[,mode=..]`
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Under each step that missed the cache, list what changed (up to 20 paths, not 3)
    #[arg(long)]
    pub explain_cache: bool,
    /// Always pull base images, even when the store has them
    #[arg(long)]
    pub pull: bool,
    /// Where the image goes (buildx syntax): `type=image[,name=..]` (the store, default),
    /// `type=oci|docker,dest=FILE` (archive; `dest=-` is stdout), `type=local,dest=DIR` or
    /// `type=tar,dest=FILE` (root filesystem), `type=registry` (push); `-o DIR` = type=local
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Push the image to its registry after building (same as -o type=registry)
    #[arg(long)]
    pub push: bool,
    /// Write the image ID to this file
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Write build metadata (image ID, digest, tags) as JSON to this file
    #[arg(long)]
    pub metadata_file: Option<PathBuf>,
    /// Progress output
    #[arg(long, value_parser = ["auto", "plain", "tty", "quiet"], default_value = "auto")]
    pub progress: String,
    /// Print only the image ID
    #[arg(short, long)]
    pub quiet: bool,
    /// OCI runtime to run RUN steps with (default: crun, else runc, on PATH)
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Layer compression in the store [default: layers stay uncompressed in the store and are
    /// gzip-compressed (level 6) when pushed, as Docker's image store does]
    #[arg(long, value_parser = ["gzip", "zstd", "uncompressed"])]
    pub compression: Option<String>,
    /// Compression level (gzip 1-9, zstd 1-19); alone, it means --compression gzip
    #[arg(long)]
    pub compression_level: Option<u32>,
    /// Use OCI media types (false: Docker schema 2)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub oci_mediatypes: bool,
    #[command(flatten)]
    pub registry: RegistryOpts,
    #[command(flatten)]
    pub store: StoreOpts,
}

impl BuildArgs {
    pub fn progress_mode(&self) -> Option<ProgressMode> {
        if self.quiet {
            return None;
        }
        match self.progress.as_str() {
            "plain" => Some(ProgressMode::Plain),
            "tty" => Some(ProgressMode::Tty),
            "quiet" => None,
            _ => Some(ProgressMode::Auto),
        }
    }

    /// `--build-arg K=V` and `--build-arg K` (from the environment; skipped when unset, as Docker does).
    pub fn build_arg_map(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for arg in &self.build_args {
            match arg.split_once('=') {
                Some((k, v)) => {
                    out.insert(k.to_string(), v.to_string());
                }
                None => {
                    if let Ok(v) = std::env::var(arg) {
                        out.insert(arg.clone(), v);
                    }
                }
            }
        }
        out
    }

    /// `--add-host`, `--shm-size` and `--ulimit`, checked; `--ssh` is refused here, before
    /// anything is built.
    pub fn container_options(&self) -> anyhow::Result<crate::exec::build::ContainerOptions> {
        if let Some(spec) = self.ssh.first() {
            anyhow::bail!(
                "--ssh {spec}: kiln does not forward SSH agents or keys to RUN \
                 --mount=type=ssh; fetch private sources with a --secret (e.g. a deploy key \
                 or token in RUN --mount=type=secret) instead"
            );
        }
        parse_container_options(
            self.add_hosts.iter().map(String::as_str),
            self.shm_size.as_deref(),
            &self.ulimits,
        )
    }

    pub fn label_map(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for l in &self.labels {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() {
                anyhow::bail!("invalid --label {l:?}: expected KEY=VALUE");
            }
            out.insert(k.to_string(), v.to_string());
        }
        Ok(out)
    }
}

/// `--add-host HOST:IP` (or `HOST=IP`, as buildx also takes it): the name and the address,
/// which must be an IP address (an IPv6 one may hold colons: the name ends at the first).
/// `--add-host` specs, a `--shm-size` and `--ulimit`s, parsed into what every RUN gets; `kiln
/// build`'s flags and a bake target's attributes both come through here.
pub fn parse_container_options<'a>(
    add_hosts: impl IntoIterator<Item = &'a str>,
    shm_size: Option<&str>,
    ulimits: &[String],
) -> anyhow::Result<crate::exec::build::ContainerOptions> {
    let extra_hosts = add_hosts
        .into_iter()
        .map(parse_add_host)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shm_size = shm_size.map(crate::sandbox::parse_ram_size).transpose()?;
    let ulimits = ulimits
        .iter()
        .map(|u| crate::sandbox::Ulimit::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::exec::build::ContainerOptions {
        extra_hosts,
        shm_size,
        ulimits,
    })
}

pub fn parse_add_host(spec: &str) -> anyhow::Result<(String, String)> {
    let (name, addr) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .filter(|(n, a)| !n.is_empty() && !a.is_empty())
        .ok_or_else(|| anyhow::anyhow!("invalid --add-host {spec:?}: expected HOST:IP"))?;
    if addr == "host-gateway" {
        anyhow::bail!(
            "--add-host {spec}: kiln has no host-gateway address (RUN uses the host's network: \
             give 127.0.0.1 or the host's address)"
        );
    }
    let ip = addr.trim_start_matches('[').trim_end_matches(']');
    if ip.parse::<std::net::IpAddr>().is_err() {
        anyhow::bail!("invalid --add-host {spec:?}: {addr:?} is not an IP address");
    }
    Ok((name.to_string(), ip.to_string()))
}

/// A `--secret` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// Parses `id=ID,src=PATH` / `id=ID,env=VAR` (also `source=`, `type=file|env`; a bare `id=X`
/// reads the env var X if set, else the file X, as buildx does).
pub fn parse_secret(spec: &str) -> anyhow::Result<(String, SecretSource)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    let mut kind = None;
    for field in spec.split(',') {
        let (k, v) = field.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("invalid --secret field {field:?} (expected key=value)")
        })?;
        match k.to_ascii_lowercase().as_str() {
            "id" => id = Some(v.to_string()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            "type" => kind = Some(v.to_string()),
            other => anyhow::bail!("invalid --secret key {other:?}"),
        }
    }
    let id = id
        .or_else(|| src.clone())
        .or_else(|| env.clone())
        .ok_or_else(|| anyhow::anyhow!("--secret needs an id"))?;
    let source = match (kind.as_deref(), src, env) {
        (Some("env"), src, env) => SecretSource::Env(env.or(src).unwrap_or_else(|| id.clone())),
        (_, Some(src), _) => SecretSource::File(PathBuf::from(src)),
        (_, None, Some(env)) => SecretSource::Env(env),
        (_, None, None) => {
            if std::env::var_os(&id).is_some() {
                SecretSource::Env(id.clone())
            } else {
                SecretSource::File(PathBuf::from(&id))
            }
        }
    };
    Ok((id, source))
}

/// One `--build-context NAME=VALUE`: a directory (relative to `base`) or `docker-image://REF`.
pub fn parse_named_context(
    spec: &str,
    base: &std::path::Path,
) -> anyhow::Result<(String, crate::graph::NamedContext)> {
    use crate::graph::NamedContext;
    let (name, value) = spec
        .split_once('=')
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--build-context {spec:?}: expected NAME=VALUE"))?;
    if let Some(reference) = value.strip_prefix("docker-image://") {
        crate::oci::Reference::parse(reference)
            .map_err(|e| anyhow::anyhow!("--build-context {name}: {e}"))?;
        return Ok((name.to_string(), NamedContext::Image(reference.to_string())));
    }
    if value.contains("://") || value.starts_with("git@") || value.starts_with("target:") {
        anyhow::bail!(
            "--build-context {name}={value}: kiln reads named contexts from a local directory or \
             docker-image://REF (not oci-layout, git, http or another target yet)"
        );
    }
    let dir = base.join(value);
    let dir = std::fs::canonicalize(&dir)
        .map_err(|e| anyhow::anyhow!("--build-context {name}: {}: {e}", dir.display()))?;
    if !dir.is_dir() {
        anyhow::bail!(
            "--build-context {name}: {} is not a directory",
            dir.display()
        );
    }
    Ok((name.to_string(), NamedContext::Dir(dir)))
}

/// Every `--build-context`, relative to `base`; a name given twice is an error.
pub fn named_contexts(
    specs: &[String],
    base: &std::path::Path,
) -> anyhow::Result<BTreeMap<String, crate::graph::NamedContext>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let (name, context) = parse_named_context(spec, base)?;
        if out.insert(name.clone(), context).is_some() {
            anyhow::bail!("--build-context {name} is given twice");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_specs() {
        assert_eq!(
            parse_secret("id=npm,src=/tmp/npmrc").unwrap(),
            ("npm".into(), SecretSource::File("/tmp/npmrc".into()))
        );
        assert_eq!(
            parse_secret("id=tok,env=GITHUB_TOKEN").unwrap(),
            ("tok".into(), SecretSource::Env("GITHUB_TOKEN".into()))
        );
        assert!(parse_secret("nonsense").is_err());
        assert!(parse_secret("id=x,bogus=1").is_err());
    }

    /// Regression: `--add-host` was not accepted (docker build's CI flag).
    #[test]
    fn add_host_specs() {
        assert_eq!(
            parse_add_host("db:10.1.2.3").unwrap(),
            ("db".into(), "10.1.2.3".into())
        );
        assert_eq!(
            parse_add_host("v6:::1").unwrap(),
            ("v6".into(), "::1".into())
        );
        assert_eq!(
            parse_add_host("db=10.0.0.1").unwrap(),
            ("db".into(), "10.0.0.1".into())
        );
        assert!(parse_add_host("db").is_err());
        assert!(parse_add_host("db:notanip").is_err());
        assert!(parse_add_host("db:host-gateway").is_err());
    }
}
