"""A real client of xent.transformers: Hugging Face causal LMs trained stock and patched.

For each configuration (a Llama, a Qwen2 and a Gemma 2 built locally from a configuration with a
few layers and the real vocabulary sizes 32,000 / 151,936 / 256,000; no download), dtype
(float32, and bfloat16 autocast) and variant (stock, ``xent.transformers.apply``), one fresh
subprocess builds the model from one seed and trains it with AdamW on random token batches
(labels = inputs, the causal shift inside the loss) for a number of steps, printing per step the
loss, the gradient norm and the wall time of forward + backward + optimizer step, and at the end
the process's peak resident memory (``ru_maxrss``: the model, its AdamW state and the step's
peak, so the difference between the variants is what the step itself saves).

The table: median step time after the first step, xent's speed-up, peak memory of each, and the
largest relative difference of the per-step losses and of the first step's gradient norm.

    python benchmarks/bench_hf.py                  # the table of docs/torch.md (long on 2 cores)
    python benchmarks/bench_hf.py --quick          # small sizes, a minute
    python benchmarks/bench_hf.py --only qwen2 --dtypes float32 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

# name: (family, vocabulary, hidden, intermediate, heads, kv heads, sequence, steps in float32,
# steps under bfloat16 autocast: 0 skips it). Sized for a 2-core machine without bfloat16
# instructions (AVX2 only: PyTorch's bfloat16 matmuls are several times slower there than its
# float32 ones, stock and patched alike), where a float32 step at V=151,936 takes tens of seconds.
CONFIGS = {
    "llama": ("llama", 32000, 512, 1536, 8, 4, 1024, 20, 0),
    "qwen2": ("qwen2", 151936, 512, 1536, 8, 2, 2048, 3, 0),
    "gemma2": ("gemma2", 256000, 512, 1536, 8, 4, 1024, 3, 0),
    # bfloat16 autocast at a size that finishes there (a stock bfloat16 step at the size above
    # took over 7 minutes on the loaded 2-core AVX2 machine).
    "llama-small": ("llama", 32000, 512, 1536, 8, 4, 256, 0, 4),
}
QUICK = {
    "llama": ("llama", 4096, 128, 256, 4, 2, 256, 5, 3),
    "qwen2": ("qwen2", 8192, 128, 256, 4, 2, 256, 5, 3),
    "gemma2": ("gemma2", 8192, 128, 256, 4, 2, 256, 5, 3),
    "llama-small": ("llama", 4096, 128, 256, 4, 2, 128, 0, 3),
}
LAYERS = 2


def build(family, vocab, hidden, inter, heads, kv):
    import transformers

    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                  num_hidden_layers=LAYERS, num_attention_heads=heads, num_key_value_heads=kv,
                  max_position_embeddings=4096)
    if family == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    if family == "qwen2":  # Qwen2.5-0.5B ties its head to the embeddings
        return transformers.Qwen2ForCausalLM(
            transformers.Qwen2Config(**common, tie_word_embeddings=True))
    cfg = transformers.Gemma2Config(**common, head_dim=hidden // heads,
                                    final_logit_softcapping=30.0, attn_implementation="eager")
    return transformers.Gemma2ForCausalLM(cfg)


def worker(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import contextlib

    import torch

    family, vocab, hidden, inter, heads, kv, seq, steps = args.config[:8]
    torch.manual_seed(0)
    model = build(family, vocab, hidden, inter, heads, kv)
    model.train()
    if args.variant == "xent":
        import xent.transformers

        xent.transformers.apply(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (1, seq), generator=g) for _ in range(steps)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bf16"
           else contextlib.nullcontext())
    losses, norms, times = [], [], []
    for ids in batches:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        norms.append(float(norm))
        print(f"  {args.variant} {args.dtype} step {len(times)}: loss {losses[-1]:.7f} "
              f"{times[-1]:.2f} s", file=sys.stderr, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(losses=losses, norms=norms, times=times, peak_kib=peak,
                          before_kib=rss_before)))


def run_one(config, dtype, variant) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, dtype, json.dumps(config[:8])]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a minute)")
    p.add_argument("--only", default=",".join(CONFIGS), help="configurations, comma-separated")
    p.add_argument("--dtypes", default="float32,bf16", help="float32 and/or bf16 (autocast)")
    p.add_argument("--steps", type=int, default=None, help="steps for every configuration")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        variant, dtype, config = args.worker
        worker(argparse.Namespace(variant=variant, dtype=dtype, config=json.loads(config)))
        return
    import torch
    import transformers

    table = QUICK if args.quick else CONFIGS
    print(f"# bench_hf: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"Python {platform.python_version()}, {LAYERS} layers, batch 1, AdamW; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for dtype in args.dtypes.split(","):  # every float32 row first
        for name in args.only.split(","):
            cfg = list(table[name])
            cfg[7] = args.steps or (cfg[7] if dtype == "float32" else cfg[8])
            if not cfg[7]:
                continue
            res = {v: run_one(cfg, dtype, v) for v in ("stock", "xent")}
            s, x = res["stock"], res["xent"]
            med = {v: statistics.median(r["times"][1:] or r["times"]) for v, r in res.items()}
            dloss = max(abs(a - b) / abs(b) for a, b in zip(x["losses"], s["losses"],
                                                            strict=True))
            dnorm = abs(x["norms"][0] - s["norms"][0]) / abs(s["norms"][0])
            peak = {v: r["peak_kib"] / 2**20 for v, r in res.items()}
            row = (f"| {name} | {cfg[1]:,} | {cfg[2]} | {cfg[6]:,} | {dtype} | {cfg[7]} | "
                   f"{med['stock']:.2f} s | {med['xent']:.2f} s | "
                   f"{med['stock'] / med['xent']:.2f}x | {peak['stock']:.2f} GiB | "
                   f"{peak['xent']:.2f} GiB | {peak['stock'] - peak['xent']:.2f} GiB | "
                   f"{dloss:.1e} | {dnorm:.1e} |")
            rows.append(row)
            print(row, flush=True)
            print("#   losses stock " + " ".join(f"{v:.6f}" for v in s["losses"]), flush=True)
            print("#   losses xent  " + " ".join(f"{v:.6f}" for v in x["losses"]), flush=True)
    print()
    print("| model | vocabulary | hidden | sequence | dtype | steps | stock step (median) | "
          "xent step (median) | speed-up | stock peak | xent peak | saved | max rel. loss "
          "diff | rel. grad-norm diff, step 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
