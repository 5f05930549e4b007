#!/usr/bin/python3
"""Generates small random Hugging Face-format models of the supported architectures with
variations the shared fixtures do not cover (Qwen2 q/k/v biases + tied embeddings, Mistral,
other GQA ratios, head_dim override, rope bases, f16/bf16 storage, sharded checkpoints) and
PEFT-format adapters (rank_pattern/alpha_pattern, rsLoRA, layers_to_transform), and writes
expected per-position NLLs computed by an independent plain-PyTorch implementation in
float64. Output: tests/data/synthetic/<name>/{model/, adapter/, expected.json}.
Run: /usr/bin/python3 dev/make_synthetic.py (needs Debian's python3-torch)."""
import json, math, os, re, struct, sys
import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'data', 'synthetic')

def write_st(path, tensors, dtype='F32'):
    np_dt = {'F32': np.float32, 'F16': np.float16, 'BF16': None}[dtype]
    header, blobs, off = {'__metadata__': {'format': 'pt'}}, [], 0
    for k in sorted(tensors):
        t = tensors[k].detach().float().contiguous()
        if dtype == 'BF16':
            raw = (t.view(torch.int32) >> 16).to(torch.int16).numpy().tobytes()  # truncation: exact for bf16-rounded values
        else:
            raw = t.numpy().astype(np_dt).tobytes()
        header[k] = {'dtype': dtype, 'shape': list(t.shape), 'data_offsets': [off, off + len(raw)]}
        blobs.append(raw); off += len(raw)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h))); f.write(h)
        for b in blobs: f.write(b)

def round_to(dtype, t):
    if dtype == 'F16': return t.half().double()
    if dtype == 'BF16': return (t.float().view(torch.int32) & ~0xffff).view(torch.float32).double()
    return t.float().double()

def make(name, cfg, storage='F32', shards=1, adapter=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, std=0.3: torch.randn(*s, generator=g, dtype=torch.float64) * std
    mt = cfg['model_type']
    W = {}
    if mt == 'gpt2':
        C, L, V, P = cfg['n_embd'], cfg['n_layer'], cfg['vocab_size'], cfg['n_positions']
        F = cfg.get('n_inner') or 4 * C
        W['transformer.wte.weight'] = rnd(V, C); W['transformer.wpe.weight'] = rnd(P, C, std=0.1)
        for l in range(L):
            p = 'transformer.h.%d.' % l
            for n in ['ln_1', 'ln_2']:
                W[p + n + '.weight'] = 1 + rnd(C, std=0.1); W[p + n + '.bias'] = rnd(C, std=0.1)
            for n, (i, o) in {'attn.c_attn': (C, 3 * C), 'attn.c_proj': (C, C), 'mlp.c_fc': (C, F), 'mlp.c_proj': (F, C)}.items():
                W[p + n + '.weight'] = rnd(i, o, std=1 / math.sqrt(i)); W[p + n + '.bias'] = rnd(o, std=0.1)
        W['transformer.ln_f.weight'] = 1 + rnd(C, std=0.1); W['transformer.ln_f.bias'] = rnd(C, std=0.1)
    else:
        C, L, V = cfg['hidden_size'], cfg['num_hidden_layers'], cfg['vocab_size']
        H, KV = cfg['num_attention_heads'], cfg['num_key_value_heads']
        D = cfg.get('head_dim') or C // H
        F = cfg['intermediate_size']
        W['model.embed_tokens.weight'] = rnd(V, C)
        for l in range(L):
            p = 'model.layers.%d.' % l
            W[p + 'input_layernorm.weight'] = 1 + rnd(C, std=0.1)
            W[p + 'post_attention_layernorm.weight'] = 1 + rnd(C, std=0.1)
            for n, (o, i) in {'self_attn.q_proj': (H * D, C), 'self_attn.k_proj': (KV * D, C), 'self_attn.v_proj': (KV * D, C),
                              'self_attn.o_proj': (C, H * D), 'mlp.gate_proj': (F, C), 'mlp.up_proj': (F, C), 'mlp.down_proj': (C, F)}.items():
                W[p + n + '.weight'] = rnd(o, i, std=1 / math.sqrt(i))
                if (mt == 'qwen2' and n in ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj')) or \
                   (cfg.get('attention_bias') and n.startswith('self_attn')) or (cfg.get('mlp_bias') and n.startswith('mlp')):
                    W[p + n + '.bias'] = rnd(o, std=0.2)
        W['model.norm.weight'] = 1 + rnd(C, std=0.1)
        if not cfg.get('tie_word_embeddings'):
            W['lm_head.weight'] = rnd(V, C, std=1 / math.sqrt(C))
    W = {k: round_to(storage, v) for k, v in W.items()}
    d = os.path.join(OUT, name); os.makedirs(d + '/model', exist_ok=True)
    json.dump(cfg, open(d + '/model/config.json', 'w'), indent=2)
    keys = sorted(W)
    if shards == 1:
        write_st(d + '/model/model.safetensors', {k: W[k] for k in keys}, storage)
    else:
        wm = {}
        for s in range(shards):
            part = keys[s::shards]
            fn = 'model-%05d-of-%05d.safetensors' % (s + 1, shards)
            write_st(d + '/model/' + fn, {k: W[k] for k in part}, storage)
            for k in part: wm[k] = fn
        json.dump({'metadata': {}, 'weight_map': wm}, open(d + '/model/model.safetensors.index.json', 'w'), indent=2)
    ids = torch.randint(0, cfg['vocab_size'], (24,), generator=g).tolist()
    exp = {'ids': ids, 'base_nll': forward_nll(cfg, W, ids, {})}
    if adapter:
        A = make_adapter(cfg, W, adapter, g)
        os.makedirs(d + '/adapter', exist_ok=True)
        json.dump(adapter, open(d + '/adapter/adapter_config.json', 'w'), indent=2, sort_keys=True)
        write_st(d + '/adapter/adapter_model.safetensors', {'base_model.model.' + m + '.lora_' + w + '.weight': t for (m, w), t in A['tensors'].items()})
        exp['adapter_nll'] = forward_nll(cfg, W, ids, A)
    json.dump(exp, open(d + '/expected.json', 'w'), indent=1)
    print(name, exp)

def module_list(cfg):
    if cfg['model_type'] == 'gpt2':
        C = cfg['n_embd']; F = cfg.get('n_inner') or 4 * C
        return [('transformer.h.%d.%s' % (l, n), l, o, i) for l in range(cfg['n_layer'])
                for n, (o, i) in {'attn.c_attn': (3 * C, C), 'attn.c_proj': (C, C), 'mlp.c_fc': (F, C), 'mlp.c_proj': (C, F)}.items()]
    C = cfg['hidden_size']; H = cfg['num_attention_heads']; KV = cfg['num_key_value_heads']
    D = cfg.get('head_dim') or C // H; F = cfg['intermediate_size']
    return [('model.layers.%d.%s' % (l, n), l, o, i) for l in range(cfg['num_hidden_layers'])
            for n, (o, i) in {'self_attn.q_proj': (H * D, C), 'self_attn.k_proj': (KV * D, C), 'self_attn.v_proj': (KV * D, C),
                              'self_attn.o_proj': (C, H * D), 'mlp.gate_proj': (F, C), 'mlp.up_proj': (F, C), 'mlp.down_proj': (C, F)}.items()]

def make_adapter(cfg, W, ac, g):
    tm = ac['target_modules']
    out = {'tensors': {}, 'scale': {}}
    for m, layer, o, i in module_list(cfg):
        if tm == 'all-linear': hit = True
        elif isinstance(tm, str): hit = re.fullmatch(tm, m) is not None
        else: hit = any(m == t or m.endswith('.' + t) for t in tm)
        if ac.get('layers_to_transform') is not None and layer not in ac['layers_to_transform']: hit = False
        if not hit: continue
        r, alpha = ac['r'], ac['lora_alpha']
        for k, v in ac.get('rank_pattern', {}).items():
            if re.match(r'(.*\.)?(%s)$' % k, m): r = v; break
        for k, v in ac.get('alpha_pattern', {}).items():
            if re.match(r'(.*\.)?(%s)$' % k, m): alpha = v; break
        out['tensors'][(m, 'A')] = (torch.randn(r, i, generator=g, dtype=torch.float64) * 0.25).float().double()
        out['tensors'][(m, 'B')] = (torch.randn(o, r, generator=g, dtype=torch.float64) * 0.25).float().double()
        out['scale'][m] = alpha / math.sqrt(r) if ac.get('use_rslora') else alpha / r
    return out

def forward_nll(cfg, W, ids, A):
    T = len(ids); t_ids = torch.tensor(ids)
    def lin(m, x, w, b=None, conv=False):
        y = x @ (w if conv else w.T)
        if b is not None: y = y + b
        if A and (m, 'A') in A['tensors']:
            y = y + A['scale'][m] * (x @ A['tensors'][(m, 'A')].T) @ A['tensors'][(m, 'B')].T
        return y
    def attend(q, k, v, H, KV, D):
        q = q.view(T, H, D).transpose(0, 1)
        k = k.view(T, KV, D).transpose(0, 1).repeat_interleave(H // KV, 0)
        v = v.view(T, KV, D).transpose(0, 1).repeat_interleave(H // KV, 0)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float('-inf')).softmax(-1)
        return (att @ v).transpose(0, 1).reshape(T, H * D)
    if cfg['model_type'] == 'gpt2':
        C = cfg['n_embd']; H = cfg['n_head']; eps = cfg['layer_norm_epsilon']
        ln = lambda x, p: torch.nn.functional.layer_norm(x, (C,), W[p + '.weight'], W[p + '.bias'], eps)
        x = W['transformer.wte.weight'][t_ids] + W['transformer.wpe.weight'][:T]
        for l in range(cfg['n_layer']):
            p = 'transformer.h.%d.' % l
            h = ln(x, p + 'ln_1')
            qkv = lin(p + 'attn.c_attn', h, W[p + 'attn.c_attn.weight'], W[p + 'attn.c_attn.bias'], True)
            y = attend(*qkv.split(C, -1), H, H, C // H)
            x = x + lin(p + 'attn.c_proj', y, W[p + 'attn.c_proj.weight'], W[p + 'attn.c_proj.bias'], True)
            h = ln(x, p + 'ln_2')
            f = torch.nn.functional.gelu(lin(p + 'mlp.c_fc', h, W[p + 'mlp.c_fc.weight'], W[p + 'mlp.c_fc.bias'], True), approximate='tanh')
            x = x + lin(p + 'mlp.c_proj', f, W[p + 'mlp.c_proj.weight'], W[p + 'mlp.c_proj.bias'], True)
        logits = ln(x, 'transformer.ln_f') @ W['transformer.wte.weight'].T
    else:
        C = cfg['hidden_size']; H = cfg['num_attention_heads']; KV = cfg['num_key_value_heads']
        D = cfg.get('head_dim') or C // H; eps = cfg['rms_norm_eps']; theta = cfg.get('rope_theta', 10000.0)
        inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        fr = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
        emb = torch.cat([fr, fr], -1); cos, sin = emb.cos(), emb.sin()
        def rope(x, n):
            x = x.view(T, n, D); x1, x2 = x[..., :D // 2], x[..., D // 2:]
            return (x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]).reshape(T, n * D)
        rms = lambda x, w: w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
        x = W['model.embed_tokens.weight'][t_ids]
        for l in range(cfg['num_hidden_layers']):
            p = 'model.layers.%d.' % l
            P = lambda n, h: lin(p + n, h, W[p + n + '.weight'], W.get(p + n + '.bias'))
            h = rms(x, W[p + 'input_layernorm.weight'])
            y = attend(rope(P('self_attn.q_proj', h), H), rope(P('self_attn.k_proj', h), KV), P('self_attn.v_proj', h), H, KV, D)
            x = x + P('self_attn.o_proj', y)
            h = rms(x, W[p + 'post_attention_layernorm.weight'])
            x = x + P('mlp.down_proj', torch.nn.functional.silu(P('mlp.gate_proj', h)) * P('mlp.up_proj', h))
        head = W['model.embed_tokens.weight'] if cfg.get('tie_word_embeddings') else W['lm_head.weight']
        logits = rms(x, W['model.norm.weight']) @ head.T
    lp = torch.log_softmax(logits, -1)
    return [-lp[t, ids[t + 1]].item() for t in range(T - 1)]

def llama_cfg(mt, **kw):
    c = {'model_type': mt, 'architectures': [{'llama': 'LlamaForCausalLM', 'mistral': 'MistralForCausalLM', 'qwen2': 'Qwen2ForCausalLM'}[mt]],
         'vocab_size': 300, 'hidden_size': 48, 'intermediate_size': 80, 'num_hidden_layers': 2, 'num_attention_heads': 6,
         'num_key_value_heads': 2, 'rms_norm_eps': 1e-6, 'rope_theta': 10000.0, 'max_position_embeddings': 128,
         'tie_word_embeddings': False, 'hidden_act': 'silu', 'bos_token_id': 1, 'eos_token_id': 2}
    c.update(kw); return c

def peft_cfg(**kw):
    c = {'peft_type': 'LORA', 'r': 4, 'lora_alpha': 8, 'lora_dropout': 0.0, 'bias': 'none', 'use_rslora': False,
         'target_modules': ['q_proj', 'v_proj'], 'rank_pattern': {}, 'alpha_pattern': {}, 'layers_to_transform': None,
         'init_lora_weights': True, 'fan_in_fan_out': False, 'task_type': 'CAUSAL_LM', 'some_future_key': {'x': 1}}
    c.update(kw); return c

torch.set_default_dtype(torch.float64)
make('qwen2-tied-bias', llama_cfg('qwen2', tie_word_embeddings=True, num_key_value_heads=3, rope_theta=1000000.0),
     adapter=peft_cfg(target_modules='all-linear', r=4, lora_alpha=16, rank_pattern={'k_proj': 2, 'down_proj': 6}, alpha_pattern={'v_proj': 3}), seed=1)
make('mistral-gqa3-bf16', llama_cfg('mistral', num_attention_heads=6, num_key_value_heads=2, sliding_window=4096, rope_theta=500000.0),
     storage='BF16', adapter=peft_cfg(target_modules=['q_proj', 'k_proj', 'o_proj', 'down_proj'], use_rslora=True, r=8, lora_alpha=4, layers_to_transform=[1]), seed=2)
make('llama-mha-headdim-f16-sharded', llama_cfg('llama', num_attention_heads=4, num_key_value_heads=4, head_dim=16, attention_bias=True, mlp_bias=True),
     storage='F16', shards=3, adapter=peft_cfg(target_modules=r'.*\.(q_proj|up_proj)', r=3, lora_alpha=5), seed=3)
make('gpt2-n-inner-3layer', {'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'], 'vocab_size': 300, 'n_embd': 48, 'n_layer': 3,
                            'n_head': 3, 'n_positions': 64, 'n_inner': 100, 'layer_norm_epsilon': 1e-5, 'activation_function': 'gelu_new',
                            'tie_word_embeddings': True, 'bos_token_id': 0, 'eos_token_id': 0},
     adapter=peft_cfg(target_modules=['c_fc', 'attn.c_proj'], fan_in_fan_out=True, r=2, lora_alpha=2, alpha_pattern={'c_fc': 7}), seed=4)
