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
#   scripts/userland.sh available          the ENVs whose Python this host has, in ENVS order
#   scripts/userland.sh check [ENV...]     say at once which Python is missing, if any
#   scripts/userland.sh constraints [ENV...]  re-resolve unpinned; write constraints/*.new
#   scripts/userland.sh fresh-demo         `git clone` + `make demo` in the userland, with
#                                          Debian's Python 3.13 alone (as on a new machine)
#   scripts/userland.sh mode               print where the environments run, and why
#
# ENV is one of ENVS below. FINAL_EXPORTER_NATIVE=1|0 overrides the choice of
# native vs userland (default: native iff the host's glibc >= 2.39). FINAL_EXPORTER_SUITE
# overrides which tests `test` collects (default: the ENV's line; tests/conftest.py).
# Everything built is cached outside the repository in $FINAL_EXPORTER_CACHE
# (default /var/cache/tfx-final-exporter as root, else ~/.cache/tfx-final-exporter),
# keyed by what it installs.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT="$REPO/scripts/userland.sh"
if [ "$(id -u)" = 0 ]; then DEFAULT_CACHE=/var/cache/tfx-final-exporter
else DEFAULT_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tfx-final-exporter; fi
CACHE=${FINAL_EXPORTER_CACHE:-$DEFAULT_CACHE}
SUITE=trixie # Debian 13: glibc 2.41, Python 3.13.
# python3*: Debian's 3.13 and the shared libraries pyenv's 3.11 and 3.12 link (libssl3,
# libffi8, libsqlite3...); python3-dev, g++: pyfarmhash is published only as source;
# xfsprogs: the reflink test formats XFS; e2fsprogs: the EIO test formats ext4 (mkfs.ext4,
# filefrag); util-linux/mount: losetup, mount, findmnt; util-linux-extra: fincore (what of
# a file is in the page cache: the O_DIRECT test);
# git, make: `fresh-demo` clones the repository and runs `make demo` there.
PACKAGES=python3,python3-venv,python3-pip,python3-dev,g++,ca-certificates,xfsprogs,e2fsprogs,util-linux,util-linux-extra,mount,git,make
PYENV=${PYENV_ROOT:-$HOME/.pyenv}
# The newest pyenv build of Python $1 (3.11, 3.12), if any. Only a folder with its python
# counts: a bind mount into the userland leaves an empty folder of that name behind there.
pyenv_python() {
  local d
  for d in $(ls -d "$PYENV/versions/$1".* 2>/dev/null | sort -rV); do
    [ ! -x "$d/bin/python$1" ] || { printf '%s' "$d"; return; }
  done
}
PY311=$(pyenv_python 3.11)
PY312=$(pyenv_python 3.12)

say() { printf 'userland: %s\n' "$*" >&2; }
die() { printf 'userland: error: %s\n' "$*" >&2; exit 2; }
host_glibc() { getconf GNU_LIBC_VERSION | awk '{print $2}'; }
native() {
  case "${FINAL_EXPORTER_NATIVE:-auto}" in
    1) return 0 ;; 0) return 1 ;;
    auto) [ "$(printf '%s\n2.39\n' "$(host_glibc)" | sort -V | head -n 1)" = 2.39 ] ;;
    *) die "FINAL_EXPORTER_NATIVE must be 1, 0 or unset" ;;
  esac
}

# In the userland: pyenv's 3.11 and 3.12, built for glibc <= 2.36, run unchanged on its
# newer glibc (bind-mounted at the same path); 3.13 is Debian's own. Natively: pyenv's
# build if there is one, else python3.X on PATH (what a distribution installs).
PY311_BIN=${PY311:+$PY311/bin/python3.11} PY312_BIN=${PY312:+$PY312/bin/python3.12}
PY313_BIN=/usr/bin/python3.13
if native; then
  PY311_BIN=${PY311_BIN:-$(command -v python3.11 || true)}
  PY312_BIN=${PY312_BIN:-$(command -v python3.12 || true)}
  PY313_BIN=$(command -v python3.13 || true)
fi

# What runs where is decided once, in tests/conftest.py (FINAL_EXPORTER_SUITE): `full` is
# every test file; `versions` the files whose outcome depends on the versions of Python,
# TFX, TensorFlow, kfp, Beam and protobuf. The whole suite runs once, on the default
# image's environment (Python 3.11); the others run what differs between them.
# name|python|constraints file|pip requirement|suite|what runs there
ENVS=(
  "tfx1.21-py3.11|$PY311_BIN|constraints/tfx-1.21-py3.11.txt|.[test,bench,signing]|full|the whole suite (the default image's environment)"
  "tfx1.21-py3.12|$PY312_BIN|constraints/tfx-1.21-py3.12.txt|.[test,signing]|versions|the version-dependent tests; no kfp (TFX 1.21 declares it for Python < 3.12)"
  "tfx1.21-py3.13|$PY313_BIN|constraints/tfx-1.21-py3.13.txt|.[test,signing]|versions|the version-dependent tests; no kfp (TFX 1.21 declares it for Python < 3.12)"
)

took() { local s=$((SECONDS - $1)); printf '%d min %02d s' $((s / 60)) $((s % 60)); }
field() { local IFS='|'; local -a f; read -r -a f <<<"$1"; printf '%s' "${f[$2]}"; }
env_spec() {
  local e
  for e in "${ENVS[@]}"; do [ "$(field "$e" 0)" = "$1" ] && { printf '%s' "$e"; return; }; done
  die "unknown environment '$1' (known: $(env_names | tr '\n' ' '))"
}
env_names() { local e; for e in "${ENVS[@]}"; do field "$e" 0; echo; done; }

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
  # With CLEAN_SOURCE set (fresh-demo), a new machine's view instead: no repository, venvs
  # or pyenv; CLEAN_SOURCE (a git repository) read-only at /srv/tfx-final-exporter.git.
  local root=$1 tmp=$2 cwd=$REPO
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
  mkdir -p /root/.cache/pip && bind /root/.cache/pip "$root/root/.cache/pip"
  if [ -n "${CLEAN_SOURCE:-}" ]; then
    bind "$CLEAN_SOURCE" "$root/srv/tfx-final-exporter.git" ro
    mkdir -p "$tmp/cache" && bind "$tmp/cache" "$root/var/cache/tfx-final-exporter"
    cwd=/tmp
  else
    bind "$REPO" "$root$REPO"
    bind "$CACHE/venvs" "$root$CACHE/venvs"
    [ -z "$PY311" ] || bind "$PY311" "$root$PY311" ro
    [ -z "$PY312" ] || bind "$PY312" "$root$PY312" ro
  fi
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  # A clean environment: the host's pip configuration (local find-links) does not apply.
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    ${FINAL_EXPORTER_SOAK:+FINAL_EXPORTER_SOAK=$FINAL_EXPORTER_SOAK} \
    ${FINAL_EXPORTER_SUITE:+FINAL_EXPORTER_SUITE=$FINAL_EXPORTER_SUITE} \
    bash -c 'cd "$1" && shift && exec "$@"' _ "$cwd" "$@"
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
    py=$2
    shift 2
    "$@" && exit 0
    # pyfarmhash (TFX) is published only as source: a new machine may lack what builds it.
    command -v c++ >/dev/null || missing="a C++ compiler"
    "$py" -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path(\"include\"), \"Python.h\")))" \
      || missing="${missing:+$missing and }$py'"'"'s headers"
    [ -z "${missing:-}" ] || echo "userland: pyfarmhash is published only as source and needs $missing (Debian, Ubuntu: apt-get install g++ python3-dev)" >&2
    exit 1' _ "$2" "$python" "$2/bin/python" -m pip install -q "${pin[@]}" -e "$requirement" \
    || die "building $(field "$1" 0) failed (above)"
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
  [ -n "$(field "$spec" 1)" ] || die "$(missing_python "$name")"
  dir="$CACHE/venvs/$name-$(venv_key "$spec")"
  (
    flock 9
    if [ ! -f "$dir/.complete" ]; then
      say "building $name (about 4 min): $(field "$spec" 3) -c $(field "$spec" 2)"
      build_venv "$spec" "$dir"
      prune "$dir" "$CACHE/venvs/$name-"
    fi
  ) 9>"$CACHE/venvs/.$name.lock" || exit $?
  printf '%s' "$dir"
}

missing_python() { # ENV: one line saying which Python to install
  local minor=${1##*-py}
  if native; then echo "no Python $minor for $1: install python$minor (or: pyenv install $minor)"
  else echo "no Python $minor for $1 in the userland: it takes pyenv's build from $PYENV/versions/$minor.*: pyenv install $minor"; fi
}

# The venvs are shared by every clone (their editable install points at the clone that
# built them): each run puts its own clone's package first on the path instead, so two
# clones can run at once.
run_env() { # VENV CMD...: CMD in ENV's venv, with this clone's code
  local venv=$1
  shift
  in_env_host env PATH="$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    PYTHONPATH="$REPO/component" "$@"
}

setup() { # sets ROOT (userland mode) before any venv work
  if native; then ROOT=; else ROOT=$(ensure_rootfs) || exit $?; hold "$ROOT"; fi
}

describe() { # ENV VENV SUITE: the banner over each block of results.
  local spec=$1 venv=$2 suite=$3 what
  what=$(field "$spec" 5)
  [ "$suite" = "$(field "$spec" 4)" ] || what="FINAL_EXPORTER_SUITE=$suite"
  printf '\n==== environment %s: %s ====\n' "$(field "$spec" 0)" "$what"
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
  local names=("$@") name venv suite started rc=0 failed=()
  [ ${#names[@]} -gt 0 ] || mapfile -t names < <(env_names)
  setup
  for name in "${names[@]}"; do
    venv=$(ensure_venv "$name")
    hold "$venv"
    suite=${FINAL_EXPORTER_SUITE:-$(field "$(env_spec "$name")" 4)}
    describe "$(env_spec "$name")" "$venv" "$suite"
    started=$SECONDS
    # What runs where is decided in tests/conftest.py (FINAL_EXPORTER_SUITE, kfp or not).
    if run_env "$venv" env FINAL_EXPORTER_SUITE="$suite" python -m pytest -q -p no:cacheprovider; then
      printf '==== environment %s: passed (%s) ====\n' "$name" "$(took "$started")"
    else
      rc=$?; failed+=("$name")
      printf '==== environment %s: FAILED (exit %s) (%s) ====\n' "$name" "$rc" "$(took "$started")"
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
  run_env "$venv" "$@"
}

cmd_available() {
  local e
  for e in "${ENVS[@]}"; do [ -z "$(field "$e" 1)" ] || { field "$e" 0; echo; }; done
}

cmd_check() { # [ENV...]: make test runs this first; `prepare` runs in the background
  local names=("$@") name
  [ ${#names[@]} -gt 0 ] || mapfile -t names < <(env_names)
  for name in "${names[@]}"; do
    [ -n "$(field "$(env_spec "$name")" 1)" ] || die "$(missing_python "$name")"
  done
}

cmd_constraints() { # [ENV...]: re-resolve unpinned, freeze to constraints/<file>.new for review
  local names=("$@") name e dir out
  [ ${#names[@]} -gt 0 ] || mapfile -t names < <(env_names)
  setup
  mkdir -p "$CACHE/venvs"
  for name in "${names[@]}"; do
    e=$(env_spec "$name")
    [ -n "$(field "$e" 1)" ] || die "$(missing_python "$name")"
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

# `make demo` as a new user on Debian 13 runs it: a `git clone` of this repository's HEAD
# inside the userland, with Debian's Python 3.13 the only Python there: no pyenv, no venv
# of ours, nothing of the host but pip's download cache.
cmd_fresh_demo() {
  [ "$(id -u)" = 0 ] || die "fresh-demo needs root (debootstrap, chroot, mounts)"
  ROOT=$(ensure_rootfs) || exit $?
  hold "$ROOT"
  local src rc=0
  mkdir -p "$CACHE/tmp"
  src=$(mktemp -d "$CACHE/tmp/run.$$.source.XXXXXX") # removed with the run's /tmp if killed
  git clone -q --bare "$REPO" "$src/repo.git"
  CLEAN_SOURCE="$src/repo.git" in_userland bash -c '
    set -e
    echo "fresh-demo: Pythons on PATH: $(compgen -c python | sort -u | tr "\n" " ")"
    git clone -q /srv/tfx-final-exporter.git fresh && cd fresh
    echo "fresh-demo: $(git log -1 --format="%h %s" | cut -c1-80)"
    start=$(date +%s)
    make demo
    echo "fresh-demo: make demo passed in $(( $(date +%s) - start )) s"' || rc=$?
  rm -rf "$src"
  return "$rc"
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
  constraints) shift; cmd_constraints "$@" ;;
  available) cmd_available ;;
  check) shift; cmd_check "$@" ;;
  fresh-demo) cmd_fresh_demo ;;
  mode) cmd_mode ;;
  __chroot) shift; __chroot "$@" ;;
  *) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$SCRIPT" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
