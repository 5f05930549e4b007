#!/usr/bin/env python3
"""Summary of bench/cuda/run.sh results (JSON lines): per training configuration our tok/s
and peak memory against PEFT's, the ratios, MFU against the measured bf16 GEMM rate, and the
mixed-adapter ratios; each target marked met / NOT met."""
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith('{')]
gemm = next((r['bf16_gemm_tflops'] for r in rows if r.get('mode') == 'gemm'), None)
print(f"device: {rows[0].get('device', '?') if rows else '?'}")
print(f"measured bf16 GEMM rate: {gemm:.1f} TFLOP/s" if gemm else "measured bf16 GEMM rate: n/a")

def key(r):
    return (r['shape'], r['batch'], r['seq'], r['targets'])

train = [r for r in rows if r.get('mode') == 'train']
configs = []
for r in train:
    if key(r) not in configs:
        configs.append(key(r))
print()
print(f"{'config':48s} {'impl':24s} {'tok/s':>10s} {'peak GiB':>9s} {'MFU':>6s}")
ok_all = True
for k in configs:
    ours = [r for r in train if key(r) == k and r['impl'] == 'lowrank-cuda']
    peft = [r for r in train if key(r) == k and r['impl'] == 'peft']
    name = f"{k[0]} b{k[1]}x{k[2]} {k[3]}"
    for r in ours + peft:
        impl = r['impl'] + (' +recompute' if r.get('recompute') else '')
        mfu = f"{100 * r['achieved_tflops'] / gemm:.1f}%" if gemm else 'n/a'
        print(f"{name:48s} {impl:24s} {r['tok_per_s']:10.0f} {r['peak_bytes'] / 2**30:9.2f} {mfu:>6s}")
    p = next((r for r in peft if not r.get('recompute')), None)
    if not p or not ours:
        print(f"{'':48s} (no PEFT result to compare)")
        continue
    for o in ours:
        sp = o['tok_per_s'] / p['tok_per_s']
        mem = o['peak_bytes'] / p['peak_bytes']
        met = sp >= 2.0 and mem <= 1.0
        ok_all &= met or bool(o.get('recompute'))
        tag = ' (recompute)' if o.get('recompute') else ''
        print(f"{'':48s} ratio{tag}: speed {sp:.2f}x (target >= 2x), memory {mem:.2f}x (target <= 1x): "
              f"{'met' if met else 'NOT met'}")
print()
for r in rows:
    if r.get('mode') == 'mixed':
        met = r['mixed_over_merged'] <= 1.3
        ok_all &= met
        print(f"mixed {r['shape']} rows {r['rows']} adapters {r['adapters']}: {r['mixed_ms']:.2f} ms vs merged "
              f"{r['merged_ms']:.2f} ms = {r['mixed_over_merged']:.2f}x (target <= 1.3x): {'met' if met else 'NOT met'}")
print()
print('all targets met' if ok_all else 'some targets NOT met')
