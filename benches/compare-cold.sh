#!/usr/bin/env bash
# Cold builds against BuildKit, with the caches empty, on the same machine in the same run:
# every fixture app (but heredoc, which Moby 20.10's BuildKit cannot parse), the apt-heavy
# Debian build in benches/cold/apt-heavy and the generated 10,000-file, ~120 MB context
# (benches/gen-context.py: COPY . . then RUN). Prints each tool's median wall time over N runs
# and the ratio kiln/docker, plus kiln's median user+system CPU time.
#
# What "cold" means on each side:
#   - kiln: an EMPTY state root for every timed build, so pulling the base image from the
#     registry, unpacking it and building every step are all on the clock.
#   - docker: `docker builder prune -af` and the result image removed before every timed build.
#     Docker's image store KEEPS the base images (pulled once before the runs, unpacked in its
#     overlay2 store): BuildKit only resolves their manifest and mounts them. This favours
#     docker, which is how the issue measured it.
# The tools alternate (docker first in odd runs, kiln first in even ones), and before every
# timed build the previous one's files are deleted, `sync` flushes the page cache and the
# script sleeps $SETTLE seconds: ext4 without a journal skips recently freed inodes, so file
# creation right after a big delete is slower, and writeback of the other tool's files must
# not land on this one's clock.
#
# Usage: benches/compare-cold.sh [-n N] [fixture ...]
#        fixtures: app names of fixtures/apps, apt-heavy, generated (default: all)
# Env:   SETTLE (seconds, default 5), KILN (binary), DOCKER, KILN_FLAGS (extra kiln build flags)
# Needs: root, the anchors (../shared/anchors/setup.sh: registry on 127.0.0.1:5000 as the
#        docker.io mirror, dockerd with BuildKit), python3, GNU time (/usr/bin/time), bc,
#        kiln on PATH or target/release/kiln (a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$(command -v kiln || echo target/release/kiln)}
DOCKER=${DOCKER:-/usr/bin/docker}
REG=127.0.0.1:5000
SETTLE=${SETTLE:-5}
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

# The first FROM's image (global ARG defaults substituted), to pull into docker's store.
first_base() {
  python3 - "$1" <<'PY'
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

printf '%-16s %9s %9s %7s %10s   %s\n' fixture docker kiln ratio kiln-cpu "runs (docker/kiln wall)"
for t in "${targets[@]}"; do
  ctx=$(prepare "$t")
  file=$ctx/Dockerfile
  [ "$t" = fastapi ] && file=$ctx/docker/Dockerfile
  flags=()
  if [ "$t" = mounts ]; then echo -n s3cr3t > "$WORK/token"; flags=(--secret "id=token,src=$WORK/token"); fi
  tag=kiln-cold-bench/$t:latest
  base=$(first_base "$file")
  # docker keeps its base images between runs (see the top of this file).
  [ "$base" = scratch ] || $DOCKER pull -q "$base" >/dev/null
  : > "$WORK/docker.$t"; : > "$WORK/kiln.$t"
  for run in $(seq "$RUNS"); do
    order=(docker kiln); ((run % 2)) || order=(kiln docker)
    for tool in "${order[@]}"; do
      if [ "$tool" = docker ]; then
        $DOCKER rmi -f "$tag" >/dev/null 2>&1 || true
        $DOCKER builder prune -af >/dev/null 2>&1 || true
        settle
        timed "$WORK/docker.$t" $DOCKER build --network=host "${flags[@]}" -t "$tag" -f "$file" "$ctx"
      else
        rm -rf "$WORK/kiln-root"
        settle
        # shellcheck disable=SC2086
        timed "$WORK/kiln.$t" "$KILN" build --root "$WORK/kiln-root" --registry-mirror $REG \
          --network host ${KILN_FLAGS:-} "${flags[@]}" -t "$tag" -f "$file" "$ctx"
      fi
    done
  done
  d=$(cut -d' ' -f1 "$WORK/docker.$t" | median)
  k=$(cut -d' ' -f1 "$WORK/kiln.$t" | median)
  kc=$(cut -d' ' -f2 "$WORK/kiln.$t" | median)
  runs=$(paste -d/ <(cut -d' ' -f1 "$WORK/docker.$t") <(cut -d' ' -f1 "$WORK/kiln.$t") | tr '\n' ' ')
  printf '%-16s %8.2fs %8.2fs %7s %9.2fs   %s\n' "$t" "$d" "$k" "$(echo "scale=2; $k / $d" | bc)" "$kc" "$runs"
  $DOCKER rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$WORK/kiln-root" "$ctx"
done
