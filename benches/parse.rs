//! Parser throughput on a generated, realistic 10,000-instruction Dockerfile: `parser::parse`
//! (text → AST) and `parse_dockerfile` (text → typed instructions), in bytes per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::diag::SourceFile;
use kiln::dockerfile::{parse_dockerfile, parser};
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

const INSTRUCTIONS: usize = 10_000;

/// A multi-stage Dockerfile mixing every common shape: ARG/FROM, ENV and multi-pair LABEL, RUN with
/// continuations and mounts, COPY/ADD with flags, heredocs, JSON CMD/ENTRYPOINT, and comments.
fn generate() -> String {
    let mut out = String::from(
        "# syntax=docker/dockerfile:1\n# escape=\\\n\nARG BASE=debian:bookworm-slim\n",
    );
    let mut count = 1;
    let mut stage = 0;
    while count < INSTRUCTIONS {
        let i = count;
        match (i - 1) % 40 {
            0 => {
                stage += 1;
                let _ = writeln!(
                    out,
                    "\n# stage {stage}\nFROM --platform=$BUILDPLATFORM ${{BASE}} AS stage{stage}"
                );
            }
            1 | 21 => {
                let _ = writeln!(out, "ARG VERSION_{i}=1.{i}.0");
            }
            2 | 22 => {
                let _ = writeln!(
                    out,
                    "ENV PATH=/opt/app{i}/bin:$PATH \\\n    APP_HOME=/opt/app{i} LANG=C.UTF-8"
                );
            }
            3 => {
                let _ = writeln!(
                    out,
                    "LABEL org.opencontainers.image.title=\"app {i}\" \\\n      org.opencontainers.image.version=\"${{VERSION_{}}}\" \\\n      maintainer=\"team@example.com\" tier=backend",
                    i - 2
                );
            }
            4 | 14 | 24 | 34 => {
                let _ = writeln!(
                    out,
                    "# Install build dependencies for step {i}\nRUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n    --mount=type=bind,source=deps{i}.txt,target=/tmp/deps.txt \\\n    apt-get update && \\\n    apt-get install -y --no-install-recommends \\\n        ca-certificates curl git build-essential && \\\n    rm -rf /var/lib/apt/lists/*"
                );
            }
            5 | 15 | 25 => {
                let _ = writeln!(
                    out,
                    "COPY --chown=app:app --chmod=0644 --link src/{i}/ /opt/app/src/{i}/"
                );
            }
            6 | 26 => {
                let _ = writeln!(
                    out,
                    "COPY --from=stage{} /opt/app/bin/tool /usr/local/bin/tool{i}",
                    stage.max(1)
                );
            }
            7 => {
                let _ = writeln!(out, "ADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://example.com/pkg{i}.tar.gz /tmp/");
            }
            8 | 28 => {
                let _ = writeln!(
                    out,
                    "RUN <<EOF\nset -eux\necho building {i}\nmake -j\"$(nproc)\" install PREFIX=/opt/app{i}\nEOF"
                );
            }
            9 => {
                let _ = writeln!(
                    out,
                    "COPY <<-EOT /etc/app/config{i}.ini\n\t[server]\n\tport = {}\n\tEOT",
                    8000 + i % 1000
                );
            }
            10 | 30 => {
                let _ = writeln!(out, "WORKDIR /opt/app{i}");
            }
            11 => {
                let _ = writeln!(out, "USER app:app");
            }
            12 => {
                let _ = writeln!(out, "EXPOSE 8080/tcp 9090/udp");
            }
            13 => {
                let _ = writeln!(out, "HEALTHCHECK --interval=30s --timeout=5s --retries=3 \\\n  CMD [\"curl\", \"-fsS\", \"http://localhost:8080/health\"]");
            }
            16 | 36 => {
                let _ = writeln!(out, "RUN set -eux; \\\n    # a comment inside a continuation\n    for f in a b c; do echo \"$f\" > /tmp/$f{i}; done");
            }
            17 => {
                let _ = writeln!(out, "VOLUME [\"/data{i}\", \"/logs\"]");
            }
            18 => {
                let _ = writeln!(out, "SHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]");
            }
            19 => {
                let _ = writeln!(out, "ENTRYPOINT [\"/usr/local/bin/entrypoint.sh\", \"--config\", \"/etc/app/config{i}.ini\"]");
            }
            20 | 39 => {
                let _ = writeln!(out, "CMD [\"serve\", \"--port\", \"8080\"]");
            }
            27 => {
                let _ = writeln!(out, "STOPSIGNAL SIGTERM");
            }
            29 => {
                let _ = writeln!(out, "ONBUILD RUN echo triggered {i}");
            }
            _ => {
                let _ = writeln!(
                    out,
                    "RUN echo step {i} && test -d /opt/app || mkdir -p /opt/app"
                );
            }
        }
        count += 1;
    }
    out
}

fn mb_per_s(bytes: usize, f: impl Fn()) -> f64 {
    // Warm up, then time enough iterations for a stable number.
    f();
    let start = Instant::now();
    let mut iters = 0u32;
    while start.elapsed().as_secs_f64() < 2.0 {
        f();
        iters += 1;
    }
    bytes as f64 * f64::from(iters) / start.elapsed().as_secs_f64() / 1e6
}

fn bench_parse(c: &mut Criterion) {
    let text = generate();
    let source = SourceFile::new("Dockerfile", text);
    let bytes = source.text().len();
    let ast = parser::parse(&source).expect("generated Dockerfile parses");
    let df = parse_dockerfile(&source).expect("generated Dockerfile converts");
    println!(
        "generated Dockerfile: {} instructions, {} stages, {} lines, {:.2} MB",
        ast.nodes.len(),
        df.stages.len(),
        source.line_count(),
        bytes as f64 / 1e6
    );

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("parser::parse", |b| {
        b.iter(|| parser::parse(black_box(&source)))
    });
    group.bench_function("parse_dockerfile", |b| {
        b.iter(|| parse_dockerfile(black_box(&source)))
    });
    group.finish();

    // `cargo bench` passes `--bench`; under `cargo test` the benchmarks only run once, so skip timing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ast_rate = mb_per_s(bytes, || {
        black_box(parser::parse(black_box(&source)).ok());
    });
    let full_rate = mb_per_s(bytes, || {
        black_box(parse_dockerfile(black_box(&source)).ok());
    });
    println!("parser::parse:    {ast_rate:.1} MB/s");
    println!("parse_dockerfile: {full_rate:.1} MB/s");
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
