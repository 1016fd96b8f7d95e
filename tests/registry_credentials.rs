//! Credential lookup end to end: Docker's config.json (`auths` with base64 `auth`, `credHelpers`,
//! `credsStore`) found through `DOCKER_CONFIG`, containers' auth.json through
//! `REGISTRY_AUTH_FILE`, and a fake `docker-credential-kilntest` helper on `PATH`, each used
//! against an htpasswd-protected `docker-registry`.
//!
//! Environment changes are process-wide, so this binary holds a single test that sets the
//! variables before any runtime thread starts.

mod support;

use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;
use kiln::registry::{Credential, CredentialSources, RegistryError};

use support::layout::{self, OciLayout, PushOptions};
use support::registry::{Setup, TestRegistry, PASSWORD, USER};

/// Answers `get` for `127.0.0.1:*` servers with USER / PASSWORD, `<token>` for `token.invalid`,
/// and "credentials not found" otherwise; logs what it was asked.
fn helper_script(log: &std::path::Path) -> String {
    format!(
        r#"#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> '{log}'
case "$server" in
  127.0.0.1:*) printf '{{"ServerURL":"%s","Username":"{USER}","Secret":"{PASSWORD}"}}\n' "$server" ;;
  token.invalid) printf '{{"ServerURL":"%s","Username":"<token>","Secret":"refresh-XYZ"}}\n' "$server" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"#,
        log = log.display()
    )
}

#[test]
fn credentials_from_docker_config_auth_file_and_helpers() {
    let reg = TestRegistry::start(Setup::Htpasswd);
    let host = reg.host();
    let oci = OciLayout::single("v1");
    let creds = format!("{USER}:{PASSWORD}");
    layout::push(
        &oci,
        "v1",
        &format!("{host}/private/app:v1"),
        PushOptions {
            creds: Some(&creds),
            ..Default::default()
        },
    );

    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper_log = tmp.path().join("helper.log");
    let helper = bin.join("docker-credential-kilntest");
    std::fs::write(&helper, helper_script(&helper_log)).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();

    // 1. DOCKER_CONFIG/config.json with a base64 `auth` entry for the registry.
    let docker_dir = tmp.path().join("docker");
    std::fs::create_dir(&docker_dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        docker_dir.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let auth_json = tmp.path().join("auth.json");
    std::fs::write(
        &auth_json,
        format!(r#"{{"auths":{{"http://{host}/v2/":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    // Single test in this binary, no other threads yet: changing the environment is safe.
    std::env::set_var("DOCKER_CONFIG", &docker_dir);
    std::env::set_var("REGISTRY_AUTH_FILE", &auth_json);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.clone()];
    dirs.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(dirs).unwrap());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let expected = Credential::Basic {
        username: USER.into(),
        password: PASSWORD.into(),
    };
    let sources = CredentialSources::from_env();
    let found = sources.lookup(&host).unwrap();
    assert_eq!(found.as_ref(), Some(&expected), "from config.json auths");
    assert_eq!(sources.lookup("other.invalid").unwrap(), None);
    let client = reg.client(found);
    rt.block_on(async {
        let m = client.get_manifest("private/app", "v1").await.unwrap();
        assert_eq!(m.digest, kiln::oci::Digest::of(&m.bytes));
    });

    // 2. containers' auth.json alone (no Docker config), keyed by a URL.
    let only_auth_file = CredentialSources {
        docker_config: None,
        auth_file: Some(auth_json.clone()),
    };
    assert_eq!(
        only_auth_file.lookup(&host).unwrap().as_ref(),
        Some(&expected)
    );

    // 3. credHelpers for this registry beat `auths`; credsStore is the fallback for others.
    std::fs::write(
        docker_dir.join("config.json"),
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}},"credHelpers":{{"{host}":"kilntest"}},"credsStore":"kilntest"}}"#,
            base64::engine::general_purpose::STANDARD.encode("nobody:wrong")
        ),
    )
    .unwrap();
    let sources = CredentialSources::from_env();
    let found = sources.lookup(&host).unwrap();
    assert_eq!(found.as_ref(), Some(&expected), "from the helper");
    let asked = std::fs::read_to_string(&helper_log).unwrap();
    assert_eq!(asked.lines().collect::<Vec<_>>(), vec![host.as_str()]);
    let client = reg.client(found);
    rt.block_on(async {
        client.get_manifest("private/app", "v1").await.unwrap();
    });
    // The store says "credentials not found": no credentials, not an error.
    assert_eq!(sources.lookup("unknown.invalid").unwrap(), None);
    // `<token>` from a helper is an identity token.
    assert_eq!(
        sources.lookup("token.invalid").unwrap(),
        Some(Credential::IdentityToken {
            username: String::new(),
            token: "refresh-XYZ".into()
        })
    );

    // 4. Without any credentials the registry refuses, pointing at `kiln login`.
    let client = reg.client(None);
    rt.block_on(async {
        let e = client.get_manifest("private/app", "v1").await.unwrap_err();
        assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
        assert!(e.to_string().contains("kiln login"), "{e}");
    });
}
