#!/usr/bin/env bash
# apt_install PACKAGE...: installs Debian packages the project's set-up needs (as root).
# Sourced by bootstrap.sh and userland.sh, which `make test` runs side by side: both may
# install at once, so each waits for the other's dpkg lock instead of failing on it.
apt_install() {
  local apt=(apt-get -o DPkg::Lock::Timeout=900 -y -q)
  "${apt[@]}" install "$@" >/dev/null 2>&1 \
    || { "${apt[@]}" update >/dev/null 2>&1 && "${apt[@]}" install "$@" >/dev/null 2>&1; }
}
