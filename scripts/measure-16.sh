#!/usr/bin/env bash
# The figures of issue #16, in one run on a quiet machine (nothing else running: the figures are
# timings). Run by hand from the repository root, never in CI (it needs torch from /work/venv-ref or
# $PEER_PYTHON, and the cached SmolLM2 GGUF from .ci/fetch-smollm2.sh):
#     bash scripts/measure-16.sh [OUT_DIR]     (ROUNDS=3 REPEATS=3 by default; PREFIXSCOPE_BIN=path skips the build)
# Writes OUT_DIR/ (default target/measure-16/): inspect.txt, peer.txt + peer.json (prefixscope against
# transformers, alternating), bench.txt (the full bench: update latencies for the no-regression check),
# candle.txt (PREFIXSCOPE_BLAS=off: the no-BLAS path) and summary.txt (all of it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/measure-16}"
mkdir -p "$OUT"
PY="${PEER_PYTHON:-/work/venv-ref/bin/python}"
GGUF="${PREFIXSCOPE_SMOLLM2:-${PREFIXSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prefixscope}/SmolLM2-135M-Instruct.Q4_1.gguf}"
[ -f "$GGUF" ] || bash .ci/fetch-smollm2.sh
# PREFIXSCOPE_BIN: an already built binary (e.g. target/debug/prefixscope: dev is optimized too).
if [ -n "${PREFIXSCOPE_BIN:-}" ]; then
  BIN="$PREFIXSCOPE_BIN"
else
  cargo build --release --quiet
  BIN=target/release/prefixscope
fi
{
  echo "# $(date -u +%FT%TZ) on $(hostname), $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')"
} >"$OUT/summary.txt"
"$BIN" inspect --model "$GGUF" | tee "$OUT/inspect.txt"
# prefixscope and transformers alternating, round by round, N = 32, 128, 512, 2048 and the
# four-layer case at 2048.
"$PY" scripts/bench_peer.py --bin "$BIN" --gguf "$GGUF" --rounds "${ROUNDS:-3}" --repeats "${REPEATS:-3}" \
  --lengths 32,128,512,2048 --four-layer-n 2048 --json "$OUT/peer.json" | tee "$OUT/peer.txt"
# The whole bench once (slider updates: paper prefix L15, kv prefix, soft L0, toy; redraw).
"$BIN" bench --model "$GGUF" --lengths 128,512 --four-layer-n 0 | tee "$OUT/bench.txt"
# Without any BLAS: candle's gemm, never slower than that.
PREFIXSCOPE_BLAS=off "$BIN" bench --model "$GGUF" --forward-only --lengths 128,512 \
  --four-layer-n 0 --repeats 3 | tee "$OUT/candle.txt"
for f in inspect peer bench candle; do
  echo "## $f"
  cat "$OUT/$f.txt"
done >>"$OUT/summary.txt"
echo "written: $OUT/summary.txt"
