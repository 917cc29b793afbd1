#!/usr/bin/env bash
# Start the real prefixscope window under Xvfb, wait until all views are filled, take a screenshot,
# check that the image is the app (expected size, many distinct colours, not blank) and that the
# process exits cleanly on its own (--quit-after). Used by .ci/run.
#
# usage: .ci/screenshot-check.sh [--model PATH] [--size WxH] [--out FILE.png] [--bin PATH]
# Needs: Xvfb, ImageMagick (import, identify), Mesa GL (libgl1-mesa-dri libegl-mesa0),
#        libxkbcommon-x11-0. Without --model it opens the bundled default model.
set -euo pipefail
size=1280x800
out=""
model=()
bin="${PREFIXSCOPE_BIN:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=(--model "$2"); shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    *) echo "screenshot-check: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --quiet --bin prefixscope)
  bin="${CARGO_TARGET_DIR:-$root/target}/debug/prefixscope"
fi
for tool in Xvfb import identify; do
  command -v "$tool" >/dev/null || { echo "screenshot-check: '$tool' not found (apt-get install xvfb imagemagick)" >&2; exit 2; }
done
w="${size%x*}"; h="${size#*x}"
work="$(mktemp -d)"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$work/run}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
[ -n "$out" ] || out="$work/screenshot.png"

# A free display number from Xvfb itself.
Xvfb -displayfd 3 -screen 0 "${w}x${h}x24" -nolisten tcp 3>"$work/display" 2>"$work/xvfb.log" &
xvfb=$!
app=""
cleanup() {
  [ -n "$app" ] && kill "$app" 2>/dev/null || true
  kill "$xvfb" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$work/display" ] && break; sleep 0.1; done
[ -s "$work/display" ] || { echo "screenshot-check: Xvfb did not start: $(cat "$work/xvfb.log")" >&2; exit 1; }
export DISPLAY=":$(cat "$work/display")"

quit_after=4
start=$(date +%s.%N)
"$bin" "${model[@]}" --fresh --session-dir "$work/session" --size "$size" --quit-after "$quit_after" \
  --timings >"$work/app.out" 2>"$work/app.err" &
app=$!

# Wait for the app to report that every view is filled (or, with no model, a few seconds).
filled=""
for _ in $(seq 300); do
  if grep -q "startup: all views filled" "$work/app.err"; then filled=yes; break; fi
  if ! kill -0 "$app" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ -z "$filled" ]; then
  if kill -0 "$app" 2>/dev/null && grep -q "not found" "$work/app.err" 2>/dev/null; then :; fi
  echo "screenshot-check: the views were not filled within 30 s; app stderr:" >&2
  cat "$work/app.err" >&2
  exit 1
fi
grep -h "model loaded\|startup:" "$work/app.err" || true
# Park the pointer on the status bar so no tooltip covers the views, let a few frames settle.
command -v xdotool >/dev/null && xdotool mousemove "$((w - 5))" "$((h - 5))" || true
sleep 1.5
import -window root "$out"

# The process must close by itself and exit 0.
status=0
wait "$app" || status=$?
app=""
end=$(date +%s.%N)
if [ "$status" -ne 0 ]; then
  echo "screenshot-check: prefixscope exited with status $status; stderr:" >&2
  cat "$work/app.err" >&2
  exit 1
fi
if grep -qi "panicked" "$work/app.err"; then
  echo "screenshot-check: prefixscope panicked:" >&2; cat "$work/app.err" >&2; exit 1
fi

read -r iw ih colours <<<"$(identify -format '%w %h %k' "$out")"
echo "screenshot: $out (${iw}x${ih}, $colours distinct colours); app ran $(echo "$end - $start" | bc) s and exited 0"
[ "$iw" = "$w" ] && [ "$ih" = "$h" ] || { echo "screenshot-check: expected ${w}x${h}, got ${iw}x${ih}" >&2; exit 1; }
# The app's heatmaps alone bring hundreds of colours; a blank or black window has a handful.
[ "$colours" -ge 200 ] || { echo "screenshot-check: only $colours colours: the window looks blank" >&2; exit 1; }
# Its dark theme fills most of the screen with the panel grey, and the colour maps add viridis.
mean=$(identify -format '%[fx:mean]' "$out")
awk -v m="$mean" 'BEGIN { exit !(m > 0.03 && m < 0.6) }' || { echo "screenshot-check: mean brightness $mean is not the app's dark theme" >&2; exit 1; }
echo "screenshot-check: ok"
