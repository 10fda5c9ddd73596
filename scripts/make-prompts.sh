#!/usr/bin/env bash
# Generates the demo's telephony prompts with espeak-ng and sox: 8 kHz mono G.711 µ-law WAV
# (8 KB/s), leading and trailing silence trimmed. The output is committed under prompts/ so
# the demo runs without espeak-ng; rerun this after changing a text.
#
# Usage: scripts/make-prompts.sh [OUTPUT_DIR]        (default: prompts/ of this repository)
# Environment: VOICE (espeak-ng voice, default "en"), SPEED (words per minute, default 165).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$(dirname "$here")/prompts}"
voice="${VOICE:-en}"
speed="${SPEED:-165}"

for tool in espeak-ng sox; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "make-prompts: $tool not found (apt-get install espeak-ng sox)" >&2
        exit 1
    fi
done

mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# prompt NAME TEXT: synthesize TEXT into OUT/NAME.wav.
prompt() {
    local name="$1" text="$2"
    espeak-ng -v "$voice" -s "$speed" -w "$tmp/raw.wav" -- "$text"
    # -D: no dither, so reruns give byte-identical files (no spurious diffs in git).
    # silence … reverse silence … reverse: trim silence at the start, then at the end.
    # gain -n -3: normalize peaks to -3 dBFS so prompts play at one level.
    # pad: a short gap after each prompt so digits read back one by one stay distinct.
    sox -D -V1 "$tmp/raw.wav" -r 8000 -c 1 -e u-law -b 8 "$out/$name.wav" \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse \
        gain -n -3 pad 0 0.06
}

prompt welcome "Welcome to Callplane."
prompt enter-digits "Please enter three digits, then press hash."
prompt you-entered "You entered"
prompt invalid "Sorry, that was not valid."
prompt goodbye "Goodbye."

digits=(zero one two three four five six seven eight nine)
for d in "${!digits[@]}"; do
    prompt "digit-$d" "${digits[$d]}"
done
prompt digit-star "star"
prompt digit-hash "hash"

total=$(du -cb "$out"/*.wav | tail -n 1 | cut -f 1)
echo "make-prompts: wrote $(ls "$out"/*.wav | wc -l) prompts, $total bytes, to $out"
