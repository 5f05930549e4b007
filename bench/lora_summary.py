#!/usr/bin/env python3
"""Markdown tables from the JSON lines of bench/lora_report.sh. Usage: bench/lora_summary.py results.jsonl"""
import json, statistics, sys
R = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
def pick(**kw):
    return [r for r in R if all(r.get(k) == v for k, v in kw.items())]
med = lambda v: statistics.median(v)
mb = lambda b: b / 2**20
print('\n#### Trainable parameters and file sizes (r = 8)\n')
print('| shape | targets | trainable | of total | reduction | adapter file | model f32 | model/adapter |')
print('|---|---|---|---|---|---|---|---|')
for r in pick(mode='sizes'):
    model_b = r.get('model_file_bytes', r['model_f32_tensor_bytes'])
    print('| %s | %s | %d | %.4f%% | %.0f× | %.2f MiB | %.1f MiB%s | %.0f× |' % (
        r['shape'], r['targets'], r['trainable_params'], 100 * r['trainable_frac'], r['param_reduction_x'],
        mb(r['adapter_bytes']), mb(model_b), '' if 'model_file_bytes' in r else ' (tensor bytes)',
        r['model_to_adapter_size_x']))
L, F = pick(mode='lora', shape='gpt2-124m'), pick(mode='full', shape='gpt2-124m')
if L and F:
    print('\n#### LoRA vs full fine-tuning, GPT-2-124M shape (lm_head untied in both), 1×256 tokens, medians of %d runs\n' % len(L))
    print('| | LoRA r8 c_attn | full | full / LoRA |')
    print('|---|---|---|---|')
    l, f = L[0], F[0]
    print('| trainable params | %d | %d | %.0f× |' % (l['trainable_params'], f['trainable_params'], f['trainable_params'] / l['trainable_params']))
    print('| gradient bytes | %.2f MiB | %.1f MiB | %.0f× |' % (mb(l['grad_bytes']), mb(f['grad_bytes']), f['grad_bytes'] / l['grad_bytes']))
    print('| AdamW m+v bytes | %.2f MiB | %.1f MiB | %.0f× |' % (mb(l['optimizer_bytes']), mb(f['optimizer_bytes']), f['optimizer_bytes'] / l['optimizer_bytes']))
    lp, fp = med([r['peak_rss_mb'] for r in L]), med([r['peak_rss_mb'] for r in F])
    lm, fm = med([r['rss_model_mb'] for r in L]), med([r['rss_model_mb'] for r in F])
    print('| peak RSS (process) | %.0f MiB | %.0f MiB | %.2f× |' % (lp, fp, fp / lp))
    print('| peak RSS − RSS after model build | %.0f MiB | %.0f MiB | %.2f× |' % (lp - lm, fp - fm, (fp - fm) / (lp - lm)))
    for lab, k in (('fwd+bwd', 'fwd_bwd_ms'), ('step (fwd+bwd+AdamW)', 'ms_per_step'), ('  forward', 'fwd_ms'),
                   ('  backward', 'bwd_ms'), ('  AdamW', 'opt_ms')):
        a, b = med([r[k] for r in L]), med([r[k] for r in F])
        print('| %s | %.1f ms | %.1f ms | %.2f× |' % (lab, a, b, b / a))
    print('\nstep ms per run — LoRA: %s; full: %s' % (
        ', '.join('%.0f' % r['ms_per_step'] for r in L), ', '.join('%.0f' % r['ms_per_step'] for r in F)))
M = pick(mode='merged-latency')
if M:
    print('\n#### Merged-model latency (forward over 256 tokens; decode ms/token after a 256-token prompt)\n')
    print('| shape | base (as built) | adapter unmerged | merged | base after unmerge | merged / base | merged / base after unmerge | merge | unmerge | max abs Δlogit merged vs unmerged adapter |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in M:
        print('| %s fwd | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.3f | %.3f | %.1f ms | %.1f ms | %.2g |' % (
            r['shape'], r['base_fwd_ms'], r['adapter_unmerged_fwd_ms'], r['merged_fwd_ms'], r['base_owned_fwd_ms'],
            r['merged_over_base'], r['merged_over_base_owned'], r['merge_ms'], r['unmerge_ms'],
            r['merged_vs_adapter_logits_max_abs_diff']))
        if 'base_decode_ms_per_tok' in r:
            print('| %s decode/token | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.3f | %.3f | | | |' % (
                r['shape'], r['base_decode_ms_per_tok'], r['adapter_decode_ms_per_tok'], r['merged_decode_ms_per_tok'],
                r['base_owned_decode_ms_per_tok'], r['merged_over_base_decode'],
                r['merged_decode_ms_per_tok'] / r['base_owned_decode_ms_per_tok']))
S = pick(mode='swap')
if S:
    print('\n#### Adapter swap (median of %d add+remove pairs; one other adapter resident)\n' % S[0]['swaps'])
    print('| shape | targets | adapter file | load from disk | add_adapter | remove_adapter | swap (add+remove) |')
    print('|---|---|---|---|---|---|---|')
    for r in S:
        print('| %s | %s | %.2f MiB | %.2f ms | %.1f µs | %.1f µs | %.1f µs |' % (
            r['shape'], r['targets'], mb(r['adapter_bytes']), r['load_adapter_ms'], r['add_adapter_us'],
            r['remove_adapter_us'], r['swap_us']))
print('\nload average during runs: %.1f–%.1f' % (min(r['loadavg_start'] for r in R), max(r['loadavg_start'] for r in R)))
