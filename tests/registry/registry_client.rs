//! The distribution client against real `docker-registry` (CNCF Distribution) processes:
//! anonymous, htpasswd Basic, token auth and TLS set-ups, with images pushed by `skopeo`, and
//! fault injection through a proxy. Needs the Debian packages docker-registry, skopeo, openssl,
//! apache2-utils and busybox-static; a missing one fails the test with its name.

use std::time::{Duration, Instant};

use kiln::oci::Digest;
use kiln::registry::{Credential, RegistryClient, RegistryError, RetryPolicy};

use crate::support::layout::{self, OciLayout, PushOptions};
use crate::support::proxy::{Action, FaultProxy};
use crate::support::registry::{basic, endpoint_for, Setup, TestRegistry, TestTls, PASSWORD, USER};
use crate::support::token::{TokenIssuer, REFRESH_TOKEN};
use crate::support::{manifest_blobs, sha256sum, skopeo_raw, verify_blob, VecSink};

fn creds() -> String {
    format!("{USER}:{PASSWORD}")
}

/// Fetches every blob of an image manifest and verifies each digest; returns the blob count.
async fn pull_all_blobs(client: &RegistryClient, repo: &str, manifest: &[u8]) -> usize {
    let blobs = manifest_blobs(manifest);
    for d in &blobs {
        let mut sink = VecSink::default();
        client
            .fetch_blob(repo, d, &mut sink, &|_| {})
            .await
            .unwrap_or_else(|e| panic!("fetch {d}: {e}"));
        verify_blob(&sink.data, d).unwrap();
    }
    blobs.len()
}

// ---------------------------------------------------------------------------------------------
// Anonymous registry

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_manifest_by_tag_and_digest_and_all_blobs() {
    let reg = TestRegistry::start(Setup::Anonymous);
    let oci = OciLayout::single("v1");
    layout::push(
        &oci,
        "v1",
        &format!("{}/demo/app:v1", reg.host()),
        PushOptions::default(),
    );
    let raw = skopeo_raw(&format!("{}/demo/app:v1", reg.host()), None, None);
    let expected = sha256sum(&raw);

    let client = reg.client(None);
    client.ping(None).await.unwrap();
    let by_tag = client.get_manifest("demo/app", "v1").await.unwrap();
    assert_eq!(by_tag.bytes, raw);
    assert_eq!(by_tag.digest.to_string(), expected);
    assert_eq!(by_tag.media_type.as_deref(), Some(layout::OCI_MANIFEST));

    let by_digest = client.get_manifest("demo/app", &expected).await.unwrap();
    assert_eq!(by_digest.bytes, raw);
    assert_eq!(by_digest.digest.to_string(), expected);

    assert_eq!(pull_all_blobs(&client, "demo/app", &by_tag.bytes).await, 3);

    let missing = client.get_manifest("demo/app", "nope").await.unwrap_err();
    assert!(
        matches!(missing, RegistryError::NotFound { .. }),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_multi_arch_index_and_docker_schema2() {
    let reg = TestRegistry::start(Setup::Anonymous);
    let multi = OciLayout::multi_arch("multi");
    layout::push(
        &multi,
        "multi",
        &format!("{}/demo/multi:latest", reg.host()),
        PushOptions {
            all: true,
            ..Default::default()
        },
    );
    let single = OciLayout::single("v1");
    layout::push(
        &single,
        "v1",
        &format!("{}/demo/docker:v2s2", reg.host()),
        PushOptions {
            docker_v2s2: true,
            ..Default::default()
        },
    );
    let client = reg.client(None);

    let index = client.get_manifest("demo/multi", "latest").await.unwrap();
    assert_eq!(index.media_type.as_deref(), Some(layout::OCI_INDEX));
    let raw = skopeo_raw(&format!("{}/demo/multi:latest", reg.host()), None, None);
    assert_eq!(index.digest.to_string(), sha256sum(&raw));
    let v: serde_json::Value = serde_json::from_slice(&index.bytes).unwrap();
    let entries = v["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let mut configs = Vec::new();
    for (entry, arch) in entries.iter().zip(["amd64", "arm64"]) {
        assert_eq!(entry["platform"]["architecture"], arch);
        let digest = entry["digest"].as_str().unwrap();
        let m = client.get_manifest("demo/multi", digest).await.unwrap();
        assert_eq!(m.digest.to_string(), digest);
        assert_eq!(m.media_type.as_deref(), Some(layout::OCI_MANIFEST));
        let blobs = manifest_blobs(&m.bytes);
        let mut sink = VecSink::default();
        client
            .fetch_blob("demo/multi", &blobs[0], &mut sink, &|_| {})
            .await
            .unwrap();
        verify_blob(&sink.data, &blobs[0]).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&sink.data).unwrap();
        assert_eq!(config["architecture"], arch);
        configs.push(blobs[0].clone());
        pull_all_blobs(&client, "demo/multi", &m.bytes).await;
    }
    assert_ne!(configs[0], configs[1], "each platform has its own config");

    let docker = client.get_manifest("demo/docker", "v2s2").await.unwrap();
    assert_eq!(
        docker.media_type.as_deref(),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    let raw = skopeo_raw(&format!("{}/demo/docker:v2s2", reg.host()), None, None);
    assert_eq!(docker.digest.to_string(), sha256sum(&raw));
    assert_eq!(
        pull_all_blobs(&client, "demo/docker", &docker.bytes).await,
        3
    );
}

// ---------------------------------------------------------------------------------------------
// htpasswd Basic auth

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_missing_wrong_and_right_credentials() {
    let reg = TestRegistry::start(Setup::Htpasswd);
    let oci = OciLayout::single("v1");
    let c = creds();
    layout::push(
        &oci,
        "v1",
        &format!("{}/private/app:v1", reg.host()),
        PushOptions {
            creds: Some(&c),
            ..Default::default()
        },
    );

    let e = reg
        .client(None)
        .get_manifest("private/app", "v1")
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("kiln login"), "{e}");

    let wrong = "Wrong-Passw0rd-XYZ";
    let e = reg
        .client(Some(basic(USER, wrong)))
        .get_manifest("private/app", "v1")
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(wrong), "the password leaked: {shown}");
    assert!(shown.contains("kiln login"), "{shown}");

    let client = reg.client(Some(basic(USER, PASSWORD)));
    client.ping(None).await.unwrap();
    let m = client.get_manifest("private/app", "v1").await.unwrap();
    assert_eq!(pull_all_blobs(&client, "private/app", &m.bytes).await, 3);
}

// ---------------------------------------------------------------------------------------------
// Token auth

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_anonymous_public_credentialed_private_and_cache() {
    let issuer = TokenIssuer::start();
    let reg = TestRegistry::start(Setup::Token(&issuer));
    let oci = OciLayout::single("v1");
    let c = creds();
    for repo in ["public/app", "private/app"] {
        layout::push(
            &oci,
            "v1",
            &format!("{}/{repo}:v1", reg.host()),
            PushOptions {
                creds: Some(&c),
                ..Default::default()
            },
        );
    }

    // Anonymous pull of a public repository: one token for the manifest and its 3 blobs.
    let anon = reg.client(None);
    let before = issuer.request_count();
    let m = anon.get_manifest("public/app", "v1").await.unwrap();
    assert_eq!(pull_all_blobs(&anon, "public/app", &m.bytes).await, 3);
    let requests = issuer.requests.lock().unwrap()[before..].to_vec();
    assert_eq!(requests.len(), 1, "token not cached: {requests:?}");
    assert_eq!(
        requests[0].scopes,
        vec!["repository:public/app:pull".to_string()]
    );
    assert_eq!(requests[0].account, None);

    // A private repository is refused to anonymous clients.
    let e = anon.get_manifest("private/app", "v1").await.unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("kiln login"), "{e}");

    // Credentialed pull of the private repository, again with a single token request.
    let client = reg.client(Some(basic(USER, PASSWORD)));
    let before = issuer.request_count();
    let m = client.get_manifest("private/app", "v1").await.unwrap();
    assert_eq!(pull_all_blobs(&client, "private/app", &m.bytes).await, 3);
    let requests = issuer.requests.lock().unwrap()[before..].to_vec();
    assert_eq!(requests.len(), 1, "token not cached: {requests:?}");
    assert_eq!(requests[0].account.as_deref(), Some(USER));

    // An identity token is exchanged with the OAuth2 refresh-token grant (POST).
    let client = reg.client(Some(Credential::IdentityToken {
        username: USER.into(),
        token: REFRESH_TOKEN.into(),
    }));
    let m = client.get_manifest("private/app", "v1").await.unwrap();
    assert_eq!(pull_all_blobs(&client, "private/app", &m.bytes).await, 3);
    let e = reg
        .client(Some(Credential::IdentityToken {
            username: USER.into(),
            token: "revoked-token-XYZ".into(),
        }))
        .get_manifest("private/app", "v1")
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Token { status: 401, .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains("revoked-token-XYZ"), "{e:?}");

    // Wrong password: the token service refuses, and the error does not show the password.
    let wrong = "Wrong-Passw0rd-XYZ";
    let e = reg
        .client(Some(basic(USER, wrong)))
        .get_manifest("private/app", "v1")
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Token { status: 401, .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains(wrong), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// TLS with a test CA

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_and_without_the_ca() {
    let certs = tempfile::tempdir().unwrap();
    let tls = TestTls::generate(certs.path());
    let reg = TestRegistry::start(Setup::Tls(&tls));
    let oci = OciLayout::single("v1");
    layout::push(
        &oci,
        "v1",
        &format!("{}/demo/app:v1", reg.host()),
        PushOptions::default(),
    );

    let mut config = reg.endpoint(None);
    config.ca_file = Some(tls.ca_cert.clone());
    let client = RegistryClient::new(config).unwrap();
    let m = client.get_manifest("demo/app", "v1").await.unwrap();
    assert_eq!(pull_all_blobs(&client, "demo/app", &m.bytes).await, 3);

    // Without the CA, with the default retry policy: a certificate error is reported at once,
    // not retried with seconds of backoff.
    let mut config = reg.endpoint(None);
    config.retry = RetryPolicy::default();
    let start = Instant::now();
    let e = RegistryClient::new(config)
        .unwrap()
        .get_manifest("demo/app", "v1")
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    let text = e.to_string();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}: {text}");
    assert!(matches!(e, RegistryError::Unreachable { .. }), "{text}");
    assert!(text.contains(&reg.host()), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(text.contains("hint:") && text.contains("ca"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Faults through the proxy

/// An anonymous registry holding demo/app:v1, a proxy in front of it, and the manifest.
async fn faulty_setup() -> (TestRegistry, FaultProxy, RegistryClient, Vec<u8>) {
    let reg = TestRegistry::start(Setup::Anonymous);
    let oci = OciLayout::single("v1");
    layout::push(
        &oci,
        "v1",
        &format!("{}/demo/app:v1", reg.host()),
        PushOptions::default(),
    );
    let proxy = FaultProxy::start(reg.port);
    let client = RegistryClient::new(endpoint_for(&proxy.host(), true, None)).unwrap();
    let manifest = reg
        .client(None)
        .get_manifest("demo/app", "v1")
        .await
        .unwrap();
    (reg, proxy, client, manifest.bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_server_errors_are_retried() {
    let (_reg, proxy, client, manifest) = faulty_setup().await;
    proxy.add_rule(
        "",
        2,
        Action::Respond {
            status: 500,
            headers: vec![],
        },
    );
    let m = client.get_manifest("demo/app", "v1").await.unwrap();
    assert_eq!(m.bytes, manifest);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen.iter().filter(|s| s.faulted).count(), 2);

    // More failures than attempts: a Status error naming the registry.
    proxy.add_rule(
        "/manifests/",
        100,
        Action::Respond {
            status: 503,
            headers: vec![],
        },
    );
    let e = client.get_manifest("demo/app", "v1").await.unwrap_err();
    assert!(
        matches!(e, RegistryError::Status { status: 503, .. }),
        "{e}"
    );
    assert!(e.to_string().contains(&proxy.host()), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_429_honours_retry_after() {
    let (_reg, proxy, client, manifest) = faulty_setup().await;
    proxy.add_rule(
        "/manifests/",
        1,
        Action::Respond {
            status: 429,
            headers: vec![("Retry-After".into(), "1".into())],
        },
    );
    let start = Instant::now();
    let m = client.get_manifest("demo/app", "v1").await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(m.bytes, manifest);
    assert!(
        elapsed >= Duration::from_secs(1),
        "retried after {elapsed:?}"
    );
    assert_eq!(proxy.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_cut_blob_resumes_with_range() {
    let (_reg, proxy, client, manifest) = faulty_setup().await;
    let blobs = manifest_blobs(&manifest);
    let layer = &blobs[1]; // the busybox layer, about a megabyte
    const K: usize = 100_000;
    proxy.add_rule(&layer.to_string(), 1, Action::CutAfter(K));
    let mut sink = VecSink::default();
    let progress = std::sync::atomic::AtomicU64::new(0);
    client
        .fetch_blob("demo/app", layer, &mut sink, &|n| {
            progress.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        })
        .await
        .unwrap();
    verify_blob(&sink.data, layer).unwrap();
    assert_eq!(
        sink.resets, 0,
        "the registry honours Range; no restart expected"
    );
    assert_eq!(
        progress.load(std::sync::atomic::Ordering::SeqCst),
        sink.data.len() as u64
    );
    let seen = proxy.seen();
    let blob_requests: Vec<_> = seen.iter().filter(|s| s.path.contains("/blobs/")).collect();
    assert_eq!(blob_requests.len(), 2, "{seen:?}");
    assert_eq!(blob_requests[0].header("range"), None);
    assert_eq!(
        blob_requests[1].header("range"),
        Some(format!("bytes={K}-").as_str()),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_registry_stopped_mid_pull_is_unreachable() {
    let mut reg = TestRegistry::start(Setup::Anonymous);
    let oci = OciLayout::single("v1");
    layout::push(
        &oci,
        "v1",
        &format!("{}/demo/app:v1", reg.host()),
        PushOptions::default(),
    );
    let client = reg.client(None);
    let m = client.get_manifest("demo/app", "v1").await.unwrap();
    let blobs = manifest_blobs(&m.bytes);
    reg.stop();
    let mut sink = VecSink::default();
    let e = client
        .fetch_blob("demo/app", &blobs[1], &mut sink, &|_| {})
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, RegistryError::Unreachable { .. }), "{text}");
    assert!(e.is_transient());
    assert!(text.contains(&reg.host()), "{text}");
    assert!(text.contains("hint:"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_wrong_content_is_detected() {
    let (_reg, proxy, client, manifest) = faulty_setup().await;
    let blobs = manifest_blobs(&manifest);

    // Blob: the client streams what it gets; the sink owner's verification catches it.
    proxy.add_rule(&blobs[2].to_string(), 1, Action::Corrupt);
    let mut sink = VecSink::default();
    client
        .fetch_blob("demo/app", &blobs[2], &mut sink, &|_| {})
        .await
        .unwrap();
    let e = verify_blob(&sink.data, &blobs[2]).unwrap_err();
    assert!(e.contains("mismatch"), "{e}");

    // Manifest by digest: the client itself refuses it.
    let digest = Digest::of(&manifest);
    proxy.add_rule("/manifests/sha256:", 1, Action::Corrupt);
    let e = client
        .get_manifest("demo/app", &digest.to_string())
        .await
        .unwrap_err();
    match &e {
        RegistryError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &digest);
            assert_ne!(actual, &digest);
        }
        other => panic!("expected DigestMismatch, got {other}"),
    }
    assert!(e.to_string().contains(&proxy.host()), "{e}");
}
