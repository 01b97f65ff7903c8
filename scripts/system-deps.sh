#!/usr/bin/env bash
# System packages the tests need, from Debian: headless Chromium and its driver (the dashboard
# test), docker-compose (validates deploy/docker-compose.yml without an engine) and promtool
# (package prometheus; checks the Prometheus config and alert rules). Installs only what is
# missing; needs root or passwordless sudo.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "system-deps: need root (or passwordless sudo) to apt-get install ${need[*]}" >&2
  exit 1
fi
echo "system-deps: installing ${need[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# RUNLEVEL=1 keeps invoke-rc.d from starting the prometheus server that the package ships
"${sudo[@]}" env RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
