# Shared by scripts/demo and scripts/test: make .venv (Python 3.11+) and install
# Lasthop with the given extra, only when pyproject.toml changed since last time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LASTHOP_VENV:-$root/.venv}"
extra="$1"

python=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python="$candidate"; break
  fi
done
[ -n "$python" ] || { echo "lasthop: Python 3.11 or newer is required" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  echo "lasthop: creating $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.lasthop-$extra"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "lasthop: installing lasthop[$extra] into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[$extra]"
  # xds-protos (Envoy's protos) ships an older copy of opentelemetry-proto's modules in the
  # same files; whichever installs last wins. Put OpenTelemetry's own back (tracing needs it).
  otel="$("$venv/bin/python" -m pip show opentelemetry-proto 2>/dev/null | sed -n 's/^Version: //p')"
  if [ -n "$otel" ]; then
    "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "opentelemetry-proto==$otel"
  fi
  touch "$stamp"
fi
