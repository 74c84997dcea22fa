"""Times the teacher's language model in transformers (bf16, SDPA) on the GPU:
prefill of N random tokens and greedy decode of D tokens with generate(), the
same shapes matsurgery's `bench` measures. Reads a TinyLLaVA checkpoint
directory (phi family): the language_model.* tensors and text_config.

Prefill is one forward pass over the prompt that keeps only the last
position's logits (logits_to_keep=1, as generate() and matsurgery do);
decode tokens/s is D / (generate time − prefill time). Each figure is the
median of --repeats runs; the peak is torch.cuda.max_memory_allocated()
over that context's runs (weights included).

Prints one JSON line per context, which `matsurgery bench --external FILE`
reads. Run on the GPU machine:

  PYTHONUNBUFFERED=1 python3 testdata/gen/bench_hf_generate.py DIR --contexts 1024,4096,16384,32768 --decode 32
"""
import argparse
import glob
import json
import os

import torch
import transformers
from safetensors.torch import load_file
from transformers import PhiConfig, PhiForCausalLM


def prefill(model, ids):
    """One forward pass over the prompt keeping only the last logits, as
    generate() does (all positions' logits where logits_to_keep is unknown)."""
    try:
        return model(ids, use_cache=True, logits_to_keep=1)
    except TypeError:
        return model(ids, use_cache=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--contexts", default="1024,4096,16384,32768")
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.dir, "config.json")))
    tc = {k: v for k, v in cfg["text_config"].items() if k not in ("architectures", "_name_or_path", "torch_dtype", "dtype")}
    config = PhiConfig(**tc)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = PhiForCausalLM(config)
    sd = {}
    for f in sorted(glob.glob(os.path.join(a.dir, "*.safetensors"))):
        for k, v in load_file(f).items():
            if k.startswith("language_model."):
                sd[k[len("language_model."):]] = v
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "rotary" not in m]
    if missing or unexpected:
        raise SystemExit(f"weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    ev = lambda: torch.cuda.Event(enable_timing=True)
    for n in [int(x) for x in a.contexts.split(",")]:
        ids = torch.randint(0, config.vocab_size, (1, n), device="cuda")
        with torch.no_grad():
            model(ids[:, :16])  # warm-up
            model.generate(ids[:, :16], max_new_tokens=4, min_new_tokens=4, do_sample=False)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            pre, tot = [], []
            for _ in range(a.repeats):
                s, e = ev(), ev()
                s.record()
                prefill(model, ids)
                e.record()
                torch.cuda.synchronize()
                pre.append(s.elapsed_time(e) / 1000)
                s, e = ev(), ev()
                s.record()
                out = model.generate(ids, max_new_tokens=a.decode, min_new_tokens=a.decode, do_sample=False)
                e.record()
                torch.cuda.synchronize()
                assert out.shape[1] == n + a.decode
                tot.append(s.elapsed_time(e) / 1000)
        p = sorted(pre)[len(pre) // 2]
        t = sorted(tot)[len(tot) // 2]
        print(json.dumps({"engine": f"transformers {transformers.__version__} generate (sdpa, bf16)", "model": a.dir,
                          "context": n, "prefill_tokens_per_s": n / p, "decode_tokens_per_s": a.decode / max(t - p, 1e-9),
                          "prefill_seconds": p, "generate_seconds": t, "decode_tokens": a.decode, "repeats": a.repeats,
                          "peak_device_bytes": torch.cuda.max_memory_allocated()}))


if __name__ == "__main__":
    main()
