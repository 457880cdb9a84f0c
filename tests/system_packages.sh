#!/usr/bin/env bash
# The Debian packages the suite's real-component tests run (`make test` calls this first):
# Chromium for the MLflow UI test, PostgreSQL behind the auth server, SLURM with munge, and
# Fashion-MNIST, the one real 60k-image dataset these machines install offline.
# Missing ones are installed when this user can (root, or sudo without a password, and apt-get);
# otherwise this stops at once with the one command that installs them.
set -euo pipefail

# package name, then a path whose presence says it is installed
checks=(
  "chromium:/usr/bin/chromium"
  "postgresql:/usr/lib/postgresql"
  "slurm-wlm:/usr/sbin/slurmctld"
  "munge:/usr/sbin/munged"
  "dataset-fashion-mnist:/usr/share/datasets/fashion-mnist"
)
missing=()
for entry in "${checks[@]}"; do
  [ -e "${entry#*:}" ] || missing+=("${entry%%:*}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  sudo=none
fi
if [ "${sudo[*]}" = none ] || ! command -v apt-get >/dev/null; then
  echo "make test: missing Debian packages (${missing[*]}); install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 2
fi
echo "make test: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
