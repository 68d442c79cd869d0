#!/usr/bin/env bash
# The component image, built from the Dockerfile with a daemonless OCI builder (podman).
#
#   scripts/image.sh ensure-tools      podman and buildah (Debian packages, as root) when missing
#   scripts/image.sh stand-in-base     the Dockerfile's base image, made here when it is not present
#   scripts/image.sh build [TAG]       podman build --isolation=chroot --pull=never -t TAG .
#                                      (default tfx-final-exporter:test); prints the image id
#   scripts/image.sh benchmark [--cold]
#                                      the rebuild after a one-line change to component/ (and with
#                                      --cold, a build with no layer cached); seconds, size, load
#
# The base, python:3.11-slim, cannot be pulled on machines without a registry. The stand-in
# is a Debian 13 (trixie) rootfs made with debootstrap from the host's Debian mirror, with
# pyenv's CPython of the same minor under /usr/local, imported as docker.io/library/python:3.11-slim
# (docs/kubeflow-vertex.md says what differs from the real one). A real image of that name,
# if present, is used instead. The rootfs is cached in $FINAL_EXPORTER_CACHE (default
# /var/cache/tfx-final-exporter), keyed by what it holds; an interrupted build is never used.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${FINAL_EXPORTER_CACHE:-/var/cache/tfx-final-exporter}
TAG_DEFAULT=tfx-final-exporter:test
# The Dockerfile's base: ARG BASE_IMAGE=python:X.Y-slim.
BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO/Dockerfile")
BASE_REF=docker.io/library/$BASE
PY_MINOR=$(sed -nE 's/^python:([0-9]+\.[0-9]+)-slim$/\1/p' <<<"$BASE")
SUITE=trixie # Debian 13, what python:3.11-slim is built on.
# The official image's runtime packages (ca-certificates netbase tzdata), then the
# libraries pyenv's CPython links (the official image keeps those of its own build).
PACKAGES=ca-certificates,netbase,tzdata,libssl3t64,libsqlite3-0,libffi8,libbz2-1.0,liblzma5,libreadline8t64,libncursesw6,zlib1g,libuuid1,libexpat1
PYENV_PREFIX=${PYENV_ROOT:-/root/.pyenv}/versions
# The image label that marks the stand-in and says what it was made from.
STAND_IN_LABEL=org.tfx-final-exporter.stand-in

source "$REPO/scripts/debootstrap.sh"

say() { printf 'image: %s\n' "$*" >&2; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 2; }

cmd_ensure_tools() {
  command -v podman >/dev/null && command -v buildah >/dev/null && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || die "podman and buildah are needed to build the image: install them (apt-get install podman buildah)"
  say "installing podman and buildah (apt)"
  source "$REPO/scripts/apt_install.sh"
  apt_install podman buildah || die "could not install podman and buildah (apt-get install podman buildah)"
}

# --- the stand-in base ---------------------------------------------------------------

stand_in_python() { # the newest pyenv CPython of the base's minor
  [ -n "$PY_MINOR" ] || die "the Dockerfile's base $BASE is not python:X.Y-slim, so no stand-in can be made: pull $BASE"
  local found
  found=$(ls -d "$PYENV_PREFIX/$PY_MINOR".* 2>/dev/null | sort -V | tail -n 1 || true)
  [ -x "$found/bin/python$PY_MINOR" ] \
    || die "$BASE is not present and no Python $PY_MINOR to make a stand-in of it: pull $BASE, or pyenv install $PY_MINOR"
  printf '%s' "$found"
}

install_cpython() { # ROOT PYTHON_PREFIX: CPython under ROOT/usr/local, as `make install` lays it out
  local root=$1 py=$2 m=$PY_MINOR
  mkdir -p "$root/usr/local/bin" "$root/usr/local/lib" "$root/usr/local/include"
  cp -a "$py/bin/python$m" "$py/bin/python$m-config" "$root/usr/local/bin/"
  cp -a "$py/lib/libpython$m.so"* "$py/lib/libpython3.so" "$py/lib/pkgconfig" "$root/usr/local/lib/"
  cp -a "$py/include/python$m" "$root/usr/local/include/"
  # The standard library alone: pyenv's site-packages holds what was installed into it since.
  tar -C "$py/lib" --exclude="python$m/site-packages" -cf - "python$m" | tar -C "$root/usr/local/lib" -xf -
  mkdir -p "$root/usr/local/lib/python$m/site-packages"
  # What python's own image removes after `make install`.
  find "$root/usr/local" -depth \( \( -type d -a \( -name test -o -name tests -o -name idle_test \) \) \
    -o \( -type f -a \( -name '*.pyc' -o -name '*.pyo' -o -name 'libpython*.a' \) \) \) -exec rm -rf '{}' +
  # Built with --prefix=$py: the build-time paths (sysconfig, python-config) say /usr/local
  # (text files only: the binaries keep their RUNPATH, unused once ldconfig knows /usr/local/lib).
  grep -rlIF "$py" "$root/usr/local/lib/python$m" "$root/usr/local/lib/pkgconfig" "$root/usr/local/bin" \
    | xargs -r sed -i "s#$py#/usr/local#g"
  ln -s "python$m" "$root/usr/local/bin/python3"
  ln -s "python$m-config" "$root/usr/local/bin/python3-config"
  ldconfig -r "$root"
  # pip and setuptools from the CPython release itself, as `make install` puts them.
  chroot "$root" /usr/bin/env PIP_ROOT_USER_ACTION=ignore /usr/local/bin/python3 -m ensurepip --upgrade >/dev/null
  local src
  for src in pip3 python3 python3-config; do ln -s "$src" "$root/usr/local/bin/${src%3*}${src#*3}"; done
}

build_stand_in_tar() { # TAR PYTHON_PREFIX: the rootfs, built beside TAR, renamed into place when complete
  local tar=$1 py=$2 root="$1.building.$$"
  rm -rf "$root" "$tar.tmp"
  debootstrap_into "$root" "$SUITE" "$PACKAGES" || die "could not make the stand-in's Debian $SUITE"
  install_cpython "$root" "$py"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" --numeric-owner -cf "$tar.tmp" .
  rm -rf "$root"
  mv "$tar.tmp" "$tar"
}

stand_in_key() { # PYTHON_PREFIX
  { echo "$SUITE $PACKAGES $BASE"; "$1/bin/python$PY_MINOR" -VV
    declare -f debootstrap_into install_cpython build_stand_in_tar import_stand_in; } | sha256sum | cut -c1-16
}

import_stand_in() { # TAR KEY PYTHON_VERSION: the image config python's own image has (ENV, CMD)
  podman import --quiet \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=$3" \
    --change 'CMD ["python3"]' \
    --change "LABEL $STAND_IN_LABEL=$2" \
    "$1" "$BASE_REF" >/dev/null
}

cmd_stand_in_base() {
  cmd_ensure_tools
  local label=''
  if label=$(podman image inspect --format "{{index .Labels \"$STAND_IN_LABEL\"}}" "$BASE_REF" 2>/dev/null); then
    if [ -z "$label" ] || [ "$label" = '<no value>' ]; then
      say "using $BASE_REF as present (not a stand-in)"
      return 0
    fi
  fi
  [ "$(id -u)" = 0 ] || die "$BASE is not present, and making a stand-in of it needs root (debootstrap, chroot): pull $BASE, or run as root"
  local py key tar
  py=$(stand_in_python)
  key=$(stand_in_key "$py")
  [ "$label" = "$key" ] && return 0
  mkdir -p "$CACHE/image-base"
  tar="$CACHE/image-base/python-$PY_MINOR-slim-$SUITE-$key.tar"
  # No `||` after this subshell: it would turn off `set -e` inside it.
  (
    flock 9
    if [ ! -f "$tar" ]; then
      # What an interrupted build left (this lock is held while one runs).
      rm -rf "$CACHE/image-base/"*.building.* "$CACHE/image-base/"*.tar.tmp
      say "making a stand-in for $BASE: Debian $SUITE + CPython $("$py/bin/python$PY_MINOR" -V | cut -d' ' -f2) (pyenv) under /usr/local"
      build_stand_in_tar "$tar" "$py"
      # Stand-ins of other keys: other clones and branches may still use theirs for a while.
      find "$CACHE/image-base" -maxdepth 1 -name "python-$PY_MINOR-slim-$SUITE-*.tar" ! -path "$tar" -mmin +2880 -delete
    fi
  ) 9>"$CACHE/image-base/.lock"
  local old
  old=$(podman image inspect --format '{{.Id}}' "$BASE_REF" 2>/dev/null || true)
  import_stand_in "$tar" "$key" "$("$py/bin/python$PY_MINOR" -V | cut -d' ' -f2)"
  # The previous stand-in, unless images built on it still need it.
  [ -z "$old" ] || podman rmi "$old" >/dev/null 2>&1 || true
  say "stand-in $BASE_REF imported ($key)"
}

# --- the build -----------------------------------------------------------------------

# The host's CA bundle mounted over the base's during the build's RUN steps (a mount over a
# file the base has leaves nothing in the image), and pip pointed at it (the Dockerfile's
# PIP_CERT): where TLS goes through an intercepting proxy only the host's bundle holds its
# CA; elsewhere it holds the public CAs, as the image's own does.
build_args() {
  local bundle=/etc/ssl/certs/ca-certificates.crt
  [ -f "$bundle" ] || return 0
  printf '%s\n' --volume "$bundle:$bundle:ro" --build-arg "PIP_CERT=$bundle"
}

containers() { buildah containers --all --quiet --notruncate | sort; }

# podman leaves the working containers of a failed or interrupted build behind: removes
# those made since $BEFORE (one build at a time: the caller holds the build lock).
remove_build_containers() {
  comm -13 <(echo "$BEFORE") <(containers) | xargs -r buildah rm >/dev/null 2>&1 || true
}

build() { # CONTEXT TAG [PODMAN_ARGS...]: prints the image id
  local context=$1 tag=$2 extra old new
  shift 2
  old=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  mapfile -t extra < <(build_args)
  BEFORE=$(containers)
  trap 'remove_build_containers; exit 130' INT
  trap 'remove_build_containers; exit 143' TERM
  if ! podman build --isolation=chroot --pull=never --force-rm --layers \
    "${extra[@]}" --iidfile "$CACHE/.iid.$$" -t "$tag" "$@" "$context" >&2; then
    remove_build_containers
    die "podman build failed (above)"
  fi
  trap - INT TERM
  new=$(cat "$CACHE/.iid.$$")
  rm -f "$CACHE/.iid.$$"
  # The image the tag named before, with the layers only it used (about 3 GB when the
  # dependencies changed), once no tag names it and nothing else uses it.
  if [ -n "$old" ] && [ "$old" != "${new#sha256:}" ] \
    && [ "$(podman image inspect --format '{{len .RepoTags}}' "$old" 2>/dev/null)" = 0 ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
  echo "$new"
}

cmd_build() {
  local tag=${1:-$TAG_DEFAULT}
  mkdir -p "$CACHE"
  # One build at a time (make test may start one in the background): the second finds
  # every layer cached.
  exec 8>"$CACHE/.image-build.lock"
  flock 8
  cmd_stand_in_base
  build "$REPO" "$tag"
}

# --- the benchmark -------------------------------------------------------------------

seconds_since() { echo "$(( $(date +%s%N) / 1000000 - $1 ))" | awk '{printf "%.1f", $1 / 1000}'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
load() { cut -d' ' -f1-3 /proc/loadavg; }

cmd_benchmark() {
  local cold=0 t id size
  [ "${1:-}" != --cold ] || cold=1
  mkdir -p "$CACHE"
  exec 8>"$CACHE/.image-build.lock"
  flock 8
  cmd_stand_in_base
  CONTEXT=$(mktemp -d)
  trap 'rm -rf "$CONTEXT"' EXIT
  # The build context as it is in this checkout, tracked or not (.dockerignore applies).
  git -C "$REPO" ls-files -z --cached --others --exclude-standard | (cd "$REPO" && tar --null -T - -cf -) | tar -C "$CONTEXT" -xf -
  printf 'image benchmark (%s, %s cores); load average before: %s\n' "$(uname -m)" "$(nproc)" "$(load)"
  t=$(now_ms)
  if [ $cold = 1 ]; then
    id=$(build "$CONTEXT" tfx-final-exporter:benchmark --no-cache)
    printf 'cold build (no layer cached, base present): %s s; load average after: %s\n' "$(seconds_since "$t")" "$(load)"
  else
    id=$(build "$CONTEXT" tfx-final-exporter:benchmark)
    printf 'first build of this checkout (earlier layers reused where unchanged): %s s\n' "$(seconds_since "$t")"
  fi
  t=$(now_ms)
  id=$(build "$CONTEXT" tfx-final-exporter:benchmark)
  printf 'build with every layer cached: %s s\n' "$(seconds_since "$t")"
  echo "# rebuild probe $(date +%s%N)" >>"$CONTEXT/component/final_exporter/__init__.py"
  t=$(now_ms)
  id=$(build "$CONTEXT" tfx-final-exporter:benchmark)
  printf 'rebuild after a one-line change to component/: %s s; load average after: %s\n' "$(seconds_since "$t")" "$(load)"
  size=$(podman image inspect --format '{{.Size}}' "$id")
  printf 'image size: %s bytes (%s GB)\n' "$size" "$(awk -v b="$size" 'BEGIN {printf "%.2f", b / 1e9}')"
  podman history --format '{{.Size}}\t{{.CreatedBy}}' "$id" | cut -c1-120 | head -n 8
}

case "${1:-}" in
  ensure-tools) cmd_ensure_tools ;;
  stand-in-base) cmd_stand_in_base ;;
  build) shift; cmd_build "$@" ;;
  benchmark) shift; cmd_benchmark "$@" ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
