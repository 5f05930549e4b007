#!/usr/bin/env python3
"""PEFT reference for bench/cuda/cuda_step: the same model shapes with random weights on the
GPU, bf16 base, LoRA (PEFT's defaults: adapter weights autocast to f32), AdamW, timed
zero_grad + forward + backward + optimizer step. Prints one JSON line with the same field
names as `cuda_step --mode train`.

    python3 bench/cuda/peft_step.py --shape gpt2-124m --batch 8 --seq 1024 --targets c_attn

Memory: torch.cuda.max_memory_allocated() over the whole run (weights included), the figure
comparable with cuda_step's peak_bytes (both exclude the CUDA context and library handles).
"""
import argparse, json, time

import torch

SHAPES = {
    'gpt2-124m': dict(kind='gpt2', vocab_size=50257, n_embd=768, n_layer=12, n_head=12,
                      n_positions=1024, layer_norm_epsilon=1e-5, activation_function='gelu_new'),
    'tinyllama-1.1b': dict(kind='llama', vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                           num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                           max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                           tie_word_embeddings=False, hidden_act='silu'),
}

ap = argparse.ArgumentParser()
ap.add_argument('--shape', default='gpt2-124m', choices=sorted(SHAPES))
ap.add_argument('--batch', type=int, default=8)
ap.add_argument('--seq', type=int, default=1024)
ap.add_argument('--targets', default='', help='comma list or all-linear (default: c_attn / q_proj,v_proj)')
ap.add_argument('--r', type=int, default=8)
ap.add_argument('--alpha', type=float, default=16)
ap.add_argument('--lr', type=float, default=1e-4)
ap.add_argument('--steps', type=int, default=10)
ap.add_argument('--warmup', type=int, default=3)
ap.add_argument('--attn', default='sdpa', help='attn_implementation (sdpa, eager, flash_attention_2)')
ap.add_argument('--grad-ckpt', action='store_true', help='gradient checkpointing (cf. cuda_step --recompute)')
ap.add_argument('--fused-adamw', action='store_true')
ap.add_argument('--seed', type=int, default=0)
args = ap.parse_args()

import transformers
import peft
from peft import LoraConfig, get_peft_model

torch.manual_seed(args.seed)
dev = torch.device('cuda')
spec = dict(SHAPES[args.shape])
kind = spec.pop('kind')
if kind == 'gpt2':
    config = transformers.GPT2Config(**spec)
    cls = transformers.GPT2LMHeadModel
    default_targets = 'c_attn'
else:
    config = transformers.LlamaConfig(**spec)
    cls = transformers.LlamaForCausalLM
    default_targets = 'q_proj,v_proj'
config._attn_implementation = args.attn

# Random init directly on the GPU in bf16 (transformers v5 calls it dtype=, v4 torch_dtype=).
with torch.device(dev):
    try:
        model = cls._from_config(config, dtype=torch.bfloat16)
    except TypeError:
        model = cls._from_config(config, torch_dtype=torch.bfloat16)
model.to(dev)
model.config.use_cache = False
if args.grad_ckpt:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    model.enable_input_require_grads()

targets = args.targets or default_targets
lc = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, bias='none', task_type='CAUSAL_LM',
                target_modules='all-linear' if targets == 'all-linear' else targets.split(','),
                fan_in_fan_out=(kind == 'gpt2'))
model = get_peft_model(model, lc)
model.train()
trainable = [p for p in model.parameters() if p.requires_grad]
n_trainable = sum(p.numel() for p in trainable)
opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                        fused=True if args.fused_adamw else None)

ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=dev)

def step():
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()
    return out.loss

times, losses = [], []
for s in range(args.warmup + args.steps):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if s >= args.warmup:
        times.append(dt)
    losses.append(float(loss))

def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])

def train_flops():
    # Same formula as cuda_step.cpp train_flops().
    if kind == 'gpt2':
        C, F, L, H, D, KVH, V = spec['n_embd'], 4 * spec['n_embd'], spec['n_layer'], spec['n_head'], \
            spec['n_embd'] // spec['n_head'], spec['n_head'], spec['vocab_size']
        mlp = 2
    else:
        C, F, L, H, KVH, V = spec['hidden_size'], spec['intermediate_size'], spec['num_hidden_layers'], \
            spec['num_attention_heads'], spec['num_key_value_heads'], spec['vocab_size']
        D = C // H
        mlp = 3
    HD, KD = H * D, KVH * D
    per_layer = C * HD + 2 * C * KD + HD * C + mlp * C * F
    P = per_layer * L + C * V
    N = args.batch * args.seq
    attn_fwd = 2.0 * args.batch * HD * args.seq * args.seq * L
    return 4.0 * N * P + 3.0 * attn_fwd

step_s = median(times)
flops = train_flops()
print(json.dumps({
    'impl': 'peft', 'mode': 'train', 'device': torch.cuda.get_device_name(),
    'shape': args.shape, 'dtype': 'bf16', 'batch': args.batch, 'seq': args.seq, 'r': args.r,
    'targets': args.targets or 'default', 'steps': args.steps, 'recompute': args.grad_ckpt,
    'attn_implementation': args.attn, 'trainable_params': n_trainable,
    'step_ms': step_s * 1e3, 'step_ms_min': min(times) * 1e3,
    'tok_per_s': args.batch * args.seq / step_s,
    'model_flops_per_step': flops, 'achieved_tflops': flops / step_s / 1e12,
    'peak_bytes': torch.cuda.max_memory_allocated(),
    'peak_gib': torch.cuda.max_memory_allocated() / 2**30,
    'loss_first': losses[0], 'loss_last': losses[-1],
    'versions': {'torch': torch.__version__, 'transformers': transformers.__version__, 'peft': peft.__version__},
}))
