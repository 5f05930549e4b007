#!/usr/bin/env python3
"""Table of bench/llamacpp.sh results: lowrank vs llama.cpp prefill / decode tok/s, LoRA training.

Usage: bench/llamacpp_summary.py RESULTS.jsonl [SUMMARY.md]     (env FOREIGN_MAX, default 0.10)

Each inference run (one process per engine) reports the median of its repetitions and every
repetition (prefill_ms_all, decode_tok_s_all). The table shows, per engine, the median over runs
of the per-run medians (with the range over runs) and the best repetition of all runs: on a
shared machine the best repetition is the one least disturbed by other processes. Runs during
which other processes took more than FOREIGN_MAX of the machine's CPU time are left out when an
engine has runs below it (and counted in a note). The ratios are lowrank / llama.cpp (> 1:
lowrank faster), for the medians and for the best repetitions.
"""
import json
import os
import statistics
import sys

FOREIGN_MAX = float(os.environ.get("FOREIGN_MAX", "0.10"))


def clean(rs):
    """The runs below FOREIGN_MAX if there are any, else all; and how many were dropped."""
    ok = [r for r in rs if r.get("foreign_cpu_frac", 0) <= FOREIGN_MAX]
    return (ok, len(rs) - len(ok)) if ok else (rs, 0)


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    lr = [r for r in rows if r.get("impl") == "lowrank" and r.get("bench") == "infer"]
    ll = [r for r in rows if str(r.get("impl", "")).startswith("llama.cpp")]
    tr = [r for r in rows if r.get("bench") == "train"]
    lr, lr_dropped = clean(lr)
    ll, ll_dropped = clean(ll)
    lines = []
    p = lines.append

    def per_run(rs, k):
        return [r[k] for r in rs if k in r]

    def reps(rs, kind):
        out = []
        for r in rs:
            if kind == "prefill":
                out += [r["seq"] / (ms / 1e3) for ms in r.get("prefill_ms_all", [])]
            else:
                out += r.get("decode_tok_s_all", [])
        return out

    if lr and ll:
        seq, dec, thr = lr[0]["seq"], lr[0].get("decode_tokens", "?"), lr[0]["threads"]
        p(f"| TinyLlama-1.1B IQ2_XXS, {thr} threads | lowrank median (range) | llama.cpp median (range) "
          f"| ratio | lowrank best | llama.cpp best | ratio of best |")
        p("|---|---|---|---|---|---|---|")
        for name, k, kind in ((f"prefill {seq} tok, tok/s", "prefill_tok_s", "prefill"),
                              (f"decode {dec} tok, tok/s", "decode_tok_s", "decode")):
            a, b = per_run(lr, k), per_run(ll, k)
            ba, bb = max(reps(lr, kind), default=float("nan")), max(reps(ll, kind), default=float("nan"))
            ma, mb = statistics.median(a), statistics.median(b)
            p(f"| {name} | {ma:.1f} ({min(a):.1f}–{max(a):.1f}) | {mb:.1f} ({min(b):.1f}–{max(b):.1f}) "
              f"| **{ma / mb:.2f}×** | {ba:.1f} | {bb:.1f} | **{ba / bb:.2f}×** |")
        p("")
        p(f"runs: {len(lr)} lowrank, {len(ll)} llama.cpp (node-llama-cpp {ll[0].get('node_llama_cpp', '?')}), "
          f"{lr[0].get('decode_reps', len(lr[0].get('decode_tok_s_all', [])))} repetitions each after a warm-up"
          + (f"; left out (other processes above {100 * FOREIGN_MAX:.0f} % of the CPU time): {lr_dropped} lowrank, "
             f"{ll_dropped} llama.cpp" if lr_dropped or ll_dropped else "") + ".")
        for name, rs in (("lowrank", lr), ("llama.cpp", ll)):
            fc = [r["foreign_cpu_frac"] for r in rs if r.get("foreign_cpu_frac") is not None]
            if fc:
                p(f"{name} runs: other processes took {100 * min(fc):.0f}–{100 * max(fc):.0f} % of the machine's "
                  f"CPU time during the run (foreign_cpu_frac).")
        p(f"lowrank: openblas core {lr[0].get('openblas_core', '?')}.")
        a, b = lr[-1].get("decode_ids", []), ll[-1].get("decode_ids", [])
        same = 0
        while same < min(len(a), len(b)) and a[same] == b[same]:
            same += 1
        p(f"greedy continuations of the same prompt: the first {same} of {min(len(a), len(b))} generated ids are identical.")
        perf = ll[-1].get("llama_perf") or []
        ev = [l.split(":", 1)[-1].strip() for l in perf if "eval time" in l]
        if ev:
            p("llama.cpp's own timings (last run: warm-up + all repetitions): " + " / ".join(ev))
    if tr:
        p("")
        for t in tr:
            fc = t.get("foreign_cpu_frac")
            p(f"lowrank LoRA training (r {t['r']}, {t['targets']}, batch {t['batch']} × {t['seq']} tokens, "
              f"zero grads + forward + backward + AdamW): **{t['tokens_per_s']:.1f} tok/s** median "
              f"({t['ms_per_step']:.0f} ms/step; best step {t['ms_per_step_min']:.0f} ms = "
              f"{t['batch'] * t['seq'] / (t['ms_per_step_min'] / 1e3):.1f} tok/s; {t['steps']} steps"
              + (f"; foreign_cpu_frac {100 * fc:.0f} %" if fc is not None else "") + ").")
    text = "\n".join(lines) + "\n"
    if len(sys.argv) > 2:
        open(sys.argv[2], "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
