#!/usr/bin/env bash
# Measure every shipped toy file with `prefixscope eval` (3200 test samples, seed 0, the authors'
# protocol) and write models/manifest.json. Usage: scripts/toy-manifest.sh [path/to/prefixscope]
# Entries whose files are missing are skipped (and named on stderr).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/prefixscope}
SAMPLES=${SAMPLES:-3200}
# file role base task
ENTRIES=(
  "sort-1l1h/ascending.safetensors pretrained - ascending"
  "sort-1l1h/finetuned-descending.safetensors finetuned sort-1l1h/ascending.safetensors descending"
  "sort-1l1h/prefix-descending.safetensors prefix sort-1l1h/ascending.safetensors descending"
  "mix-1l4h256/random.safetensors pretrained - random"
  "mix-1l4h256/prefix-ascending.safetensors prefix mix-1l4h256/random.safetensors ascending"
  "mix-1l4h256/prefix-descending.safetensors prefix mix-1l4h256/random.safetensors descending"
  "mix-1l4h256/prefix-add1.safetensors prefix mix-1l4h256/random.safetensors add1"
  "mix-1l4h256/prefix-add2.safetensors prefix mix-1l4h256/random.safetensors add2"
  "deep-4l4h128/random.safetensors pretrained - random"
  "deep-4l4h128/prefix-ascending.safetensors prefix deep-4l4h128/random.safetensors ascending"
  "deep-4l4h128/prefix-descending.safetensors prefix deep-4l4h128/random.safetensors descending"
  "deep-4l4h128/prefix-add1.safetensors prefix deep-4l4h128/random.safetensors add1"
  "deep-4l4h128/prefix-add2.safetensors prefix deep-4l4h128/random.safetensors add2"
  "deep-4l4h128/prefix-ascending_add1.safetensors prefix deep-4l4h128/random.safetensors ascending_add1"
  "deep-4l4h128/prefix-double_hist.safetensors prefix deep-4l4h128/random.safetensors double_hist"
  "deep-4l4h128/lora1-double_hist.safetensors lora deep-4l4h128/random.safetensors double_hist"
)
out="["
sep=""
for e in "${ENTRIES[@]}"; do
  read -r file role base task <<<"$e"
  if [[ ! -f models/$file ]]; then
    echo "skipping $file (not trained yet)" >&2
    continue
  fi
  case $role in
    pretrained) args=(--model "models/$file") ;;
    finetuned) args=(--model "models/$base" --finetuned "models/$file") ;;
    prefix) args=(--model "models/$base" --prefix "models/$file") ;;
    lora) args=(--model "models/$base" --lora "models/$file") ;;
  esac
  json=$("$BIN" eval "${args[@]}" --task "$task" --samples "$SAMPLES" --json)
  acc=$(sed -E 's/.*"accuracy":([0-9.eE+-]+).*/\1/' <<<"$json")
  echo "$file $role $task $acc" >&2
  if [[ $base == - ]]; then b=null; else b="\"$base\""; fi
  out+="$sep
  {\"file\": \"$file\", \"role\": \"$role\", \"base\": $b, \"task\": \"$task\", \"accuracy\": $acc, \"samples\": $SAMPLES}"
  sep=","
done
out+="
]"
printf '%s\n' "$out" > models/.manifest.json.tmp
mv models/.manifest.json.tmp models/manifest.json
echo "wrote models/manifest.json" >&2
