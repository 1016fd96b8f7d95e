#!/usr/bin/env bash
# Cold builds against BuildKit, with the caches empty, on the same machine in the same run:
# every fixture app (but heredoc, which Moby 20.10's BuildKit cannot parse), the apt-heavy
# Debian build in benches/cold/apt-heavy and the generated 10,000-file, ~120 MB context
# (benches/gen-context.py: COPY . . then RUN). Prints each tool's median wall time over N runs
# and the ratio kiln/docker, plus kiln's median user+system CPU time.
#
# What "cold" means, chosen with BASES (every mode empties both tools' build caches and removes
# the result image before each timed build):
#   - BASES=kept (symmetric): both tools keep the base images pulled and unpacked, as a CI
#     runner with a warm image store does. docker: `docker builder prune -af`; kiln: the base
#     was pulled (and unpacked) by an untimed build, then `kiln rmi` + `kiln prune -a` drop the
#     result and every cache record and snapshot that no tagged image uses.
#   - BASES=none (symmetric): neither tool has the base images. docker: every anchor base image
#     is removed by ID (`docker rmi -f`, all its names), so it pulls and unpacks them on the
#     clock; kiln: an EMPTY state root for every timed build. Other local images built FROM a
#     base keep its layers, so docker needs no other images for this mode to mean anything.
#   - BASES=kiln-pulls (the default, and the strictest for kiln): kiln gets an empty state
#     root, docker keeps its bases unpacked (only `docker builder prune -af`). This is how the
#     issue measured it.
# A build whose log says CACHED (either tool) is not cold, and stops the script.
# The tools alternate (docker first in odd runs, kiln first in even ones), and before every
# timed build the previous one's files are deleted, `sync` flushes the page cache and the
# script sleeps $SETTLE seconds: ext4 without a journal skips recently freed inodes, so file
# creation right after a big delete is slower, and writeback of the other tool's files must
# not land on this one's clock.
#
# Usage: benches/compare-cold.sh [-n N] [fixture ...]
#        fixtures: app names of fixtures/apps, apt-heavy, generated (default: all)
# Env:   BASES (kept | none | kiln-pulls, see above), SETTLE (seconds, default 5), KILN (binary),
#        DOCKER, KILN_FLAGS (extra kiln build flags)
# Needs: root, the anchors (../shared/anchors/setup.sh: registry on 127.0.0.1:5000 as the
#        docker.io mirror, dockerd with BuildKit), python3, GNU time (/usr/bin/time), bc,
#        kiln on PATH or target/release/kiln (a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$(command -v kiln || echo target/release/kiln)}
DOCKER=${DOCKER:-/usr/bin/docker}
REG=127.0.0.1:5000
SETTLE=${SETTLE:-5}
BASES=${BASES:-kiln-pulls}
ANCHOR_BASES=(busybox:latest debian:bookworm-slim python:3.11-slim)
case $BASES in kept | none | kiln-pulls) ;; *) echo "compare-cold: BASES is kept, none or kiln-pulls" >&2; exit 2 ;; esac
RUNS=3
if [ "${1:-}" = -n ]; then RUNS=$2; shift 2; fi
for tool in /usr/bin/time bc python3 "$KILN" "$DOCKER"; do
  command -v "$tool" >/dev/null || { echo "compare-cold: missing $tool" >&2; exit 2; }
done
WORK=$(mktemp -d /var/tmp/kiln-cold-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export DOCKER_BUILDKIT=1

targets=("$@")
if ((${#targets[@]} == 0)); then
  for d in fixtures/apps/*/; do
    a=$(basename "$d"); [ "$a" = heredoc ] || targets+=("$a")
  done
  targets+=(apt-heavy generated)
fi

# The context directory and Dockerfile of a target, prepared under $WORK.
prepare() {
  local t=$1 ctx=$WORK/ctx-$1
  case $t in
    generated) python3 benches/gen-context.py "$ctx" >/dev/null ;;
    apt-heavy) cp -r benches/cold/apt-heavy "$ctx" ;;
    *) cp -r "fixtures/apps/$t" "$ctx" ;;
  esac
  echo "$ctx"
}

# Every FROM's image that is not a stage name (global ARG defaults substituted), one per line.
bases() {
  python3 - "$1" <<'PY'
import re, sys
args, stages, seen = {}, set(), False
for line in open(sys.argv[1]):
    words = line.split()
    if not words or words[0].startswith("#"):
        continue
    if words[0].upper() == "ARG" and len(words) > 1 and "=" in words[1] and not seen:
        k, v = words[1].split("=", 1)
        args[k] = v.strip('"')
    elif words[0].upper() == "FROM":
        seen = True
        rest = [w for w in words[1:] if not w.startswith("--")]
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), rest[0])
        if image.lower() not in stages and image != "scratch":
            print(image)
        if len(rest) >= 3 and rest[1].upper() == "AS":
            stages.add(rest[2].lower())
PY
}

# The steps of BuildKit's plain log ($1) that it took from its cache, but FROM: a base image
# that is present shows CACHED there while another build holds it.
cached_steps() {
  awk '/^#[0-9]+ \[/ { if ($0 ~ /\] FROM /) from[$1] = 1 }
       / CACHED$/ && !($1 in from) { print }' "$1"
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

settle() { sync; sleep "$SETTLE"; }

# One timed run of "$@"; appends "wall cpu" to file $1.
timed() {
  local out=$1; shift
  if ! /usr/bin/time -f '%e %U %S' -o "$WORK/time" "$@" >"$WORK/log" 2>&1; then
    echo "compare-cold: failed: $*" >&2; tail -20 "$WORK/log" >&2; exit 1
  fi
  awk '{printf "%s %.2f\n", $1, $2 + $3}' "$WORK/time" >> "$out"
}

echo "bases: $BASES"
printf '%-16s %9s %9s %7s %10s   %s\n' fixture docker kiln ratio kiln-cpu "runs (docker/kiln wall)"
for t in "${targets[@]}"; do
  ctx=$(prepare "$t")
  file=$ctx/Dockerfile
  [ "$t" = fastapi ] && file=$ctx/docker/Dockerfile
  flags=()
  if [ "$t" = mounts ]; then echo -n s3cr3t > "$WORK/token"; flags=(--secret "id=token,src=$WORK/token"); fi
  tag=kiln-cold-bench/$t:latest
  mapfile -t base_images < <(bases "$file")
  for b in "${base_images[@]}"; do $DOCKER pull -q "$b" >/dev/null; done
  # shellcheck disable=SC2206
  kiln_build=("$KILN" build --root "$WORK/kiln-root" --registry-mirror $REG --network host
    ${KILN_FLAGS:-} "${flags[@]}" -t "$tag" -f "$file" "$ctx")
  rm -rf "$WORK/kiln-root"
  if [ "$BASES" = kept ]; then
    # Pulls and unpacks the bases into kiln's store; the runs below drop everything else.
    "${kiln_build[@]}" >"$WORK/log" 2>&1 || { tail -20 "$WORK/log" >&2; exit 1; }
  fi
  : > "$WORK/docker.$t"; : > "$WORK/kiln.$t"
  for run in $(seq "$RUNS"); do
    order=(docker kiln); ((run % 2)) || order=(kiln docker)
    for tool in "${order[@]}"; do
      if [ "$tool" = docker ]; then
        $DOCKER rmi -f "$tag" >/dev/null 2>&1 || true
        $DOCKER builder prune -af >/dev/null 2>&1 || true
        if [ "$BASES" = none ]; then
          # By image ID, so other names of the same image (the anchors' 127.0.0.1:5000/... tags)
          # go too, and with every anchor base, since python:3.11-slim is built on
          # debian:bookworm-slim's layer: nothing of a base is left for docker to reuse.
          ids=$(for b in "${base_images[@]}" "${ANCHOR_BASES[@]}"; do
            $DOCKER image inspect -f '{{.Id}}' "$b" 2>/dev/null || true; done | sort -u)
          # Two passes: a parent image (debian under the anchors' python) goes once its child
          # has. Layers that any other local image is built on stay: run this mode on a docker
          # that holds only the anchors (`docker image prune -af` first).
          for _ in 1 2; do
            for id in $ids; do $DOCKER rmi -f "$id" >/dev/null 2>&1 || true; done
          done
        fi
        settle
        timed "$WORK/docker.$t" $DOCKER build --progress=plain --network=host "${flags[@]}" -t "$tag" -f "$file" "$ctx"
        if cached_steps "$WORK/log" | grep -q .; then
          echo "compare-cold: docker's build of $t used its cache; not a cold build:" >&2
          cached_steps "$WORK/log" >&2; exit 1
        fi
      else
        if [ "$BASES" = kept ]; then
          "$KILN" rmi --root "$WORK/kiln-root" "$tag" >/dev/null 2>&1 || true
          "$KILN" prune --root "$WORK/kiln-root" -a >/dev/null 2>&1
        else
          rm -rf "$WORK/kiln-root"
        fi
        settle
        timed "$WORK/kiln.$t" "${kiln_build[@]}"
        if grep -q CACHED "$WORK/log"; then
          echo "compare-cold: kiln's build of $t used its cache; not a cold build:" >&2
          grep CACHED "$WORK/log" >&2; exit 1
        fi
      fi
    done
  done
  d=$(cut -d' ' -f1 "$WORK/docker.$t" | median)
  k=$(cut -d' ' -f1 "$WORK/kiln.$t" | median)
  kc=$(cut -d' ' -f2 "$WORK/kiln.$t" | median)
  runs=$(paste -d/ <(cut -d' ' -f1 "$WORK/docker.$t") <(cut -d' ' -f1 "$WORK/kiln.$t") | tr '\n' ' ')
  printf '%-16s %8.2fs %8.2fs %7s %9.2fs   %s\n' "$t" "$d" "$k" "$(echo "scale=2; $k / $d" | bc)" "$kc" "$runs"
  $DOCKER rmi -f "$tag" >/dev/null 2>&1 || true
  for b in "${base_images[@]}"; do $DOCKER pull -q "$b" >/dev/null; done
  rm -rf "$WORK/kiln-root" "$ctx"
done
