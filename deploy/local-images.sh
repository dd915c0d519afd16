#!/usr/bin/env bash
# Builds the images docker-compose.local.yml uses, from local material only: no image is
# pulled from any registry.
#
#   kos-local/debian:bookworm  Debian bookworm (minbase) made with debootstrap and
#                              `docker import`; the base of the three below
#   kos-local/kos:latest       the runtime stage of ./Dockerfile with a `kos` binary from this
#                              machine (default: the test-profile build
#                              $CARGO_TARGET_DIR/debug/kos; --release: .../release/kos)
#   kos-local/postgres:15      Debian's postgresql-15, configured like the official image
#   kos-local/redis:7          Debian's redis-server
#
# Packages come from the Debian mirror (apt inside `docker build --network host`).
# Qdrant has no Debian package and no binary here: with these images the node uses the
# in-process vector engine instead (docker-compose.local.yml says so).
#
# Caching: the base, postgres and redis images are built only when their tag is missing
# (--force rebuilds them); the kos image is rebuilt every time (cheap: one COPY, cached when
# the binary did not change).
#
# Usage: deploy/local-images.sh [--binary PATH | --release] [--force] [--mirror URL]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BINARY=""
PROFILE=debug
FORCE=0
MIRROR="${KOS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE=kos-local/debian:bookworm

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY="$2"; shift 2 ;;
    --release) PROFILE=release; shift ;;
    --force) FORCE=1; shift ;;
    --mirror) MIRROR="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
BINARY="${BINARY:-$TARGET_DIR/$PROFILE/kos}"

say() { printf '== %s\n' "$*"; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "the docker engine does not answer (docker info failed)" >&2; exit 1; }
[ -x "$BINARY" ] || { echo "no kos binary at $BINARY (cargo build -p kos-node, or pass --binary)" >&2; exit 1; }

# The legacy builder: it needs no buildx plugin and pulls nothing for a local FROM.
export DOCKER_BUILDKIT=0
build() { # build TAG DOCKERFILE CONTEXT [docker build options...]
  local tag="$1" file="$2" ctx="$3"; shift 3
  docker build --network host --build-arg "BASE=$BASE" "$@" -t "$tag" -f "$file" "$ctx" >/dev/null 2>"$WORK/build.err" \
    || { cat "$WORK/build.err" >&2; echo "building $tag failed" >&2; exit 1; }
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# 1. The base image.
if [ "$FORCE" = 1 ] || ! have_image "$BASE"; then
  [ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
  command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
  say "debootstrap bookworm (minbase) from $MIRROR: a few minutes"
  ROOTFS="$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; echo "debootstrap failed" >&2; exit 1; }
  cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
  # Like the official slim images: no recommends, no caches, no docs.
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$ROOTFS/etc/apt/apt.conf.d/90kos-norecommends"
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/var/log/*.log
  tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$ROOTFS"
  say "built $BASE"
else
  say "$BASE exists (cached; --force rebuilds it)"
fi

# 2. PostgreSQL and Redis from Debian packages.
if [ "$FORCE" = 1 ] || ! have_image kos-local/postgres:15; then
  mkdir -p "$WORK/pg"
  cp "$ROOT/deploy/postgres-entrypoint.sh" "$WORK/pg/"
  build kos-local/postgres:15 "$ROOT/deploy/local/postgres.Dockerfile" "$WORK/pg"
  say "built kos-local/postgres:15"
else
  say "kos-local/postgres:15 exists (cached)"
fi
if [ "$FORCE" = 1 ] || ! have_image kos-local/redis:7; then
  mkdir -p "$WORK/redis"
  build kos-local/redis:7 "$ROOT/deploy/local/redis.Dockerfile" "$WORK/redis"
  say "built kos-local/redis:7"
else
  say "kos-local/redis:7 exists (cached)"
fi

# 3. The node: the runtime stage of ./Dockerfile, verbatim except the base and the binary.
mkdir -p "$WORK/kos/deploy"
cp "$BINARY" "$WORK/kos/kos"
# A test-profile binary carries line tables: the image does not need them.
if command -v strip >/dev/null; then strip --strip-debug "$WORK/kos/kos"; fi
cp "$ROOT/deploy/docker-entrypoint.sh" "$WORK/kos/deploy/"
sed -n '/^FROM debian:bookworm-slim AS runtime$/,$p' "$ROOT/Dockerfile" \
  | sed -e "s#^FROM debian:bookworm-slim AS runtime\$#FROM $BASE AS runtime#" \
        -e 's#^COPY --from=build /out/kos #COPY kos #' >"$WORK/kos/Dockerfile"
grep -q "^FROM $BASE AS runtime\$" "$WORK/kos/Dockerfile" && grep -q '^COPY kos ' "$WORK/kos/Dockerfile" \
  || { echo "Dockerfile: the runtime stage is not where this script expects it" >&2; exit 1; }
build kos-local/kos:latest "$WORK/kos/Dockerfile" "$WORK/kos" --label org.kos-node.local-image=kos
# The previous kos-local/kos image, now untagged: remove it (only ours, by label).
docker image prune -f --filter label=org.kos-node.local-image=kos >/dev/null
say "built kos-local/kos:latest from $BINARY"
say "Qdrant cannot be built here (no package, no binary): docker-compose.local.yml runs the node with the in-process vector engine"
