#!/bin/sh
# make bench-triton: perf_analyzer (from the tritonclient[all] wheel) on a policy ensemble.
# perf_analyzer links Debian's libb64 (not on PyPI): install it when missing, without prompts.
# Arguments go to `python -m benchmarks.perf_triton` (see --help), e.g. --triton-url host:8001.
set -eu
if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing libb64-0d (needed by perf_analyzer) ..." >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d >/dev/null 2>&1 || {
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d >/dev/null
    }
fi
exec "${PYTHON:-.venv/bin/python}" -m benchmarks.perf_triton "$@"
