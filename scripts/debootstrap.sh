#!/usr/bin/env bash
# debootstrap_into DIR SUITE PACKAGES: a minimal Debian SUITE in DIR
# (`debootstrap --variant=minbase --include=PACKAGES`) from the host's Debian mirror (its
# apt sources); installs debootstrap with apt when missing. Prints the log's tail and
# returns 1 if debootstrap fails. Sourced by scripts/image.sh (the image's stand-in base).
debootstrap_into() {
  local dir=$1 suite=$2 packages=$3 mirror
  command -v debootstrap >/dev/null || {
    echo "installing debootstrap on the host (apt)" >&2
    source "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" && apt_install debootstrap
  } || { echo "debootstrap is missing and could not be installed (apt-get install debootstrap)" >&2; return 1; }
  mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Origin: Debian' 2>/dev/null | grep -v security | head -n 1 || true)
  echo "debootstrap $suite (about 2 min): $packages" >&2
  # Inside its own mount namespace: the /proc and /sys debootstrap mounts cannot outlive it.
  unshare --mount --propagation private \
    debootstrap --variant=minbase --include="$packages" "$suite" "$dir" ${mirror:+"$mirror"} \
    >"$dir.log" 2>&1 || { tail -n 20 "$dir.log" >&2; echo "debootstrap failed (log: $dir.log)" >&2; return 1; }
  rm -f "$dir.log"
}
