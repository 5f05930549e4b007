#!/usr/bin/env python3
"""Table of lowrank vs PyTorch from the JSON lines of bench/run_cpu.sh (medians over repeats).
Usage: bench/summarize.py results.jsonl [THREADS]"""
import json, os, statistics, sys
from collections import defaultdict
FOREIGN_MAX = float(os.environ.get('FOREIGN_MAX', '0.10'))

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith('{')]
T = sys.argv[2] if len(sys.argv) > 2 else '2'
by = defaultdict(list)
for r in rows:
    by[(r['shape'], r['impl'], r['config'])].append(r)
# Runs during which other processes took more than FOREIGN_MAX of the CPUs are dropped when
# the same (shape, impl, config) has clean runs.
dropped = {}
for k, rs in list(by.items()):
    clean = [r for r in rs if r.get('foreign_cpu_frac', 0) <= FOREIGN_MAX]
    dropped[k] = (len(rs) - len(clean), len(rs)) if clean else (0, len(rs))
    if clean:
        by[k] = clean

METRICS = [  # (label, field, lower_is_better, unit)
    ('LoRA fwd+bwd', 'fwd_bwd_ms', True, 'ms'),
    ('LoRA step (fwd+bwd+AdamW)', 'ms_per_step', True, 'ms'),
    ('  forward (training)', 'fwd_ms', True, 'ms'),
    ('  backward', 'bwd_ms', True, 'ms'),
    ('step tokens/s', 'tokens_per_s', False, 'tok/s'),
    ('prefill 256 tok (base)', 'prefill_tok_s', False, 'tok/s'),
    ('decode (base, KV cache)', 'decode_tok_s', False, 'tok/s'),
    ('peak RSS', 'peak_rss_mb', True, 'MiB'),
]

def med(rs, f):
    v = [r[f] for r in rs if f in r]
    return statistics.median(v) if v else None

def spread(rs, f):
    v = [r[f] for r in rs if f in r]
    return (min(v), max(v)) if v else (None, None)

def fmt(x):
    return '-' if x is None else ('%.0f' % x if abs(x) >= 100 else '%.1f' % x)

for shape in sorted({k[0] for k in by}):
    for single in (False, True):
        lr_cfg = 't1' if single else 't%s' % T
        torch_cfgs = ['t1x1'] if single else ['t%sx%s' % (T, T), 't1x%s' % T]
        L = by.get((shape, 'lowrank', lr_cfg))
        P = {c: by.get((shape, 'pytorch', c)) for c in torch_cfgs if by.get((shape, 'pytorch', c))}
        if not L or not P:
            continue
        keys = [(shape, 'lowrank', lr_cfg)] + [(shape, 'pytorch', c) for c in P]
        used = ', '.join('%s %s: %d of %d' % (k[1], k[2], dropped[k][1] - dropped[k][0], dropped[k][1]) for k in keys)
        foreign = [r.get('foreign_cpu_frac', 0) for rs in [L] + list(P.values()) for r in rs]
        print('\n### %s, batch 1 × 256 tokens, %s thread%s\n' % (shape, '1' if single else T, '' if single else 's'))
        print('Medians (min–max) of the runs kept (%s); CPU taken by other processes during kept runs: %.0f–%.0f%%.\n' % (
            used, 100 * min(foreign), 100 * max(foreign)))
        hdr = '| metric | lowrank | ' + ' | '.join('pytorch %s' % c for c in P) + ' | speed ratio (best pytorch / lowrank) |'
        print(hdr)
        print('|' + '---|' * (hdr.count('|') - 1))
        for label, f, low, unit in METRICS:
            lv = med(L, f)
            pv = {c: med(rs, f) for c, rs in P.items()}
            vals = [v for v in pv.values() if v is not None]
            if lv is None or not vals:
                continue
            best = min(vals) if low else max(vals)
            ratio = (best / lv) if low else (lv / best)
            lo, hi = spread(L, f)
            cells = ['%s %s (%s–%s)' % (fmt(lv), unit, fmt(lo), fmt(hi))]
            for c, rs in P.items():
                a, b = spread(rs, f)
                cells.append('%s (%s–%s)' % (fmt(pv[c]), fmt(a), fmt(b)))
            rtxt = ('%.2f×' % ratio) if f != 'peak_rss_mb' else ('%.2f× less' % ratio)
            print('| %s | %s | %s |' % (label, ' | '.join(cells), rtxt))
