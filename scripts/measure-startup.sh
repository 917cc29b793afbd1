#!/usr/bin/env bash
# Issue #19, finding 11: the window's startup on SmolLM2 to all views filled against the command
# line's `attention` on the same prompt, alternating, ROUNDS times. Run by hand from the repository
# root (never in CI; timings need a quiet machine, and the report should give `uptime`'s load):
#     bash scripts/measure-startup.sh            (ROUNDS=5; PREFIXSCOPE_BIN=path skips the build)
#     BASE_BIN=/other/prefixscope bash scripts/measure-startup.sh   (also times another build's window)
# Per round it prints the app's own timer (`--timings`: "startup: all views filled N ms after start",
# counted from before the window is created), the wall time from exec to that line, and the wall time
# of `prefixscope attention` with the app's starting prefix (a zero soft prompt, P = 1), so that both
# compute the same maps. Needs Xvfb and the cached SmolLM2 GGUF (.ci/fetch-smollm2.sh), numpy for the
# zero prefix file.
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF="${PREFIXSCOPE_SMOLLM2:-${PREFIXSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prefixscope}/SmolLM2-135M-Instruct.Q4_1.gguf}"
[ -f "$GGUF" ] || bash .ci/fetch-smollm2.sh
if [ -n "${PREFIXSCOPE_BIN:-}" ]; then
  BIN="$PREFIXSCOPE_BIN"
else
  cargo build --quiet --bin prefixscope
  BIN="${CARGO_TARGET_DIR:-target}/debug/prefixscope"
fi
PROMPT="The cat sat on the mat because it was warm"
work="$(mktemp -d)"
"${PYTHON:-python3}" -c "import numpy as np; np.savez('$work/soft.npz', soft_prompt=np.zeros((1, 576), np.float32))"
export XDG_RUNTIME_DIR="$work/run"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
Xvfb -displayfd 3 -screen 0 1400x900x24 -nolisten tcp 3>"$work/display" 2>/dev/null &
xvfb=$!
trap 'kill $xvfb 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -s "$work/display" ] && break; sleep 0.1; done
export DISPLAY=":$(cat "$work/display")"

# One window start: "timer T exec E" in ms.
app() {
  rm -f "$work/app.err"
  local t0 t1 pid
  t0=$(date +%s.%N)
  "$1" --model "$GGUF" --prompt "$PROMPT" --fresh --session-dir "$work/s" --size 1280x800 \
    --quit-after 0.2 --timings 2>"$work/app.err" >/dev/null &
  pid=$!
  while ! grep -q "all views filled" "$work/app.err" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.02
  done
  t1=$(date +%s.%N)
  wait "$pid" || true
  echo "timer $(grep -o "all views filled [0-9]* ms" "$work/app.err" | grep -o "[0-9]*") exec $(echo "($t1 - $t0) * 1000 / 1" | bc)"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "${ROUNDS:-5}"); do
  base=""
  [ -n "${BASE_BIN:-}" ] && base="base app [$(app "$BASE_BIN")] · "
  this=$(app "$BIN")
  t0=$(date +%s.%N)
  "$BIN" attention --model "$GGUF" --text "$PROMPT" --soft-prompt "$work/soft.npz" --out "$work/a.npz" 2>/dev/null
  t1=$(date +%s.%N)
  echo "round $r: ${base}app [$this] · cli attention $(echo "($t1 - $t0) * 1000 / 1" | bc) · load $(cut -d' ' -f1 /proc/loadavg)"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
