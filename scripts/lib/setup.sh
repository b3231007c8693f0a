# Shared set-up for scripts/run and scripts/test: Debian packages, .venv, the package.
# Sourced, not executed. Usage: setup_env [extra pip spec] -- [debian packages...]

set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="$REPO/.venv"

need_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}" >&2
        if [ "$(id -u)" -ne 0 ]; then
            echo "error: need root to install ${missing[*]} (or install them first)" >&2
            exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
            || { apt-get update -q >/dev/null && \
                 apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
    fi
}

setup_venv() {
    local spec="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO$spec"
}
