# By-hand check of every family against transformers (not CI; see scripts/family_check/README.md).
# Pinned: torch 2.15.0, transformers 5.23.0. Rewrites saved 5.x configs in transformers 4.x spelling
# (top-level rope_theta / rope_scaling with the legacy "type" key / rope_local_base_freq) as NAME_v4.
import json, os, shutil, sys
OUT = os.environ.get("OUT", "/tmp/family_check")
for name in sys.argv[1:]:
    src, dst = f"{OUT}/{name}", f"{OUT}/{name}_v4"
    os.makedirs(dst, exist_ok=True)
    for f in ["model.safetensors", "tokenizer.json", "ref.npz", "soft.npy"]:
        shutil.copy(f"{src}/{f}", f"{dst}/{f}")
    c = json.load(open(f"{src}/config.json")); rp = c.pop("rope_parameters")
    if c["model_type"] == "gemma3_text":
        full, loc = rp["full_attention"], rp["sliding_attention"]
        c["rope_theta"] = full.pop("rope_theta"); c["rope_local_base_freq"] = loc["rope_theta"]
        c["rope_scaling"] = None if full["rope_type"] == "default" else {**full, "type": full.pop("rope_type")}
    else:
        c["rope_theta"] = rp.pop("rope_theta")
        if "partial_rotary_factor" in rp: c["partial_rotary_factor"] = rp.pop("partial_rotary_factor")
        c["rope_scaling"] = None if rp["rope_type"] == "default" else {**rp, "type": rp.pop("rope_type")}
    c["torch_dtype"] = c.pop("dtype"); c["transformers_version"] = "4.46.0"
    json.dump(c, open(f"{dst}/config.json", "w"), indent=1)
