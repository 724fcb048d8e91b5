# The PyTorch side of the qwengo benchmark (engine/bench): the same figures, measured on
# transformers' Qwen3ForCausalLM with Qwen3-4B shapes, random bf16 weights, sdpa attention.
#
#   python3 engine/bench/peer.py --json peer.json [--layers N] [--quick] [--only decode,prefill,optim,train]
#
# Writes the report schema of engine/bench (Report/Figure in report.go): figure keys
# decode_b1_ctx{C}, decode_b{B}_ctx{C}, prefill_s{S}, train_s{S}_b{B}_{tps,peak,optim},
# train_bytes_per_param, optim_step_{int8,4bit}, train4bit_s{S}_b1_{tps,peak} (n/a: no 4-bit AdamW). Every timing: one warm-up, then the median of several repetitions
# (torch.cuda.synchronize around each); a warm-up longer than 10 s is the only sample. A figure
# that fails (out of memory included) is reported with its reason; the others still run.
import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback

FULL_LAYERS = 36
MIN_REPS, MAX_REPS, LONG_RUN = 3, 5, 10.0


def shapes(quick, layers):
    if quick:
        return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=layers or 2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=4096,
                    rope_theta=1e6)
    return dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=layers or FULL_LAYERS, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144, rope_theta=5e6)


def plan(quick):
    # The same sizes as engine/bench FullPlan / QuickPlan.
    if quick:
        return dict(prefill=[32, 64, 128], decode=[32, 128], batch=8, batch_ctx=64, train_s=[16, 32], train_b=[1, 2])
    return dict(prefill=[512, 2048, 8192], decode=[512, 8192], batch=8, batch_ctx=1024, train_s=[192, 2048], train_b=[1, 8])


def human(n):
    return "%.2f GiB" % (n / 2**30)


class Bench:
    def __init__(self, args):
        import torch
        self.torch = torch
        self.args = args
        self.start = time.perf_counter()
        self.deadline = self.start + args.max_seconds if args.max_seconds > 0 else None
        self.budget = args.figure_seconds or (0.5 if args.quick else 6.0)
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
        self.gen = torch.Generator(device="cpu").manual_seed(args.seed)
        self.plan = plan(args.quick)
        if args.decode_steps:
            self.steps = args.decode_steps
        else:
            self.steps = 8 if args.quick else 16
        self.figures = []
        self.notes = []
        self.keep_ok = True
        self.notes.append("decode: one model call per token with a DynamicCache, greedy pick on the GPU, one sync per repetition")
        if self.cuda:
            props = torch.cuda.get_device_properties(self.dev)
            self.device = "%s (%.0f GiB)" % (props.name, props.total_memory / 2**30)
        else:
            self.device = "cpu (%d threads)" % torch.get_num_threads()
        self.model_info, self.software, self.build_seconds = {}, "torch %s" % torch.__version__, 0.0

    # ------------------------------------------------------------------ helpers
    def log(self, msg):
        print("peer: " + msg, file=sys.stderr, flush=True)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self):
        return int(self.torch.cuda.max_memory_allocated()) if self.cuda else 0

    def want(self, w):
        return not self.args.only or w in self.args.only

    def ids(self, b, n):
        return self.torch.randint(0, self.vocab, (b, n), generator=self.gen).to(self.dev)

    def stop_reason(self):
        if self.deadline is not None and time.perf_counter() > self.deadline:
            return "not run: time budget spent (--max-seconds %g)" % self.args.max_seconds
        return ""

    def add(self, key, label, unit, better, workload):
        f = dict(key=key, label=label, unit=unit, better=better,
                 status="not run" if self.want(workload) else "not run: not selected (--only without %s)" % workload)
        self.figures.append(f)
        return f

    def failure(self, e):
        if isinstance(e, self.oom) or "out of memory" in str(e).lower():
            return "oom: " + str(e).split("\n")[0][:300]
        return "error: %s: %s" % (type(e).__name__, str(e).split("\n")[0][:300])

    def cleanup(self):
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def measure(self, f, once):
        """Fill figure f from repetitions of once() -> (value, seconds)."""
        reason = self.stop_reason()
        if reason:
            f["status"] = reason
            return False
        self.reset_peak()
        try:
            v, d = once()
            if d > LONG_RUN:
                samples = [v]
                f["note"] = "one run (the warm-up, %.1f s): a run takes longer than %g s" % (d, LONG_RUN)
            else:
                samples, spent = [], 0.0
                while len(samples) < MAX_REPS:
                    if samples:
                        past = self.deadline is not None and time.perf_counter() > self.deadline
                        if past or (spent > self.budget and len(samples) >= MIN_REPS) or spent > 2 * self.budget:
                            break
                    v, d = once()
                    samples.append(v)
                    spent += d
        except Exception as e:  # noqa: BLE001 — any failure becomes the figure's status
            f["status"] = self.failure(e)
            self.log("%s: %s" % (f["key"], f["status"]))
            if not isinstance(e, self.oom):
                traceback.print_exc(file=sys.stderr)
        if f["status"] != "not run":
            self.cleanup()  # after the except block: its traceback no longer holds the tensors
            return False
        f["samples"] = samples
        f["value"] = statistics.median(samples)
        f["status"] = "ok"
        f["peak_bytes"] = self.peak()
        self.log("%s: %.4g %s (samples %s, peak %s)" % (f["key"], f["value"], f["unit"],
                                                        ["%.4g" % s for s in samples], human(f["peak_bytes"])))
        return True

    # ------------------------------------------------------------------ model
    def build(self):
        torch = self.torch
        import transformers
        from transformers import Qwen3Config, Qwen3ForCausalLM
        sh = shapes(self.args.quick, self.args.layers)
        self.vocab = sh["vocab_size"]
        cfg = Qwen3Config(rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False, use_cache=True, **sh)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(self.args.seed)
        t0 = time.perf_counter()
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # parameters created in bf16, as from_pretrained(dtype=bf16)
        try:
            with self.dev:
                model = Qwen3ForCausalLM(cfg)
        finally:
            torch.set_default_dtype(old)
        self.sync()
        self.build_seconds = time.perf_counter() - t0
        self.model = model
        self.cfg = cfg
        n = sum(p.numel() for p in model.parameters())
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
        self.params = n
        self.model_info = dict(layers=cfg.num_hidden_layers, full_layers=2 if self.args.quick else FULL_LAYERS,
                               hidden=cfg.hidden_size, intermediate=cfg.intermediate_size,
                               heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
                               vocab=cfg.vocab_size, tied=True, params=n,
                               weights="%s parameters, attention %s" % ("/".join(dtypes), model.config._attn_implementation),
                               weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
        self.software = "torch %s, transformers %s, Qwen3ForCausalLM, DynamicCache" % (torch.__version__, transformers.__version__)
        self.log("built %d-layer model (%.3g B parameters, %s) in %.1f s" % (cfg.num_hidden_layers, n / 1e9, dtypes,
                                                                         self.build_seconds))

    # ------------------------------------------------------------------ inference
    def forward(self, ids, past=None, last_only=False):
        kw = dict(input_ids=ids, use_cache=True)
        if past is not None:
            kw["past_key_values"] = past
        if last_only and self.keep_ok:
            kw["logits_to_keep"] = 1  # transformers computes the last row's logits only
        try:
            return self.model(**kw)
        except TypeError as e:
            if "logits_to_keep" not in kw or "logits_to_keep" not in str(e):
                raise
            self.keep_ok = False
            self.notes.append("this transformers has no logits_to_keep: prefill computes logits for every row")
            del kw["logits_to_keep"]
            return self.model(**kw)

    def prefill_once(self, s):
        ids = self.ids(1, s)

        def once():
            self.sync()
            t0 = time.perf_counter()
            out = self.forward(ids, last_only=True)
            out.logits[:, -1].float().cpu()  # time to the last row's logits on the host
            d = time.perf_counter() - t0
            del out
            return s / d, d
        return once

    def decode_once(self, b, ctx):
        """Prefill b sequences of ctx tokens (untimed), then time self.steps one-token steps."""
        torch = self.torch
        ids = self.ids(b, ctx)
        state = {}

        def fill():
            state.clear()
            out = self.forward(ids, last_only=True)
            state["past"] = out.past_key_values
            state["next"] = out.logits[:, -1:].argmax(-1)
            del out

        def once():
            past = state.get("past")
            if past is None or not hasattr(past, "crop"):
                fill()
            else:
                past.crop(ctx)  # back to the prefilled context
            past, nxt = state["past"], state["next"]
            self.sync()
            t0 = time.perf_counter()
            for _ in range(self.steps):
                out = self.forward(nxt, past=past)
                nxt = out.logits[:, -1:].argmax(-1)
            nxt.cpu()
            d = time.perf_counter() - t0
            del out
            return b * self.steps / d, d

        with torch.no_grad():
            fill()
        return once

    def inference(self):
        torch = self.torch
        p = self.plan
        self.model.eval()
        with torch.no_grad():
            for s in p["prefill"]:
                f = self.fig["prefill_s%d" % s]
                if self.want("prefill"):
                    self.run_figure(f, lambda s=s: self.prefill_once(s))
            for ctx in p["decode"]:
                f = self.fig["decode_b1_ctx%d" % ctx]
                if self.want("decode"):
                    self.run_figure(f, lambda ctx=ctx: self.decode_once(1, ctx))
            f = self.fig["decode_b%d_ctx%d" % (p["batch"], p["batch_ctx"])]
            if self.want("decode"):
                self.run_figure(f, lambda: self.decode_once(p["batch"], p["batch_ctx"]))
        self.cleanup()

    def run_figure(self, f, make):
        """make() prepares (may fail, e.g. out of memory) and returns the timed callable."""
        reason = self.stop_reason()
        if reason:
            f["status"] = reason
            return
        once = None
        try:
            once = make()
        except Exception as e:  # noqa: BLE001
            f["status"] = self.failure(e)
            self.log("%s: %s" % (f["key"], f["status"]))
        if once is None:
            self.cleanup()
            return
        self.measure(f, once)
        once = None
        self.cleanup()

    # ------------------------------------------------------------------ optimizer step
    def optim(self):
        """One standalone torch.optim.AdamW(fused=True) step over every parameter of the model.

        The peer of qwengo's optimizer-step figures (optim_step_int8, optim_step_4bit): the
        model's bf16 parameters with random bf16 gradients (uniform, standard deviation 0.02);
        torch keeps the moments in the parameters' dtype (bf16) and has no int8 or 4-bit AdamW,
        so one measurement stands in both rows. Timed between two syncs; the figure is the best
        of the repetitions (qwengo reports its best too), the first step (which creates the
        moments) untimed."""
        torch = self.torch
        params = list(self.model.parameters())  # the tied embedding once
        f8, f4 = self.fig["optim_step_int8"], self.fig["optim_step_4bit"]
        holder = {}

        def make():
            a = 0.02 * 3 ** 0.5
            with torch.no_grad():
                for q in params:
                    q.grad = torch.empty_like(q).uniform_(-a, a)
            opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, fused=self.cuda)
            opt.step()
            holder["opt"] = opt

            def once():
                self.sync()
                t0 = time.perf_counter()
                opt.step()
                self.sync()
                d = time.perf_counter() - t0
                return d * 1e3, d
            return once

        self.run_figure(f8, make)
        opt = holder.pop("opt", None)
        if f8["status"] == "ok":
            med = f8["value"]
            f8["value"] = min(f8["samples"])
            st = sum(t.numel() * t.element_size() for v in opt.state.values() for t in v.values()
                     if torch.is_tensor(t) and t.dim() > 0)
            pb = sum(q.element_size() for q in params) / len(params)
            gb = sum(q.grad.element_size() for q in params) / len(params)
            moved = 2 * pb + gb + 2 * st / self.params  # param r+w, gradient, moments r+w
            rate = moved * self.params / (f8["value"] / 1e3)
            f8["note"] = ("torch.optim.AdamW(fused=%s), %s parameters and gradients, moments in the parameters' dtype "
                          "(%.2f B/param; torch has no int8 or 4-bit AdamW): best of %d (median %.3g ms); moves %.2f B/param "
                          "= %.2f TB/s, %.0f %% of 4.3 TB/s" % (self.cuda, params[0].dtype, st / self.params, len(f8["samples"]),
                                                              med, moved, rate / 1e12, 100 * rate / 4.3e12))
            f4.update(status="ok", value=f8["value"], samples=list(f8["samples"]), peak_bytes=f8.get("peak_bytes", 0),
                      note="the same measurement as optim_step_int8 (torch has no 4-bit AdamW)")
        elif f4["status"] == "not run":
            f4["status"] = f8["status"]
        del opt, holder
        for q in params:
            q.grad = None
        self.cleanup()

    # ------------------------------------------------------------------ training
    def train(self):
        torch = self.torch
        p = self.plan
        model = self.model
        model.train()
        model.config.use_cache = False
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, fused=self.cuda)
        params = [q for q in model.parameters()]
        bpp = self.fig["train_bytes_per_param"]
        for s in p["train_s"]:
            for b in p["train_b"]:
                k = "train_s%d_b%d" % (s, b)
                ft, fp, fo = self.fig[k + "_tps"], self.fig[k + "_peak"], self.fig[k + "_optim"]
                ids = self.ids(b, s)
                opt_ms = []

                def once(ids=ids, b=b, s=s, opt_ms=opt_ms):
                    self.sync()
                    t0 = time.perf_counter()
                    out = model(input_ids=ids, labels=ids, use_cache=False)
                    out.loss.backward()
                    loss = out.loss.detach()
                    del out
                    if self.cuda:
                        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        e0.record()
                    else:
                        t1 = time.perf_counter()
                    opt.step()
                    if self.cuda:
                        e1.record()
                    opt.zero_grad(set_to_none=True)
                    lv = float(loss)
                    self.sync()
                    d = time.perf_counter() - t0
                    opt_ms.append(e0.elapsed_time(e1) if self.cuda else (time.perf_counter() - t1) * 1e3)
                    if lv != lv:
                        raise FloatingPointError("loss is NaN")
                    return b * s / d, d

                ok = self.measure(ft, once)
                opt.zero_grad(set_to_none=True)
                if not ok:
                    fp["status"] = fo["status"] = ft["status"]
                    self.cleanup()
                    continue
                fp.update(status="ok", value=ft["peak_bytes"] / 2**30, samples=[ft["peak_bytes"] / 2**30])
                timed = opt_ms[1:] or opt_ms  # the first is the warm-up (it creates the moments)
                fo.update(status="ok", value=statistics.median(timed), samples=timed)
                if bpp["status"] == "not run":
                    st = sum(t.numel() * t.element_size() for v in opt.state.values() for t in v.values()
                             if torch.is_tensor(t) and t.dim() > 0)
                    bpp.update(status="ok", value=st / self.params, samples=[st / self.params],
                               note="AdamW moments in the parameters' dtype (%s)" % params[0].dtype)
                self.cleanup()
        if bpp["status"] == "not run":
            bpp["status"] = "not run: no training step completed"
        del opt
        model.zero_grad(set_to_none=True)
        self.cleanup()

    # ------------------------------------------------------------------ main
    def run(self):
        p = self.plan
        for ctx in p["decode"]:
            self.add("decode_b1_ctx%d" % ctx, "decode batch 1, context %d" % ctx, "tok/s", "higher", "decode")
        self.add("decode_b%d_ctx%d" % (p["batch"], p["batch_ctx"]),
                 "decode batch %d (all sequences), context %d" % (p["batch"], p["batch_ctx"]), "tok/s", "higher", "decode")
        for s in p["prefill"]:
            self.add("prefill_s%d" % s, "prefill S=%d (to last-row logits)" % s, "tok/s", "higher", "prefill")
        for s in p["train_s"]:
            for b in p["train_b"]:
                k = "train_s%d_b%d" % (s, b)
                self.add(k + "_tps", "train step S=%d batch %d" % (s, b), "tok/s", "higher", "train")
                self.add(k + "_peak", "train peak memory S=%d batch %d" % (s, b), "GiB", "lower", "train")
                self.add(k + "_optim", "optimizer step S=%d batch %d" % (s, b), "ms", "lower", "train")
        self.add("train_bytes_per_param", "optimizer state per parameter", "B/param", "lower", "train")
        s4 = p["train_s"][0]
        for suffix, label, unit, better in (("tps", "train step S=%d batch 1, 4-bit states", "tok/s", "higher"),
                                            ("peak", "train peak memory S=%d batch 1, 4-bit states", "GiB", "lower")):
            f = self.add("train4bit_s%d_b1_%s" % (s4, suffix), label % s4, unit, better, "train")
            if f["status"] == "not run":
                f["status"] = ("n/a (torch.optim has no 4-bit AdamW states; train S=%d batch 1 is PyTorch's step with "
                               "moments in the parameters' dtype)" % s4)
        for state in ("int8", "4bit"):
            self.add("optim_step_" + state, "optimizer step (all parameters), %s states" % state, "ms", "lower", "optim")
        self.fig = {f["key"]: f for f in self.figures}
        try:
            self.build()
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            for f in self.figures:
                if f["status"] == "not run":
                    f["status"] = "not run: model build failed: " + self.failure(e)
            return
        if self.want("prefill") or self.want("decode"):
            self.inference()
        if self.want("optim"):
            self.optim()
        if self.want("train"):
            self.train()

    def report(self):
        return dict(side="pytorch", device=self.device, software=self.software, quick=self.args.quick,
                    model=self.model_info, build_seconds=self.build_seconds,
                    total_seconds=time.perf_counter() - self.start, figures=self.figures, notes=self.notes)


def write_atomic(path, data):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", required=True, help="write the report here")
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (0: all 36)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (the sizes of qwenrepl bench --quick)")
    ap.add_argument("--only", default="", help="comma-separated workloads: decode, prefill, optim, train")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--decode-steps", type=int, default=0, help="one-token steps per timed repetition (0: 16; 8 quick)")
    ap.add_argument("--max-seconds", type=float, default=0, help="start no figure after this many seconds (0: no limit)")
    ap.add_argument("--figure-seconds", type=float, default=0, help="repetition budget per figure (0: 6; 0.5 quick)")
    args = ap.parse_args()
    args.only = [w.strip() for w in args.only.split(",") if w.strip()]
    for w in args.only:
        if w not in ("decode", "prefill", "optim", "train"):
            ap.error("--only: unknown workload %r (want decode, prefill, optim, train)" % w)
    b = Bench(args)
    try:
        b.run()
    finally:
        write_atomic(args.json, json.dumps(b.report(), indent=2) + "\n")
    b.log("wrote %s (%.1f s)" % (args.json, time.perf_counter() - b.start))


if __name__ == "__main__":
    main()
