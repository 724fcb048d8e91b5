"""Whole-model parity with Hugging Face transformers on the GPU machine.

For each config (Qwen3-4B shapes, a tiny one) transformers builds Qwen3ForCausalLM with random
weights in bf16 on the GPU and saves it as safetensors; our binary loads the same files on the
GPU (bf16 linears, and NVFP4 quantised on load) and both score the same prompt: the last
position's logits are compared (max |diff| / max |logit|, top-1, top-10 overlap) and 64 greedy
tokens. Prints a table; writes hf_parity.json to --out.

    python3 hf_parity.py --qwenrepl .dev/gpu/qwenrepl --out $OUT [--configs 4b,tiny]
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

CONFIGS = {
    "4b": dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128),
    "tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32),
}


def build(name, seed, std):
    cfg = Qwen3Config(**CONFIGS[name], max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, initializer_range=std, bos_token_id=None,
                      eos_token_id=CONFIGS[name]["vocab_size"] - 1, pad_token_id=None)
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    model.eval()
    return cfg, model


def ours(qwenrepl, path, ids, precision, n):
    cmd = [qwenrepl, "generate", "--model", path, "--ids", ",".join(map(str, ids)), "--max-tokens", str(n),
           "--precision", precision, "--json", "--logits", "last"]
    env = dict(os.environ, QWENGO_BACKEND=os.environ.get("QWENGO_BACKEND", "cuda"))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr[-2000:]}")
    out = json.loads(r.stdout)
    out["wall_s"] = time.time() - t0
    return out


def compare(ref_logits, got_logits, ref_ids, got_ids):
    ref = torch.tensor(ref_logits, dtype=torch.float32)
    got = torch.tensor(got_logits, dtype=torch.float32)
    rel = ((ref - got).abs().max() / ref.abs().max()).item()
    top10r, top10g = set(ref.topk(10).indices.tolist()), set(got.topk(10).indices.tolist())
    prefix = 0
    for a, b in zip(ref_ids, got_ids):
        if a != b:
            break
        prefix += 1
    return dict(max_rel=rel, top1_same=bool(ref.argmax() == got.argmax()), top10_overlap=len(top10r & top10g),
                greedy_same_prefix=prefix, greedy_len=len(ref_ids))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qwenrepl", required=True)
    ap.add_argument("--out", default=".")
    ap.add_argument("--configs", default="4b,tiny")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--std", type=float, default=0.05, help="init std (larger than HF's 0.02 so greedy choices are not near-ties)")
    a = ap.parse_args()
    rows, results = [], {}
    for name in a.configs.split(","):
        cfg, model = build(name, 1234, a.std)
        g = torch.Generator().manual_seed(7)
        ids = torch.randint(0, cfg.vocab_size - 1, (32,), generator=g).tolist()
        refs = {}
        d = tempfile.mkdtemp(prefix=f"hf-{name}-")
        model.save_pretrained(d, safe_serialization=True)
        # transformers in bf16 (its usual GPU path) and the same bf16 weights computed in fp32:
        # the fp32 run is the precise reference, the bf16 run shows transformers' own rounding.
        for ref in ["bf16", "fp32"]:
            if ref == "fp32":
                model = model.float()
            with torch.no_grad():
                x = torch.tensor([ids], device="cuda")
                logits = model(x).logits[0, -1].float().cpu().tolist()
                gen = model.generate(x, max_new_tokens=a.tokens, do_sample=False, eos_token_id=cfg.eos_token_id,
                                     pad_token_id=cfg.eos_token_id)
                refs[ref] = (logits, gen[0, len(ids):].tolist())
        del model
        torch.cuda.empty_cache()
        c = compare(refs["fp32"][0], refs["bf16"][0], refs["fp32"][1], refs["bf16"][1])
        results[f"{name}/transformers-bf16 vs transformers-fp32"] = c
        rows.append((name, "transformers bf16 vs transformers fp32", c))
        for prec in ["bf16", "nvfp4"]:
            o = ours(a.qwenrepl, d, ids, prec, a.tokens)
            got_ids = o["ids"][len(ids):] if o["ids"][:len(ids)] == ids else o["ids"]
            for ref in ["fp32", "bf16"]:
                c = compare(refs[ref][0], o["logits"][0], refs[ref][1], got_ids)
                c.update(device=o.get("device"), wall_s=round(o["wall_s"], 2), decode_tps=o.get("decode_tokens_per_sec"))
                results[f"{name}/qwengo-{prec} vs transformers-{ref}"] = c
                rows.append((name, f"qwengo {prec} weights vs transformers {ref}", c))
        subprocess.run(["rm", "-rf", d])
    with open(os.path.join(a.out, "hf_parity.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("| model | comparison | max |Δlogit| / max |logit| | top-1 same | top-10 overlap | greedy ids same (prefix) |")
    print("|---|---|---|---|---|---|")
    for name, prec, c in rows:
        print(f"| {name} | {prec} | {c['max_rel']:.2e} | {c['top1_same']} | {c['top10_overlap']}/10 | {c['greedy_same_prefix']}/{c['greedy_len']} |")


if __name__ == "__main__":
    main()
