#!/usr/bin/env bash
# Everything the README's Quick start needs on a machine whose builds cannot reach Docker Hub or
# PyPI, made here from Debian packages (with internet access `kiln build` needs none of it):
#   - base images in an OCI layout: debian:bookworm-slim (debootstrap --variant=minbase),
#     python:3.11-slim (python3, pip and venv from Debian on top of it, pip pointed at the wheel
#     index below) and busybox:latest (busybox-static); layers written by umoci
#   - a registry on 127.0.0.1:5000 (Debian's docker-registry) holding them, the Docker Hub mirror
#     for `kiln build --registry-mirror 127.0.0.1:5000`
#   - a wheel index on 127.0.0.1:8081 (`python3 -m http.server`) with the wheels the examples'
#     requirements need, downloaded from PyPI once
# Idempotent: what is done or already running is left alone (a registry or wheel index already on
# those ports is used as it is). Everything lives under $KILN_OFFLINE_STATE (/var/tmp/kiln-offline).
#
# Usage (as root):
#   scripts/offline-setup.sh                     all of the above; installs its apt packages
#   scripts/offline-setup.sh stop                stops the servers this script started
#   scripts/offline-setup.sh bases DIR           only the base-image layout, in DIR/layout
#   scripts/offline-setup.sh wheels DIR REQ...   only the wheels for the requirement files, in DIR
# The last two install nothing; tests/support/python_base.rs makes its bases with them.
#
# Environment: KILN_OFFLINE_STATE, KILN_OFFLINE_REGISTRY (host:port, 127.0.0.1:5000),
# KILN_OFFLINE_WHEELS_PORT (8081), KILN_DEBIAN_MIRROR (http://deb.debian.org/debian).
set -euo pipefail

STATE=${KILN_OFFLINE_STATE:-/var/tmp/kiln-offline}
REG=${KILN_OFFLINE_REGISTRY:-127.0.0.1:5000}
WHEELS_PORT=${KILN_OFFLINE_WHEELS_PORT:-8081}
MIRROR=${KILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# As the official python image ships them.
PYTHON_PACKAGES="python3 python3-pip python3-venv ca-certificates"
# The wheel index the python image's pip reads; the image is built for the default port and
# re-tagged at push time for another one.
DEFAULT_WHEELS_URL=http://127.0.0.1:8081/
# Layout tag, repository in the registry.
IMAGES=("debian library/debian:bookworm-slim" "python library/python:3.11-slim" "busybox library/busybox:latest")

log() { printf '[offline-setup] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# command:package pairs that must be on PATH; fails naming the packages to install.
require() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    ((${#missing[@]} == 0)) || die "missing tools: apt-get install -y ${missing[*]}"
}

# Detaches whatever a killed debootstrap left mounted under $1 (its /proc, /sys), deepest first,
# so removing the tree never walks into the host's.
unmount_under() {
    local dir mp
    dir=$(realpath -m "$1")
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
        awk '{ print gsub("/", "/"), $0 }' | sort -rn | cut -d' ' -f2- |
        while read -r mp; do umount -l "$mp" || true; done
}

remove_tree() {
    [ -e "$1" ] || return 0
    unmount_under "$1"
    rm -rf --one-file-system "$1"
}

# What the slim images leave out: downloaded packages, package lists and apt's caches (files
# only: apt's partial/ directories stay), and device nodes.
trim_rootfs() {
    local r=$1 d
    for d in var/cache/apt/archives var/lib/apt/lists; do
        [ -d "$r/$d" ] && find "$r/$d" -mindepth 1 -maxdepth 1 ! -type d -delete
    done
    [ -d "$r/dev" ] && find "$r/dev" -xdev -mindepth 1 -delete
    rm -f "$r/var/cache/apt/pkgcache.bin" "$r/var/cache/apt/srcpkgcache.bin"
}

tail_of() { for f in "$@"; do [ -f "$f" ] && tail -n 15 "$f" >&2; done; return 0; }

# The layout DIR/layout with tags debian, python and busybox; DIR/complete marks it finished.
# Built in DIR.partial and renamed, under a lock on DIR.lock so concurrent callers build once.
build_bases() {
    local out=$1
    require debootstrap:debootstrap umoci:umoci chroot:coreutils mknod:coreutils flock:util-linux
    [ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install -y busybox-static"
    [ "$(id -u)" = 0 ] || die "making the base images needs root (debootstrap, chroot)"
    mkdir -p "$(dirname "$out")"
    exec 9>"$out.lock"
    flock 9
    if [ -f "$out/complete" ]; then
        exec 9>&-
        return 0
    fi
    local started=$SECONDS work=$out.partial
    log "making debian:bookworm-slim, python:3.11-slim and busybox:latest from Debian packages in $out (once; a few minutes)"
    remove_tree "$work"
    mkdir -p "$work"
    local L=$work/layout
    umoci init --layout "$L"
    umoci new --image "$L:empty"

    # Layer 1: the plain minbase, as debian:bookworm-slim.
    local bundle=$work/bundle-debian
    umoci unpack --image "$L:empty" "$bundle"
    if ! debootstrap --variant=minbase bookworm "$bundle/rootfs" "$MIRROR" \
        </dev/null >"$work/debootstrap.log" 2>"$work/debootstrap.err"; then
        unmount_under "$bundle/rootfs"
        tail_of "$work/debootstrap.log" "$work/debootstrap.err"
        die "debootstrap of Debian bookworm from $MIRROR failed (its output is above); set KILN_DEBIAN_MIRROR for another mirror"
    fi
    trim_rootfs "$bundle/rootfs"
    rm -f "$bundle/rootfs/etc/resolv.conf" "$bundle/rootfs/etc/hostname"
    umoci repack --image "$L:debian" --history.created_by "debootstrap --variant=minbase bookworm" "$bundle"
    umoci config --image "$L:debian" --no-history --clear=config.env --clear=config.cmd \
        --config.env "$PATH_ENV" --config.cmd bash
    remove_tree "$bundle"

    # Layer 2: python3 and pip from Debian.
    bundle=$work/bundle-python
    umoci unpack --image "$L:debian" "$bundle"
    local rootfs=$bundle/rootfs
    # apt needs /dev/null and a resolver in the chroot; neither stays in the layer.
    mknod -m 666 "$rootfs/dev/null" c 1 3
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    if ! env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$rootfs" /bin/sh -c \
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PYTHON_PACKAGES \
         && ln -s /usr/bin/python3 /usr/local/bin/python && ln -s /usr/bin/pip3 /usr/local/bin/pip" \
        </dev/null >"$work/apt.log" 2>&1; then
        tail_of "$work/apt.log"
        die "installing $PYTHON_PACKAGES in a bookworm chroot failed (above); it needs the Debian mirror $MIRROR"
    fi
    rm -f "$rootfs/dev/null" "$rootfs/etc/resolv.conf"
    trim_rootfs "$rootfs"
    umoci repack --image "$L:python" \
        --history.created_by "apt-get install -y --no-install-recommends $PYTHON_PACKAGES" "$bundle"
    # pip installs only from the wheel index, as PyPI is not reachable from a sandbox here.
    umoci config --image "$L:python" --no-history --clear=config.env --clear=config.cmd \
        --config.env "$PATH_ENV" --config.env LANG=C.UTF-8 --config.env PIP_BREAK_SYSTEM_PACKAGES=1 \
        --config.env PIP_NO_INDEX=1 --config.env "PIP_FIND_LINKS=$DEFAULT_WHEELS_URL" \
        --config.env PIP_DISABLE_PIP_VERSION_CHECK=1 --config.cmd python3
    remove_tree "$bundle"

    # busybox:latest from the host's busybox-static.
    bundle=$work/bundle-busybox
    umoci unpack --image "$L:empty" "$bundle"
    rootfs=$bundle/rootfs
    mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root"
    chmod 1777 "$rootfs/tmp"
    cp /bin/busybox "$rootfs/bin/busybox"
    chroot "$rootfs" /bin/busybox --install -s /bin
    echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
    echo 'root:x:0:' >"$rootfs/etc/group"
    umoci repack --image "$L:busybox" --history.created_by "busybox --install -s /bin" "$bundle"
    umoci config --image "$L:busybox" --no-history --clear=config.env --clear=config.cmd \
        --config.env "$PATH_ENV" --config.cmd sh
    remove_tree "$bundle"

    umoci rm --image "$L:empty"
    umoci gc --layout "$L"
    echo ok >"$work/complete"
    mv "$work" "$out"
    exec 9>&-
    log "base images made in $((SECONDS - started)) s"
}

# `pip download` of every wheel the requirement files need into DIR, for CPython 3.11 (the
# python image's). DIR/.complete holds the requirements' digest: changed files download again.
fetch_wheels() {
    local dir=$1
    shift
    (($#)) || die "wheels: no requirement files given"
    require python3:python3 sha256sum:coreutils
    local key
    key=$(cat "$@" | sha256sum | cut -c1-16)
    [ "$(cat "$dir/.complete" 2>/dev/null)" = "$key" ] && return 0
    python3 -m pip --version >/dev/null 2>&1 || die "\`python3 -m pip\` does not work: apt-get install -y python3-pip"
    mkdir -p "$dir"
    log "downloading wheels for $* from PyPI into $dir"
    local args=() r
    for r in "$@"; do args+=(-r "$r"); done
    # Only PyPI: a find-links directory configured on this machine is not what the images get.
    env -u PIP_FIND_LINKS -u PIP_NO_INDEX python3 -m pip download -q --disable-pip-version-check \
        --only-binary=:all: --python-version 3.11 -d "$dir" "${args[@]}" ||
        die "pip download from PyPI failed; the wheels are downloaded once, then served offline"
    echo "$key" >"$dir/.complete"
}

install_packages() {
    local need=() p
    for p in docker-registry skopeo umoci debootstrap busybox-static python3 python3-pip curl; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    # kiln runs RUN steps with crun or runc.
    command -v crun >/dev/null || command -v runc >/dev/null || need+=(crun)
    ((${#need[@]})) || return 0
    command -v apt-get >/dev/null || die "apt-get not found; install ${need[*]} by other means"
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

up() { curl -fsS -o /dev/null "$1" 2>/dev/null; }

# Starts `$@` in its own session (it outlives this script), logging to $name.log, with its pid in
# $name.pid; waits until URL answers.
start_server() {
    local name=$1 url=$2
    shift 2
    setsid "$@" </dev/null >"$STATE/$name.log" 2>&1 &
    echo $! >"$STATE/$name.pid"
    local _
    for _ in $(seq 100); do
        up "$url" && return 0
        kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null || break
        sleep 0.1
    done
    tail_of "$STATE/$name.log"
    die "$name did not come up on $url (its log, $STATE/$name.log, is above)"
}

# "the LABEL this script started" or "the LABEL already on URL", for the log; $1 names the pid file.
which_server() {
    local pid
    pid=$(cat "$STATE/$1.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null &&
        echo "the $3 this script started (pid $pid), on $2" || echo "the $3 already on $2"
}

start_registry() {
    if up "http://$REG/v2/"; then
        log "using $(which_server registry "$REG" registry)"
        return 0
    fi
    mkdir -p "$STATE/registry"
    cat >"$STATE/registry/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry/data
  delete:
    enabled: true
http:
  addr: $REG
YML
    start_server registry "http://$REG/v2/" docker-registry serve "$STATE/registry/config.yml"
    log "registry on $REG"
}

start_wheels() {
    local url=http://127.0.0.1:$WHEELS_PORT/
    if up "$url"; then
        # Someone else's index may lack what the examples need: say which, leave it alone.
        local listing missing=() w
        listing=$(curl -fsS "$url")
        for w in "$STATE/wheels"/*.whl; do
            grep -qF "${w##*/}" <<<"$listing" || missing+=("${w##*/}")
        done
        if ((${#missing[@]})); then
            log "warning: $(which_server wheels "$url" "wheel index") lacks ${missing[*]}; pip installs of them will fail"
        else
            log "using $(which_server wheels "$url" "wheel index")"
        fi
        return 0
    fi
    start_server wheels "$url" python3 -m http.server "$WHEELS_PORT" --bind 127.0.0.1 --directory "$STATE/wheels"
    log "wheel index on $url"
}

manifest_digest() { skopeo inspect --tls-verify=false --format '{{.Digest}}' "$1" 2>/dev/null; }

# Pushes each image unless the registry has it already; replaces only what this script pushed.
push_images() {
    local L=$STATE/bases-v1/layout entry tag repo src want have
    for entry in "${IMAGES[@]}"; do
        tag=${entry%% *} repo=${entry#* }
        src=$tag
        if [ "$tag" = python ] && [ "http://127.0.0.1:$WHEELS_PORT/" != "$DEFAULT_WHEELS_URL" ]; then
            src=python-$WHEELS_PORT
            umoci config --image "$L:python" --tag "$src" --no-history \
                --config.env "PIP_FIND_LINKS=http://127.0.0.1:$WHEELS_PORT/"
        fi
        want=$(manifest_digest "oci:$L:$src")
        have=$(manifest_digest "docker://$REG/$repo" || true)
        if [ "$have" = "$want" ]; then
            continue
        elif [ -n "$have" ] && ! grep -qxF "$REG/$repo $have" "$STATE/pushed" 2>/dev/null; then
            log "$REG already has $repo ($have), not made by this script: left alone"
            continue
        fi
        skopeo --insecure-policy copy -q --preserve-digests --dest-tls-verify=false "oci:$L:$src" "docker://$REG/$repo"
        echo "$REG/$repo $want" >>"$STATE/pushed"
        log "$repo pushed to $REG"
    done
}

stop_servers() {
    local name pid
    for name in registry wheels; do
        [ -f "$STATE/$name.pid" ] || continue
        pid=$(cat "$STATE/$name.pid")
        # Only our own server: the pid must still run what we started.
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE "docker-registry serve $STATE/|http.server .*--directory $STATE/"; then
            kill "$pid"
            log "stopped the $name ($pid)"
        fi
        rm -f "$STATE/$name.pid"
    done
}

all() {
    [ "$(id -u)" = 0 ] || die "run it as root (it installs packages and makes images with debootstrap)"
    mkdir -p "$STATE"
    install_packages
    build_bases "$STATE/bases-v1"
    local reqs
    mapfile -t reqs < <(find "$REPO_DIR/fixtures/apps" "$REPO_DIR/examples" -name requirements.txt | sort)
    fetch_wheels "$STATE/wheels" "${reqs[@]}"
    start_registry
    start_wheels
    push_images
    log "ready: registry http://$REG (debian:bookworm-slim, python:3.11-slim, busybox:latest), wheels on http://127.0.0.1:$WHEELS_PORT/"
    log "build with: kiln build --registry-mirror $REG -t NAME CONTEXT    (stop the servers: $0 stop)"
}

case ${1:-} in
    "") all ;;
    stop) stop_servers ;;
    bases)
        (($# == 2)) || die "usage: $0 bases DIR"
        build_bases "$2"
        ;;
    wheels)
        (($# >= 3)) || die "usage: $0 wheels DIR REQUIREMENTS..."
        dir=$2
        shift 2
        fetch_wheels "$dir" "$@"
        ;;
    *) die "usage: $0 [stop | bases DIR | wheels DIR REQUIREMENTS...]" ;;
esac
