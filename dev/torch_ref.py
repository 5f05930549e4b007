#!/usr/bin/python3
"""Plain-PyTorch reference for the fixture models (no transformers/PEFT needed): GPT-2 and
Llama forward with LoRA, step-0 gradients and 20-step AdamW training, in f32 or f64.
Used to study numerical sensitivity of the PEFT fixture trajectories.
Usage: dev/torch_ref.py FIXTURE_MODEL_DIR ADAPTER_NAME [f32|f64]"""
import json, math, struct, sys
import numpy as np
import torch

def load_st(path):
    b = open(path, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        s, e = v['data_offsets']
        dt = {'F32': np.float32, 'F16': np.float16}[v['dtype']]
        out[k] = torch.from_numpy(np.frombuffer(b[8 + n + s:8 + n + e], dtype=dt).reshape(v['shape']).astype(np.float32).copy())
    return out

def main():
    root, name = sys.argv[1], sys.argv[2]
    dtype = torch.float64 if (len(sys.argv) > 3 and sys.argv[3] == 'f64') else torch.float32
    cfg = json.load(open(root + '/model/config.json'))
    W = {k: v.to(dtype) for k, v in load_st(root + '/model/model.safetensors').items()}
    acfg = json.load(open(root + '/adapters/%s/adapter_config.json' % name))
    AD = {k: v.to(dtype) for k, v in load_st(root + '/adapters/%s/adapter_model.safetensors' % name).items()}
    exp = json.load(open(root + '/expected.json'))
    r, alpha = acfg['r'], acfg['lora_alpha']
    scale = alpha / math.sqrt(r) if acfg.get('use_rslora') else alpha / r
    params = {}
    for k, v in AD.items():
        p = v.clone().requires_grad_(True)
        params[k] = p
    def lora(module, x, y):
        ka = 'base_model.model.%s.lora_A.weight' % module
        if ka in params:
            y = y + scale * (x @ params[ka].T) @ params[ka.replace('lora_A', 'lora_B')].T
        return y
    gpt2 = cfg['model_type'] == 'gpt2'
    def forward(ids):
        T = len(ids)
        ids_t = torch.tensor(ids)
        if gpt2:
            C = cfg['n_embd']; H = cfg['n_head']; D = C // H
            x = W['transformer.wte.weight'][ids_t] + W['transformer.wpe.weight'][:T]
            for l in range(cfg['n_layer']):
                p = 'transformer.h.%d.' % l
                h = torch.nn.functional.layer_norm(x, (C,), W[p + 'ln_1.weight'], W[p + 'ln_1.bias'], cfg['layer_norm_epsilon'])
                qkv = lora(p + 'attn.c_attn', h, h @ W[p + 'attn.c_attn.weight'] + W[p + 'attn.c_attn.bias'])
                q, k, v = qkv.split(C, -1)
                q = q.view(T, H, D).transpose(0, 1); k = k.view(T, H, D).transpose(0, 1); v = v.view(T, H, D).transpose(0, 1)
                att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
                att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float('-inf')).softmax(-1)
                y = (att @ v).transpose(0, 1).reshape(T, C)
                x = x + lora(p + 'attn.c_proj', y, y @ W[p + 'attn.c_proj.weight'] + W[p + 'attn.c_proj.bias'])
                h = torch.nn.functional.layer_norm(x, (C,), W[p + 'ln_2.weight'], W[p + 'ln_2.bias'], cfg['layer_norm_epsilon'])
                f = lora(p + 'mlp.c_fc', h, h @ W[p + 'mlp.c_fc.weight'] + W[p + 'mlp.c_fc.bias'])
                f = torch.nn.functional.gelu(f, approximate='tanh')
                x = x + lora(p + 'mlp.c_proj', f, f @ W[p + 'mlp.c_proj.weight'] + W[p + 'mlp.c_proj.bias'])
            x = torch.nn.functional.layer_norm(x, (C,), W['transformer.ln_f.weight'], W['transformer.ln_f.bias'], cfg['layer_norm_epsilon'])
            return x @ W['transformer.wte.weight'].T
        C = cfg['hidden_size']; H = cfg['num_attention_heads']; KV = cfg['num_key_value_heads']; D = cfg.get('head_dim', C // H)
        theta = cfg.get('rope_parameters', {}).get('rope_theta', cfg.get('rope_theta', 10000.0))
        inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
        fr = torch.arange(T).float()[:, None] * inv[None]
        emb = torch.cat([fr, fr], -1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        def rope(x):
            x1, x2 = x[..., :D // 2], x[..., D // 2:]
            return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]
        def rms(x, w):
            return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg['rms_norm_eps']))
        x = W['model.embed_tokens.weight'][ids_t]
        for l in range(cfg['num_hidden_layers']):
            p = 'model.layers.%d.' % l
            h = rms(x, W[p + 'input_layernorm.weight'])
            def lin(n, inp): return lora(p + n, inp, inp @ W[p + n + '.weight'].T)
            q = rope(lin('self_attn.q_proj', h).view(T, H, D)).transpose(0, 1)
            k = rope(lin('self_attn.k_proj', h).view(T, KV, D)).transpose(0, 1).repeat_interleave(H // KV, 0)
            v = lin('self_attn.v_proj', h).view(T, KV, D).transpose(0, 1).repeat_interleave(H // KV, 0)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float('-inf')).softmax(-1)
            y = (att @ v).transpose(0, 1).reshape(T, H * D)
            x = x + lin('self_attn.o_proj', y)
            h = rms(x, W[p + 'post_attention_layernorm.weight'])
            x = x + lin('mlp.down_proj', torch.nn.functional.silu(lin('mlp.gate_proj', h)) * lin('mlp.up_proj', h))
        x = rms(x, W['model.norm.weight'])
        return x @ W['lm_head.weight'].T
    tr = exp['adapters'][name]['train']
    ids = tr['ids']
    def loss_fn():
        logits = forward(ids)
        return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    # Step-0 gradients vs the fixture.
    loss = loss_fn(); loss.backward()
    G = load_st(root + '/adapters/%s/grads_step0.safetensors' % name)
    worst = 0
    for k, p in params.items():
        ref = G[k].double(); mine = p.grad.double()
        worst = max(worst, ((mine - ref).abs().max() / ref.abs().max()).item())
    print('step0 loss %.7f  grads max err / max |g| vs fixture: %.3g' % (loss.item(), worst))
    for p in params.values(): p.grad = None
    opt = torch.optim.AdamW(list(params.values()), lr=tr['lr'], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses = []
    for s in range(tr['steps']):
        opt.zero_grad(); loss = loss_fn(); loss.backward(); opt.step(); losses.append(loss.item())
    want = tr['losses']
    print('losses  mine:', ' '.join('%.4f' % x for x in losses))
    print('losses  peft:', ' '.join('%.4f' % x for x in want))
    print('max rel diff: %.3g' % max(abs(a - b) / abs(b) for a, b in zip(losses, want)))

main()
