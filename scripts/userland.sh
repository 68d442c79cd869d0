#!/usr/bin/env bash
# The TFX 1.21 test environments (docs/tested-with.md).
#
# ml-metadata 1.21 ships only manylinux_2_39 wheels, so TFX 1.21 needs glibc >= 2.39.
# Where the host has it, the environments are plain venvs on the host ("native").
# Where it does not (Debian 12: glibc 2.36), they live in a Debian 13 userland made
# with debootstrap and are entered with chroot inside a private mount namespace.
#
#   scripts/userland.sh test [ENV...]      build what is missing, run each ENV's suite
#   scripts/userland.sh prepare [ENV...]   only build (make test runs this in the background)
#   scripts/userland.sh run ENV CMD...     run CMD in ENV, from the repository
#   scripts/userland.sh constraints        re-resolve each ENV unpinned; write constraints/*.new
#   scripts/userland.sh mode               print where the environments run, and why
#
# ENV is one of ENVS below. FINAL_EXPORTER_NATIVE=1|0 overrides the choice of
# native vs userland (default: native iff the host's glibc >= 2.39).
# Everything built is cached outside the repository in $FINAL_EXPORTER_CACHE
# (default /var/cache/tfx-final-exporter), keyed by what it installs.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT="$REPO/scripts/userland.sh"
CACHE=${FINAL_EXPORTER_CACHE:-/var/cache/tfx-final-exporter}
SUITE=trixie # Debian 13: glibc 2.41, Python 3.13.
# python3*: Debian's 3.13 and the shared libraries pyenv's 3.11 links (libssl3, libffi8,
# libsqlite3...); python3-dev, g++: pyfarmhash has no cp313 wheel and compiles;
# xfsprogs: the reflink test formats XFS; util-linux/mount: losetup, mount, findmnt.
PACKAGES=python3,python3-venv,python3-pip,python3-dev,g++,ca-certificates,xfsprogs,util-linux,mount
# The Python 3.11 that TFX 1.21 still gives kfp to. In the userland: pyenv's build, made
# for glibc <= 2.36, which runs unchanged on the userland's newer glibc (bind-mounted at
# the same path). Natively: pyenv's, else python3.11 on PATH; and python3.13 on PATH.
PY311=$(ls -d /root/.pyenv/versions/3.11.* 2>/dev/null | sort -V | tail -n 1 || true)
PY311_BIN=${PY311:+$PY311/bin/python3.11}
PY313_BIN=/usr/bin/python3.13 # Debian 13's own
if [ "${FINAL_EXPORTER_NATIVE:-auto}" = 1 ] || { [ "${FINAL_EXPORTER_NATIVE:-auto}" = auto ] \
  && [ "$(printf '%s\n2.39\n' "$(getconf GNU_LIBC_VERSION | awk '{print $2}')" | sort -V | head -n 1)" = 2.39 ]; }; then
  PY311_BIN=${PY311_BIN:-$(command -v python3.11 || true)}
  PY313_BIN=$(command -v python3.13 || true)
fi

# name|python|constraints file|pip requirement|what runs there
ENVS=(
  "tfx1.21-py3.11|$PY311_BIN|constraints/tfx-1.21-py3.11.txt|.[test,bench,signing]|the whole suite"
  "tfx1.21-py3.13|$PY313_BIN|constraints/tfx-1.21-py3.13.txt|.[test,signing]|core, CLI, object stores, wheel install; no kfp (TFX 1.21 declares it for Python < 3.12), so the 4 Kubeflow test files are not collected"
)

say() { printf 'userland: %s\n' "$*" >&2; }
die() { printf 'userland: error: %s\n' "$*" >&2; exit 2; }
field() { local IFS='|'; local -a f; read -r -a f <<<"$1"; printf '%s' "${f[$2]}"; }
env_spec() {
  local e
  for e in "${ENVS[@]}"; do [ "$(field "$e" 0)" = "$1" ] && { printf '%s' "$e"; return; }; done
  die "unknown environment '$1' (known: $(env_names | tr '\n' ' '))"
}
env_names() { local e; for e in "${ENVS[@]}"; do field "$e" 0; echo; done; }

host_glibc() { getconf GNU_LIBC_VERSION | awk '{print $2}'; }
native() {
  case "${FINAL_EXPORTER_NATIVE:-auto}" in
    1) return 0 ;; 0) return 1 ;;
    auto) [ "$(printf '%s\n2.39\n' "$(host_glibc)" | sort -V | head -n 1)" = 2.39 ] ;;
    *) die "FINAL_EXPORTER_NATIVE must be 1, 0 or unset" ;;
  esac
}

# --- the userland ------------------------------------------------------------------

build_rootfs() { # $1: final directory. Built beside it, renamed into place when complete.
  local tmp="$1.building.$$"
  rm -rf "$tmp"
  command -v debootstrap >/dev/null || {
    say "installing debootstrap on the host (apt)"
    source "$REPO/scripts/apt_install.sh" && apt_install debootstrap
  } || die "debootstrap is missing and could not be installed (apt-get install debootstrap)"
  # The host's default Debian mirror (its apt sources), not a hard-coded one.
  local mirror
  mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Origin: Debian' 2>/dev/null | grep -v security | head -n 1 || true)
  say "debootstrap $SUITE (about 2 min): $PACKAGES"
  # Inside its own mount namespace: the /proc and /sys debootstrap mounts cannot outlive it.
  unshare --mount --propagation private \
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" ${mirror:+"$mirror"} \
    >"$tmp.log" 2>&1 || { tail -n 20 "$tmp.log" >&2; die "debootstrap failed (log: $tmp.log)"; }
  rm -f "$tmp.log"
  mv "$tmp" "$1"
}

rootfs_key() {
  { echo "$SUITE $PACKAGES"; declare -f build_rootfs; } | sha256sum | cut -c1-16
}

# Builds (or reuses) the userland; prints its path.
ensure_rootfs() {
  mkdir -p "$CACHE"
  local root="$CACHE/userland-$SUITE-$(rootfs_key)"
  (
    flock 9
    if [ ! -d "$root" ]; then
      build_rootfs "$root"
      prune "$root" "$CACHE/userland-$SUITE-"
    fi
  ) 9>"$CACHE/.userland.lock" || exit $?
  # Only a finished debootstrap is renamed into place; anything else there is not a userland.
  [ -x "$root/usr/bin/python3" ] || die "$root is not a complete userland (no /usr/bin/python3): remove it and run again"
  printf '%s' "$root"
}

# Each run holds a shared lock on what it uses (userland, venvs) while it runs, and
# the lock file's time says when it was last used.
hold() { local fd; exec {fd}>>"$1.in-use"; flock -s "$fd"; touch "$1.in-use"; }

# Removes the entries PREFIX* other than CURRENT that no run holds and none used in the
# last two days: other clones and branches share the cache, with other keys.
prune() {
  local stale
  for stale in "$2"*; do
    case "$stale" in "$1" | *.in-use | *.building.*) continue ;; esac
    [ -d "$stale" ] || continue
    [ -z "$(find "$stale" "$stale.in-use" -maxdepth 0 -mmin -2880 2>/dev/null)" ] || continue
    (flock -n -x 8 && rm -rf "$stale" "$stale.in-use") 8>>"$stale.in-use" || true
  done
}

# Runs "$@" chrooted into the userland $ROOT, in a private mount namespace, from the repository.
in_userland() {
  local tmp
  mkdir -p "$CACHE/tmp"
  # /tmp of runs that were killed (SIGKILL skips the trap below); their mounts died with them.
  local old pid
  for old in "$CACHE"/tmp/run.*; do
    pid=${old##*/run.} pid=${pid%%.*}
    [ ! -d "$old" ] || kill -0 "$pid" 2>/dev/null || rm -rf "$old"
  done
  tmp=$(mktemp -d "$CACHE/tmp/run.$$.XXXXXX") # the userland's /tmp for this run
  trap 'rm -rf "$tmp"' EXIT
  # unshare: every mount below belongs to a namespace that dies with this process,
  # even on SIGKILL; the trap in the child unmounts explicitly as well.
  local rc=0
  unshare --mount --propagation private \
    bash "$SCRIPT" __chroot "$ROOT" "$tmp" "$@" || rc=$?
  rm -rf "$tmp"
  trap - EXIT
  return "$rc"
}

__chroot() { # ROOT TMP CMD...: runs in the new mount namespace.
  local root=$1 tmp=$2
  shift 2
  MOUNTED=() # global: the EXIT trap runs after this function has returned
  cleanup() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -R -l "${MOUNTED[i]}" 2>/dev/null || true; done
  }
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  bind() { # SRC DEST [ro]
    mkdir -p "$2"
    mount --rbind "$1" "$2"
    MOUNTED+=("$2")
    [ "${3:-}" != ro ] || mount -o remount,bind,ro "$2"
  }
  mount -t proc proc "$root/proc" && MOUNTED+=("$root/proc")
  bind /dev "$root/dev" # rbind: /dev/loop* and /dev/pts for the loop-mounted XFS test.
  bind /sys "$root/sys"
  bind "$tmp" "$root/tmp"
  bind "$REPO" "$root$REPO"
  bind "$CACHE/venvs" "$root$CACHE/venvs"
  mkdir -p /root/.cache/pip && bind /root/.cache/pip "$root/root/.cache/pip"
  [ -z "$PY311" ] || bind "$PY311" "$root$PY311" ro
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  # A clean environment: the host's pip configuration (local find-links) does not apply.
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    ${FINAL_EXPORTER_SOAK:+FINAL_EXPORTER_SOAK=$FINAL_EXPORTER_SOAK} \
    bash -c 'cd "$1" && shift && exec "$@"' _ "$REPO" "$@"
}

# Runs "$@" where the TFX 1.21 environments live: in the userland, or on the host.
in_env_host() {
  if native; then (cd "$REPO" && "$@"); else in_userland "$@"; fi
}

# --- the venvs ---------------------------------------------------------------------

build_venv() { # SPEC DIR [unpinned]: a venv with the project installed editable from $REPO.
  local python constraints requirement
  python=$(field "$1" 1) constraints=$(field "$1" 2) requirement=$(field "$1" 3)
  local -a pin=(-c "$constraints")
  [ "${3:-}" != unpinned ] || pin=()
  [ "${3:-}" = unpinned ] || [ -f "$REPO/$constraints" ] \
    || die "$constraints is missing: run 'scripts/userland.sh constraints' and review it"
  # Built in place (a venv's scripts name its path, so it cannot be renamed); only a venv
  # with the .complete marker is used, so an interrupted build is never taken for one.
  in_env_host bash -c '
    set -e
    rm -rf "$1"
    "$2" -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade "pip<27" setuptools wheel
    shift 2
    "$@"' _ "$2" "$python" "$2/bin/python" -m pip install -q "${pin[@]}" -e "$requirement"
  touch "$2/.complete"
}

venv_key() {
  local spec=$1
  { native && echo native || rootfs_key; echo "$spec"; "$(field "$spec" 1)" --version 2>/dev/null || true
    cat "$REPO/pyproject.toml" "$REPO/$(field "$spec" 2)" 2>/dev/null || true
    declare -f build_venv; } | sha256sum | cut -c1-16
}

# Builds (or reuses) ENV's venv; prints its path.
ensure_venv() {
  local spec name dir
  spec=$(env_spec "$1") name=$1
  mkdir -p "$CACHE/venvs"
  [ -n "$(field "$spec" 1)" ] \
    || die "no Python for $name: install it (pyenv install 3.11 / python3.13 on PATH)"
  dir="$CACHE/venvs/$name-$(venv_key "$spec")"
  (
    flock 9
    if [ ! -f "$dir/.complete" ]; then
      say "building $name (about 2 min): $(field "$spec" 3) -c $(field "$spec" 2)"
      build_venv "$spec" "$dir"
      prune "$dir" "$CACHE/venvs/$name-"
    fi
    # The venv is shared by clones: point its editable install at this one.
    in_env_host "$dir/bin/python" -c 'import final_exporter, sys; sys.exit(not final_exporter.__file__.startswith(sys.argv[1] + "/"))' "$REPO" 2>/dev/null \
      || in_env_host "$dir/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  ) 9>"$CACHE/venvs/.$name.lock"
  printf '%s' "$dir"
}

setup() { # sets ROOT (userland mode) before any venv work
  if native; then ROOT=; else ROOT=$(ensure_rootfs) || exit $?; hold "$ROOT"; fi
}

describe() { # ENV VENV: the banner over each block of results.
  local spec=$1 venv=$2
  printf '\n==== environment %s: %s ====\n' "$(field "$spec" 0)" "$(field "$spec" 4)"
  if native; then printf '     native on the host (glibc %s)\n' "$(host_glibc)"
  else printf '     in the Debian %s userland %s (host glibc %s < 2.39)\n' "$SUITE" "$ROOT" "$(host_glibc)"; fi
  in_env_host "$venv/bin/python" - <<'EOF'
import platform, importlib.metadata as m
def v(p):
    try: return m.version(p)
    except m.PackageNotFoundError: return 'not installed'
print('     Python %s, glibc %s, TFX %s, TF %s, kfp %s, Beam %s, protobuf %s' % (
    platform.python_version(), platform.libc_ver()[1], v('tfx'), v('tensorflow'), v('kfp'),
    v('apache-beam'), v('protobuf')), flush=True)
EOF
}

cmd_test() {
  local names=("$@") name venv rc=0 failed=()
  [ ${#names[@]} -gt 0 ] || mapfile -t names < <(env_names)
  setup
  for name in "${names[@]}"; do
    venv=$(ensure_venv "$name")
    hold "$venv"
    describe "$(env_spec "$name")" "$venv"
    # What runs where is decided in tests/conftest.py from what the env has (kfp or not).
    if in_env_host "$venv/bin/python" -m pytest -q -p no:cacheprovider; then
      printf '==== environment %s: passed ====\n' "$name"
    else
      rc=$?; failed+=("$name")
      printf '==== environment %s: FAILED (exit %s) ====\n' "$name" "$rc"
    fi
  done
  [ ${#failed[@]} -eq 0 ] || die "failed in: ${failed[*]}"
}

cmd_prepare() {
  local names=("$@") name
  [ ${#names[@]} -gt 0 ] || mapfile -t names < <(env_names)
  setup
  for name in "${names[@]}"; do ensure_venv "$name" >/dev/null; done
}

cmd_run() {
  [ $# -ge 2 ] || die "usage: scripts/userland.sh run ENV CMD..."
  local venv
  setup
  venv=$(ensure_venv "$1")
  hold "$venv"
  shift
  in_env_host env PATH="$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$@"
}

cmd_constraints() { # re-resolve unpinned, freeze to constraints/<file>.new for review
  local e dir out
  setup
  mkdir -p "$CACHE/venvs"
  for e in "${ENVS[@]}"; do
    dir="$CACHE/venvs/unpinned-$(field "$e" 0)"
    build_venv "$e" "$dir" unpinned
    out="$REPO/$(field "$e" 2).new"
    {
      echo "# The resolved set of the $(field "$e" 0) environment (scripts/userland.sh): a pip"
      echo "# freeze after \`pip install -e '$(field "$e" 3)'\` unpinned, made by"
      echo "# \`scripts/userland.sh constraints\` on $(date -u +%F). Used as -c; the reasons for the"
      echo "# direct pins are beside them in pyproject.toml."
      in_env_host "$dir/bin/python" -m pip freeze --exclude tfx-final-exporter --exclude-editable
    } >"$out"
    rm -rf "$dir"
    say "wrote $out: review it and move it over $(field "$e" 2)"
  done
}

cmd_mode() {
  if native; then echo "TFX 1.21 environments: native on the host (glibc $(host_glibc) >= 2.39)"
  else echo "TFX 1.21 environments: in a Debian $SUITE userland (host glibc $(host_glibc) < 2.39)"; fi
}

[ "$(id -u)" = 0 ] || native || die "the userland needs root (debootstrap, chroot, mounts)"
ROOT=
case "${1:-}" in
  test) shift; cmd_test "$@" ;;
  prepare) shift; cmd_prepare "$@" ;;
  run) shift; cmd_run "$@" ;;
  constraints) cmd_constraints ;;
  mode) cmd_mode ;;
  __chroot) shift; __chroot "$@" ;;
  *) sed -n '2,18p' "$SCRIPT" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
