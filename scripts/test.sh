#!/usr/bin/env bash
# Runs Callplane's whole test suite: unit tests and the end-to-end tests that drive the real
# binary with real SIP peers, and the OpenAPI fuzzer. Installs the peers (Debian packages) first
# when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
[ -d /usr/share/asterisk/sounds/en ] || need+=(asterisk-core-sounds-en-wav asterisk-core-sounds-en)
# The OpenAPI fuzz test makes a venv (python3 -m venv) and installs schemathesis from PyPI.
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${need[@]}"
  else
    echo "missing test peers: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

# The built-in speech recognizer's model and runtime (PyPI, pinned by hash) for
# tests/e2e_builtin_speech.rs; a no-op when already installed.
if [ "$(id -u)" = 0 ] || [ -w /usr/local/lib ]; then
  bash scripts/install-moonshine.sh
elif [ ! -f /usr/local/lib/callplane/moonshine/moonshine_cpp/models/base-en/decoder_model_merged.ort ]; then
  echo "missing the speech model: run scripts/install-moonshine.sh as root" >&2
  exit 1
fi

cargo test --workspace --locked "$@"
