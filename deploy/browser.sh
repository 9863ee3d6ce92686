#!/usr/bin/env bash
# Headless Chromium and its chromedriver for the dashboard's browser test
# (tests/test_dashboard_browser.py, through tests/support/browser.py).
#
#   deploy/browser.sh
#
# Idempotent: when `chromium` and `chromedriver` are on PATH it prints their versions and
# exits; otherwise, as root, it installs the Debian packages chromium and chromium-driver
# (apt-get update only when the install fails without it). Selenium never downloads a
# browser (no selenium-manager): the summit and CI may have no internet.
set -euo pipefail

die() { echo "browser.sh: $*" >&2; exit 1; }

PACKAGES=(chromium chromium-driver)

have_both() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

# Debian's launcher script (/usr/bin/chromium) may complain on stderr about its own checks.
versions() {
    echo "browser.sh: $(chromium --version 2>/dev/null | head -n 1) ($(command -v chromium))"
    echo "browser.sh: $(chromedriver --version 2>/dev/null | head -n 1) ($(command -v chromedriver))"
}

install_packages() {
    if [[ $EUID -ne 0 ]]; then
        die "chromium/chromedriver not found; install them as root: apt-get install -y ${PACKAGES[*]}"
    fi
    echo "browser.sh: installing ${PACKAGES[*]} (apt-get)" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${PACKAGES[@]}"; then
        echo "browser.sh: install failed; updating the package lists first" >&2
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${PACKAGES[@]}"
    fi
    have_both || die "apt-get install finished but chromium or chromedriver is not on PATH"
}

have_both || install_packages
versions
