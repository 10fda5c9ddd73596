#!/usr/bin/env bash
# Installs the built-in speech recognizer's model and runtime: the PyPI package moonshine-cpp
# 0.1.4 (Moonshine AI: Moonshine's English base model, MIT, and ONNX Runtime 1.22.1), pinned by
# its hash. Callplane finds it at /usr/local/lib/callplane/moonshine/moonshine_cpp, or where
# `[asr] moonshineDir` says. Without it COLLECT_SPEECH uses `[asr] url` or is skipped.
#
# Usage: scripts/install-moonshine.sh [TARGET_DIR]   (default /usr/local/lib/callplane/moonshine)
set -euo pipefail
target="${1:-/usr/local/lib/callplane/moonshine}"
if [ -f "$target/moonshine_cpp/models/base-en/decoder_model_merged.ort" ]; then
    exit 0
fi
case "$(uname -m)" in
    x86_64) ;;
    *) echo "install-moonshine: only the x86_64 wheel is pinned here, not $(uname -m)" >&2; exit 1 ;;
esac
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/requirements.txt" <<'REQ'
moonshine-cpp==0.1.4 --hash=sha256:f7afc662bdd3ef98815ee3b940438b456e77d5a77cea5396ed9c572785412ebd
REQ
# The interpreter's pip, else one in a throwaway venv (Debian's python3 has no pip by itself).
pip=(python3 -m pip)
if ! python3 -m pip --version >/dev/null 2>&1; then
    python3 -m venv "$tmp/venv"
    pip=("$tmp/venv/bin/python" -m pip)
fi
"${pip[@]}" install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --only-binary=:all: --require-hashes -r "$tmp/requirements.txt" --target "$tmp/pkg"
mkdir -p "$target"
rm -rf "$target/moonshine_cpp"
mv "$tmp/pkg/moonshine_cpp" "$target/moonshine_cpp"
echo "install-moonshine: $target/moonshine_cpp"
