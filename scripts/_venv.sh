# Sourced by scripts/bridge and scripts/test: make .venv (Python 3.11+) and install the project into it.
# Reinstalls only when pyproject.toml changed, so the second run starts at once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
extras="${1:-}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: flashduty-bridge needs Python 3.11 or newer; $python is $("$python" --version 2>&1)" >&2
    exit 1
fi
venv="$root/.venv"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
installed=("$stamp"*)  # an install with extras (scripts/test's) has the project too
stamp="$stamp${extras:+-$extras}"
if [ ! -e "$stamp" ] && { [ -n "$extras" ] || [ ! -e "${installed[0]}" ]; }; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root${extras:+[$extras]}"
    touch "$stamp"
fi
