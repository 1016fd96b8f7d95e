#!/usr/bin/env bash
# Rootless against root kiln, on the same machine in the same run: each fixture app built with
# the cache off (`--no-cache`, base image already in each state root), alternating root and
# rootless, ROUNDS times; prints the median seconds of each and the rootless/root ratio.
#
# Usage: benches/compare-rootless.sh [APP ...]   (default: the fixtures that need no secret or
#        Debian mirror)
# Needs: root (to run the rootless side as USER with `runuser`), USER with a range in
# /etc/subuid and /etc/subgid, uidmap, the offline set-up (bash scripts/offline-setup.sh: a
# registry on 127.0.0.1:5000 and a wheel index on 127.0.0.1:8081), kiln at $KILN or
# target/release/kiln.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=$(realpath "${KILN:-target/release/kiln}")
USER_NAME=${ROOTLESS_USER:-kilnrootless}
ROUNDS=${ROUNDS:-3}
MIRROR=127.0.0.1:5000

id "$USER_NAME" >/dev/null 2>&1 || {
  useradd -m "$USER_NAME"
  usermod --add-subuids 200000-265535 --add-subgids 200000-265535 "$USER_NAME"
}
WORK=$(mktemp -d /var/tmp/kiln-rootless-bench.XXXXXX)
chmod 755 "$WORK"
# Root removes it all, the files the rootless side made as subordinate IDs included.
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/user"
chown "$USER_NAME:" "$WORK/user"

targets=("$@")
((${#targets[@]})) || targets=(busybox multistage scratch kitchen debian-paths venv wheels django fastapi)
declare -A DOCKERFILE=([fastapi]=docker/Dockerfile)

as_root() { KILN_ROOT=$WORK/root-state "$KILN" "$@"; }
as_user() { runuser -u "$USER_NAME" -- env HOME="$WORK/user" KILN_ROOT="$WORK/user/state" "$KILN" "$@"; }
now() { date +%s.%N; }
timed() { local t0; sync; sleep 0.5; t0=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; echo "$(now) - $t0" | bc; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-14s %9s %9s %7s\n' fixture root rootless ratio
for t in "${targets[@]}"; do
  ctx=$WORK/user/ctx-$t
  runuser -u "$USER_NAME" -- cp -r "fixtures/apps/$t" "$ctx"
  file=$ctx/${DOCKERFILE[$t]:-Dockerfile}
  build=(build --registry-mirror "$MIRROR" -f "$file" -t "rootless-bench/$t" "$ctx")
  # Warm: bases pulled and unpacked in both state roots.
  as_root "${build[@]}" >/dev/null 2>&1
  as_user "${build[@]}" >/dev/null 2>&1
  root_times=() user_times=()
  for _ in $(seq "$ROUNDS"); do
    root_times+=("$(timed as_root "${build[@]}" --no-cache)")
    user_times+=("$(timed as_user "${build[@]}" --no-cache)")
  done
  r=$(median "${root_times[@]}") u=$(median "${user_times[@]}")
  printf '%-14s %9.2f %9.2f %7.2f\n' "$t" "$r" "$u" "$(echo "scale=2; $u / $r" | bc)"
done
