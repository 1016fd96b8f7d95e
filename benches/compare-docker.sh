#!/usr/bin/env bash
# Builds each fixture app with `docker build` (BuildKit, from ../shared/anchors/setup.sh) and with
# kiln, on the same machine in the same run; prints the time of each and their ratio, and compares
# image configs and file trees. Differences are printed; the exit status is non-zero if any.
#
# Usage: benches/compare-docker.sh [fixture ...]     (default: all of fixtures/apps)
# Needs: root, the anchors (registry on 127.0.0.1:5000 as docker.io mirror, dockerd), kiln on PATH
# or target/release/kiln, umoci, jq.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$(command -v kiln || echo target/release/kiln)}
DOCKER=${DOCKER:-/usr/bin/docker}
REG=127.0.0.1:5000
ROOT=$(mktemp -d /var/tmp/kiln-compare.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
export DOCKER_BUILDKIT=1

declare -A DOCKERFILE=( [fastapi]=fixtures/apps/fastapi/docker/Dockerfile )
declare -A CONTEXT=( [fastapi]=fixtures/apps/fastapi )
declare -A BUILD_FLAGS=( [mounts]="--secret id=token,src=$ROOT/token" )
echo -n s3cr3t > "$ROOT/token"

apps=("$@")
if ((${#apps[@]} == 0)); then
  # heredoc: Moby 20.10's BuildKit predates heredocs (the Dockerfile reference is the authority).
  for d in fixtures/apps/*/; do [ "$(basename "$d")" = heredoc ] || apps+=("$(basename "$d")"); done
fi

now() { date +%s.%N; }
failures=0
printf '%-14s %10s %10s %7s  %s\n' fixture docker kiln ratio differences
for app in "${apps[@]}"; do
  ctx=${CONTEXT[$app]:-fixtures/apps/$app}
  file=${DOCKERFILE[$app]:-$ctx/Dockerfile}
  flags=${BUILD_FLAGS[$app]:-}
  tag=kiln-compare/$app:latest
  # Warm-up (pulls and unpacks base images on both sides), then timed builds with no cache.
  # shellcheck disable=SC2086
  $DOCKER build -q --network=host $flags -t "$tag" -f "$file" "$ctx" >/dev/null
  # shellcheck disable=SC2086
  $KILN build -q --root "$ROOT/kiln" --registry-mirror $REG --network host $flags -t "$tag" -f "$file" "$ctx" >/dev/null
  $DOCKER builder prune -af >/dev/null 2>&1 || true
  t0=$(now)
  # shellcheck disable=SC2086
  $DOCKER build -q --network=host --no-cache $flags -t "$tag" -f "$file" "$ctx" >/dev/null
  t1=$(now)
  # shellcheck disable=SC2086
  $KILN build -q --root "$ROOT/kiln" --registry-mirror $REG --network host --no-cache $flags -t "$tag" -f "$file" "$ctx" >/dev/null
  t2=$(now)
  d=$(echo "$t1 - $t0" | bc); k=$(echo "$t2 - $t1" | bc); r=$(echo "scale=2; $k / $d" | bc)

  # Configs: the fields a user sees.
  fields='{User: (.User // ""), ExposedPorts, Env, Entrypoint, Cmd, Volumes, WorkingDir: (.WorkingDir // ""), Labels, StopSignal, Healthcheck, Shell, OnBuild}'
  $DOCKER image inspect "$tag" | jq -S ".[0].Config | $fields" > "$ROOT/docker-config.json"
  $KILN inspect --root "$ROOT/kiln" "$tag" | jq -S ".config.config | $fields" > "$ROOT/kiln-config.json"
  diffs=""
  if ! diff -u "$ROOT/docker-config.json" "$ROOT/kiln-config.json" > "$ROOT/config.diff"; then
    diffs+="config "
  fi
  # File trees: paths, types, modes, owners and sizes (not times).
  cid=$($DOCKER create "$tag" /bin/true 2>/dev/null || $DOCKER create --entrypoint /bin/true "$tag")
  mkdir -p "$ROOT/d" && $DOCKER export "$cid" | tar -x -C "$ROOT/d" && $DOCKER rm "$cid" >/dev/null
  umoci unpack --image "$ROOT/kiln/oci:docker.io/$tag" "$ROOT/k" >/dev/null
  list() { (cd "$1" && find . -path ./proc -prune -o -path ./sys -prune -o -path ./dev -prune -o -path ./etc/hosts -prune -o -path ./etc/resolv.conf -prune -o -path ./etc/hostname -prune -o -path ./.dockerenv -prune -o -path ./etc/mtab -prune -o -path . -o -type d -printf '%p %y %m %u:%g\n' -o -printf '%p %y %m %u:%g %s\n' | sort); }
  # `docker create` adds /etc (for its hosts/resolv.conf mounts) even to scratch images.
  list "$ROOT/d" | grep -v '^./etc d ' > "$ROOT/docker-tree.txt"; list "$ROOT/k/rootfs" | grep -v '^./etc d ' > "$ROOT/kiln-tree.txt"
  if ! diff -u "$ROOT/docker-tree.txt" "$ROOT/kiln-tree.txt" > "$ROOT/tree.diff"; then
    diffs+="tree($(grep -c '^[-+][^-+]' "$ROOT/tree.diff"))"
  fi
  printf '%-14s %9.2fs %9.2fs %7s  %s\n' "$app" "$d" "$k" "$r" "${diffs:-none}"
  if [ -n "$diffs" ]; then
    failures=$((failures + 1))
    sed 's/^/    /' "$ROOT/config.diff" | head -40
    grep '^[-+][^-+]' "$ROOT/tree.diff" | head -20 | sed 's/^/    /'
  fi
  rm -rf "$ROOT/d" "$ROOT/k"
done
exit $((failures > 0))
