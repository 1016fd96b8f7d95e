#!/usr/bin/env bash
# Build + push of a fixture app to the anchors' local registry: `docker build` + `docker push`
# (BuildKit, from ../shared/anchors/setup.sh) against `kiln build --push`, on the same machine in the
# same run; prints both times and their ratio. Each side pushes to its own fresh repository, so
# the layers the app adds are really uploaded (the base image's layers are mounted or skipped by
# both, as a CI push to the registry the base came from would be).
#
# Usage: benches/compare-push.sh [fixture ...]     (default: django)
# Needs: root, the anchors (registry on 127.0.0.1:5000 as docker.io mirror, dockerd), kiln on PATH
# or target/release/kiln.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$(command -v kiln || echo target/release/kiln)}
DOCKER=${DOCKER:-/usr/bin/docker}
REG=127.0.0.1:5000
ROOT=$(mktemp -d /var/tmp/kiln-compare-push.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
export DOCKER_BUILDKIT=1
declare -A DOCKERFILE=( [fastapi]=fixtures/apps/fastapi/docker/Dockerfile )
declare -A CONTEXT=( [fastapi]=fixtures/apps/fastapi )

apps=("$@")
((${#apps[@]})) || apps=(django)
now() { date +%s.%N; }
printf '%-12s %12s %12s %7s\n' fixture docker kiln ratio
for app in "${apps[@]}"; do
  ctx=${CONTEXT[$app]:-fixtures/apps/$app}
  file=${DOCKERFILE[$app]:-$ctx/Dockerfile}
  run=$(date +%s%N)
  # Warm-up: base images pulled and unpacked on both sides; build caches then dropped.
  $DOCKER build -q --network=host -t "warm/$app" -f "$file" "$ctx" >/dev/null
  $KILN build -q --root "$ROOT/kiln" --registry-mirror $REG --network host -t "warm/$app" -f "$file" "$ctx" >/dev/null
  $DOCKER builder prune -af >/dev/null 2>&1 || true
  t0=$(now)
  $DOCKER build -q --network=host --no-cache -t "$REG/bench-docker-$run/$app:1" -f "$file" "$ctx" >/dev/null
  $DOCKER push -q "$REG/bench-docker-$run/$app:1" >/dev/null
  t1=$(now)
  $KILN build -q --root "$ROOT/kiln" --registry-mirror $REG --insecure-registry $REG --network host --no-cache \
    --push -t "$REG/bench-kiln-$run/$app:1" -f "$file" "$ctx" >/dev/null
  t2=$(now)
  d=$(echo "$t1 - $t0" | bc); k=$(echo "$t2 - $t1" | bc); r=$(echo "scale=2; $k / $d" | bc)
  printf '%-12s %11.2fs %11.2fs %7s\n' "$app" "$d" "$k" "$r"
  $DOCKER rmi -f "$REG/bench-docker-$run/$app:1" "warm/$app" >/dev/null 2>&1 || true
done
