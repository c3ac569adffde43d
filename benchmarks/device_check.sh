#!/usr/bin/env bash
# The GPU device check (benchmarks/GPU.md): every GPU path of the project once, one report file, in
# under 8 minutes on one H100/H200. Usage, from the repository root:
#   bash benchmarks/device_check.sh [REPORT]        # REPORT default: $OUT/device_check.md or ./device_check_<date>.md
#   bash benchmarks/device_check.sh --dry [REPORT]  # the same steps on the CPU, tiny sizes (CI)
# Wheels in .whl/ (pure-Python packages the machine lacks, e.g. timm >= 1.0.29) are installed into
# /tmp/site first; the machine has no internet.
set -u
cd "$(dirname "$0")/.."
dry=()
if [ "${1:-}" = "--dry" ]; then dry=(--dry); shift; fi
report="${1:-${OUT:+$OUT/device_check.md}}"
report="${report:-device_check_$(date +%F).md}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_check: installing .whl/*.whl failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# each step has its own timeout inside; this one only guards against a hang of the driver itself
timeout "${DEVICE_CHECK_TIMEOUT:-$([ ${#dry[@]} -gt 0 ] && echo 1800 || echo 600)}" \
  python3 benchmarks/device_check.py "${dry[@]}" --report "$report"
rc=$?
echo "device_check: report in $report (exit $rc)"
exit $rc
