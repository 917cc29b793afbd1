#!/usr/bin/env bash
# Frames per second while a soft-prompt slider is dragged: SmolLM2 (N about 40, P = 1), layer 0, the
# real window under Xvfb at 1280x800, the d0 slider dragged back and forth by xdotool for 10 s.
# Prints the app's own per-second counts (--bench-fps): frames, mean UI time, view updates per second.
# usage: .ci/bench-fps.sh [--bin PATH] [--seconds S]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${PREFIXSCOPE_BIN:-}"; secs=10
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --seconds) secs="$2"; shift 2 ;;
    *) echo "bench-fps: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --quiet --bin prefixscope)
  bin="${CARGO_TARGET_DIR:-$root/target}/debug/prefixscope"
fi
model="$(bash "$root/.ci/fetch-smollm2.sh")"
work="$(mktemp -d)"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$work/run}"; mkdir -p "$XDG_RUNTIME_DIR"; chmod 700 "$XDG_RUNTIME_DIR"
Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp 3>"$work/display" 2>"$work/xvfb.log" &
xvfb=$!; app=""
trap '[ -n "$app" ] && kill $app 2>/dev/null; kill $xvfb 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -s "$work/display" ] && break; sleep 0.1; done
export DISPLAY=":$(cat "$work/display")"
prompt="The quick brown fox jumps over the lazy dog, and then it runs back home to sleep under the old oak tree by the river, where the water is cold and clear and the birds sing all day."
"$bin" --model "$model" --prompt "$prompt" --fresh --session-dir "$work/s" --size 1280x800 \
  --bench-fps --timings 2>"$work/err" &
app=$!
for _ in $(seq 600); do grep -q "startup: all views filled" "$work/err" && break; sleep 0.1; done
grep -h "model loaded\|startup:" "$work/err"
sleep 2
# The first dimension's slider, where the app says it drew it.
read -r x0 x1 y < <(sed -n 's/^bench: slider d[0-9]* track x \([0-9-]*\)\.\.\([0-9-]*\) y \([0-9-]*\)$/\1 \2 \3/p' "$work/err" | head -n 1)
[ -n "${y:-}" ] || { echo "bench-fps: the app did not report its slider" >&2; cat "$work/err" >&2; exit 1; }
x0=$((x0 + 4)); x1=$((x1 - 4))
echo "dragging the slider between x = $x0 and $x1 at y = $y"
start_line=$(wc -l < "$work/err")
xdotool mousemove $x0 $y mousedown 1
end=$(( $(date +%s) + secs ))
x=$x0; step=4
while [ "$(date +%s)" -lt "$end" ]; do
  x=$(( x + step )); if [ $x -ge $x1 ] || [ $x -le $x0 ]; then step=$(( -step )); fi
  xdotool mousemove $x $y; sleep 0.01
done
xdotool mouseup 1
sleep 1
echo "while dragging (SmolLM2, N = 41 tokens, P = 1 soft prompt, layer 0):"
tail -n +"$((start_line + 1))" "$work/err" | grep "^fps" | head -n "$secs"
import -window root "$work/during.png" 2>/dev/null && cp "$work/during.png" /tmp/bench-fps-last.png || true
kill $app; wait $app 2>/dev/null || true; app=""
