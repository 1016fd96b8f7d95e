#!/usr/bin/env bash
# The layer cache against BuildKit, on the same machine in the same run: a generated 10,000-file,
# ~120 MB context (benches/gen-context.py) and the fixture apps, each built cold, rebuilt with no
# change (fully cached), and rebuilt after one file changed — with `docker build` (BuildKit from
# ../shared/anchors/setup.sh) and with kiln. Prints seconds and the kiln/docker ratio.
#
# Usage: benches/compare-cache.sh [generated|APP ...]   (default: generated and every fixture app)
# Needs: root, the anchors (registry on 127.0.0.1:5000 as docker.io mirror, dockerd), python3,
# kiln on PATH or target/release/kiln.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$(command -v kiln || echo target/release/kiln)}
DOCKER=${DOCKER:-/usr/bin/docker}
REG=127.0.0.1:5000
WORK=$(mktemp -d /var/tmp/kiln-cache-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export DOCKER_BUILDKIT=1

declare -A DOCKERFILE=( [fastapi]=docker/Dockerfile )
# The file each "one file changed" rebuild touches (an app source file a COPY selects).
declare -A CHANGE=( [generated]=src/pkg05/mod3/file305.py [django]=manage.py [fastapi]=app/main.py
  [flask-debian]=app.py [multistage]=src/a.txt [busybox]=files/one.txt [scratch]=hello.txt [kitchen]=src/main.py [venv]=app/main.py [debian-paths]=tool.sh [context-edge]=lib/node_modules/y/i.js [django-gunicorn]=mysite/urls.py [wheels]=app.py )

targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(generated)
  for d in fixtures/apps/*/; do
    a=$(basename "$d"); [ "$a" = heredoc ] || targets+=("$a")
  done
fi

now() { date +%s.%N; }
# Each timed build starts with the other tool's writes flushed, so neither pays for the other's
# page-cache writeback (a 120 MB COPY leaves a lot of it).
timed() { local t0; sync; sleep 0.5; t0=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; echo "$(now) - $t0" | bc; }
ratio() { echo "scale=2; $2 / $1" | bc; }

printf '%-14s %-9s %9s %9s %7s\n' context build docker kiln ratio
for t in "${targets[@]}"; do
  ctx=$WORK/$t
  if [ "$t" = generated ]; then
    python3 benches/gen-context.py "$ctx" >/dev/null
  else
    cp -r "fixtures/apps/$t" "$ctx"
  fi
  file=$ctx/${DOCKERFILE[$t]:-Dockerfile}
  change=$ctx/${CHANGE[$t]:-Dockerfile}
  [ -e "$change" ] || change=$ctx/Dockerfile
  flags=""
  if [ "$t" = mounts ]; then echo -n s3cr3t > "$WORK/token"; flags="--secret id=token,src=$WORK/token"; fi
  tag=kiln-cache-bench/$t:latest
  kroot=$WORK/kiln-root-$t
  # Base images pulled on both sides first; then empty build caches.
  # The first FROM's image, with the global ARG defaults before it substituted (FROM python:${PY}-slim).
  base=$(python3 - "$file" <<'PY'
import re, sys
args = {}
for line in open(sys.argv[1]):
    words = line.split()
    if not words or words[0].startswith("#"):
        continue
    if words[0].upper() == "ARG" and "=" in words[1]:
        k, v = words[1].split("=", 1)
        args[k] = v.strip('"')
    elif words[0].upper() == "FROM":
        image = next(w for w in words[1:] if not w.startswith("--"))
        print(re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), image))
        break
PY
)
  $DOCKER pull -q "$base" >/dev/null 2>&1 || true
  # kiln: pulled and unpacked (a container started on it), as docker's pull leaves it.
  if [ "$base" != scratch ]; then
    $KILN pull --root "$kroot" --registry-mirror $REG "$base" >/dev/null 2>&1 || true
    $KILN run --rm --root "$kroot" "docker.io/library/${base}" true >/dev/null 2>&1 || true
  fi
  $DOCKER builder prune -af >/dev/null 2>&1 || true
  # shellcheck disable=SC2086
  dc=$(timed $DOCKER build --network=host $flags -t "$tag" -f "$file" "$ctx")
  # shellcheck disable=SC2086
  kc=$(timed $KILN build --root "$kroot" --registry-mirror $REG --network host $flags -t "$tag" -f "$file" "$ctx")
  # shellcheck disable=SC2086
  dw=$(timed $DOCKER build --network=host $flags -t "$tag" -f "$file" "$ctx")
  # shellcheck disable=SC2086
  kw=$(timed $KILN build --root "$kroot" --registry-mirror $REG --network host $flags -t "$tag" -f "$file" "$ctx")
  echo "# changed" >> "$change"
  # shellcheck disable=SC2086
  d1=$(timed $DOCKER build --network=host $flags -t "$tag" -f "$file" "$ctx")
  echo "# changed again" >> "$change"
  # shellcheck disable=SC2086
  k1=$(timed $KILN build --root "$kroot" --registry-mirror $REG --network host $flags -t "$tag" -f "$file" "$ctx")
  printf '%-14s %-9s %9.2f %9.2f %7s\n' "$t" cold "$dc" "$kc" "$(ratio "$dc" "$kc")"
  printf '%-14s %-9s %9.2f %9.2f %7s\n' "$t" cached "$dw" "$kw" "$(ratio "$dw" "$kw")"
  printf '%-14s %-9s %9.2f %9.2f %7s\n' "$t" one-file "$d1" "$k1" "$(ratio "$d1" "$k1")"
  $DOCKER rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$kroot" "$ctx"
done
