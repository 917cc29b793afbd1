#!/usr/bin/env bash
# Hand-applied mutants of the maths core, each run against the fast test binaries (the unit tests,
# tests/paper_prefix.rs, tests/incremental.rs without its SmolLM2 case, tests/bad_inputs.rs,
# tests/engine_errors.rs), restored after each. About 2.5 minutes a mutant on 2 shared cores.
# A stand-in for cargo-mutants where its full run does not fit (see docs/testing.md).
# usage: scripts/hand-mutants.sh   (prints one line per mutant: CAUGHT/MISSED, file, description)
set -uo pipefail
cd "$(dirname "$0")/.."
tests=(--lib --test paper_prefix --test bad_inputs --test incremental --test engine_errors)
filter=(-- --skip incremental_equals_full_recompute_over_random_edits)
# file|description|perl substitution (applied once)
mutants=(
  'src/model/attention.rs|causal mask off by one (row i sees content 0..i-1)|s/let valid = p \+ \(r % t\) \+ 1;/let valid = p + (r % t);/'
  'src/model/attention.rs|causal mask hides the prefix columns|s/let valid = p \+ \(r % t\) \+ 1;/let valid = (r % t) + 1;/'
  'src/model/attention.rs|GQA: head h reads KV head h % n_kv (interleaved)|s/x\.unsqueeze\(1\)\?\n?\s*\.expand\(\(n_kv, n_rep, t, hd\)\)\?/x.unsqueeze(0)?.expand((n_rep, n_kv, t, hd))?/'
  'src/model/attention.rs|softmax without the max shift (overflow on large scores)|s/\*x = \(\*x - m\)\.exp\(\);/*x = x.exp();/'
  'src/incremental.rs|split: content part not scaled by (1 - a_i)|s/\*dst = \(frac \* src as f64\) as f32;/*dst = src;/'
  'src/incremental.rs|split: prefix scores without the row max|s/row\[k\] = \(\(s\[k\] as f64 - m\)\.exp\(\) \/ z\) as f32;/row[k] = ((s[k] as f64).exp() \/ z) as f32;/'
  'src/incremental.rs|evaluator: a one-layer edit recomputes nothing|s/self\.valid_in = self\.valid_in\.min\(l \+ 1\);/self.valid_in = self.valid_in;/'
  'src/incremental.rs|evaluator: a new prefix shape is taken as a one-layer edit|s/let edit = if same_shape \{ edit \} else \{ Edit::All \};/let edit = edit;/'
  'src/capture.rs|renormalize by the whole row sum (prefix included)|s/let sums = content\.sum_keepdim\(D::Minus1\)\?;/let sums = pattern.sum_keepdim(D::Minus1)?;/'
  'src/capture.rs|prefix mass summed over the content columns|s/let mass = w\.pattern\.narrow\(D::Minus1, 0, p\)\?\.sum\(D::Minus1\)\?;/let mass = w.pattern.narrow(D::Minus1, p, 1)?.sum(D::Minus1)?;/'
  'src/capture.rs|identity error ignores the prefix value term|s/pred \+= wp\.data/pred += 0.0 * wp.data/'
  'src/prefix.rs|key/value check reads the keys twice, never the values|s/\("values", values\)\]/("values", keys)]/'
  'src/prefix.rs|non-finite values accepted|s/if let Some\(i\) = a\.data\.iter\(\)\.position\(\|x\| !x\.is_finite\(\)\)/if let Some(i) = a.data.iter().position(|x| x.is_nan() \&\& false)/'
  'src/model/llama.rs|paper prefix without its pre-attention RMSNorm|s/let sn = candle_nn::ops::rms_norm\(&s, &b\.attn_norm, self\.cfg\.rms_norm_eps as f32\)\?;/let sn = s.clone();/'
  'src/model/llama.rs|paper prefix keys rotated at P..2P|s/let \(pc, ps\) = self\.rope_tables\(0, p\)\?;/let (pc, ps) = self.rope_tables(p, p)?;/'
)
for m in "${mutants[@]}"; do
  IFS='|' read -r file desc sub <<<"$m"
  cp "$file" "/tmp/hand-mutant.orig"
  perl -0pi -e "$sub" "$file"
  if cmp -s "$file" /tmp/hand-mutant.orig; then
    echo "NOT-APPLIED  $file  $desc"; continue
  fi
  if ! cargo build --quiet --lib 2>/dev/null; then
    echo "UNVIABLE     $file  $desc"
  elif cargo test --quiet "${tests[@]}" "${filter[@]}" >/tmp/hand-mutant.log 2>&1; then
    echo "MISSED       $file  $desc"
  else
    caught=$(grep -E "^test .* FAILED|^    [a-z_:]+$" /tmp/hand-mutant.log | sed -E 's/^test (.*) \.\.\. FAILED/\1/; s/^ +//' | sort -u | head -4 | tr '\n' ' ')
    echo "CAUGHT       $file  $desc  [$caught]"
  fi
  cp /tmp/hand-mutant.orig "$file"
done
