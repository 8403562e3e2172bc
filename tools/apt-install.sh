#!/usr/bin/env bash
# Install a Debian package that some tests need, without ever failing the build:
#   tools/apt-install.sh PACKAGE "WHAT IS SKIPPED WITHOUT IT"
# Without apt-get, or without root or password-less sudo, it only warns, and those tests skip with their reason.
set -u
package=$1
skipped=$2
if ! command -v apt-get >/dev/null 2>&1; then
	echo "warning: no apt-get here; install $package yourself, or $skipped"; exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else echo "warning: installing $package needs root or sudo; $skipped"; exit 0; fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" \
	|| { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package"; } \
	|| echo "warning: $package could not be installed; $skipped"
exit 0
