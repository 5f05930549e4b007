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
        D = head_dim(cfg)
        F = cfg['intermediate_size']
        gemma = mt in ('gemma2', 'gemma3_text')
        nw = (lambda n: rnd(n, std=0.1)) if gemma else (lambda n: 1 + rnd(n, std=0.1))  # Gemma stores w of (1 + w)
        W['model.embed_tokens.weight'] = rnd(V, C)
        for l in range(L):
            p = 'model.layers.%d.' % l
            W[p + 'input_layernorm.weight'] = nw(C)
            W[p + 'post_attention_layernorm.weight'] = nw(C)
            if gemma:
                W[p + 'pre_feedforward_layernorm.weight'] = nw(C)
                W[p + 'post_feedforward_layernorm.weight'] = nw(C)
            if mt in ('qwen3', 'gemma3_text'):
                W[p + 'self_attn.q_norm.weight'] = nw(D)
                W[p + 'self_attn.k_norm.weight'] = nw(D)
            if mt == 'phi3':
                lin = {'self_attn.qkv_proj': ((H + 2 * KV) * D, C), 'self_attn.o_proj': (C, H * D),
                       'mlp.gate_up_proj': (2 * F, C), 'mlp.down_proj': (C, F)}
            else:
                lin = {'self_attn.q_proj': (H * D, C), 'self_attn.k_proj': (KV * D, C), 'self_attn.v_proj': (KV * D, C),
                       'self_attn.o_proj': (C, H * D), 'mlp.gate_proj': (F, C), 'mlp.up_proj': (F, C), 'mlp.down_proj': (C, F)}
            for n, (o, i) in lin.items():
                W[p + n + '.weight'] = rnd(o, i, std=1 / math.sqrt(i))
                if (mt == 'qwen2' and n in ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj')) or \
                   (cfg.get('attention_bias') and n.startswith('self_attn')) or (cfg.get('mlp_bias') and n.startswith('mlp')):
                    W[p + n + '.bias'] = rnd(o, std=0.2)
        W['model.norm.weight'] = nw(C)
        if not cfg.get('tie_word_embeddings', gemma):
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
        # d mean-NLL / d LoRA A, B by autograd in float64: checks every backward of the block.
        for t in A['tensors'].values(): t.requires_grad_(True)
        forward_nll(cfg, W, ids, A, want_tensor=True).mean().backward()
        exp['adapter_grads'] = {m + '.lora_' + w: t.grad.flatten().tolist() for (m, w), t in A['tensors'].items()}
    json.dump(exp, open(d + '/expected.json', 'w'), indent=1)
    print(name, exp)

def module_list(cfg):
    if cfg['model_type'] == 'gpt2':
        C = cfg['n_embd']; F = cfg.get('n_inner') or 4 * C
        return [('transformer.h.%d.%s' % (l, n), l, o, i) for l in range(cfg['n_layer'])
                for n, (o, i) in {'attn.c_attn': (3 * C, C), 'attn.c_proj': (C, C), 'mlp.c_fc': (F, C), 'mlp.c_proj': (C, F)}.items()]
    C = cfg['hidden_size']; H = cfg['num_attention_heads']; KV = cfg['num_key_value_heads']
    D = head_dim(cfg); F = cfg['intermediate_size']
    if cfg['model_type'] == 'phi3':
        lin = {'self_attn.qkv_proj': ((H + 2 * KV) * D, C), 'self_attn.o_proj': (C, H * D),
               'mlp.gate_up_proj': (2 * F, C), 'mlp.down_proj': (C, F)}
    else:
        lin = {'self_attn.q_proj': (H * D, C), 'self_attn.k_proj': (KV * D, C), 'self_attn.v_proj': (KV * D, C),
               'self_attn.o_proj': (C, H * D), 'mlp.gate_proj': (F, C), 'mlp.up_proj': (F, C), 'mlp.down_proj': (C, F)}
    return [('model.layers.%d.%s' % (l, n), l, o, i) for l in range(cfg['num_hidden_layers']) for n, (o, i) in lin.items()]

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

def head_dim(cfg):
    mt = cfg['model_type']
    default = 128 if mt == 'qwen3' else 256 if mt in ('gemma2', 'gemma3_text') else cfg['hidden_size'] // cfg['num_attention_heads']
    return cfg.get('head_dim') or default

def layer_sliding(cfg):
    """Which layers use the sliding window, as transformers' configs derive layer_types."""
    mt, nl, w = cfg['model_type'], cfg['num_hidden_layers'], cfg.get('sliding_window')
    if 'layer_types' in cfg: return [t == 'sliding_attention' for t in cfg['layer_types']]
    if mt in ('mistral', 'phi3'): return [w is not None] * nl
    if mt in ('qwen2', 'qwen3'):
        if not cfg.get('use_sliding_window') or w is None: return [False] * nl
        return [l >= cfg.get('max_window_layers', nl) for l in range(nl)]
    if mt == 'gemma2': return [(l + 1) % 2 != 0 for l in range(nl)]
    if mt == 'gemma3_text': return [(l + 1) % cfg.get('sliding_window_pattern', 6) != 0 for l in range(nl)]
    return [False] * nl

def scaled_inv_freq(inv, rs, cfg, D, theta):
    """transformers' rope init functions: (inv_freq, attention scaling)."""
    if not rs: return inv, 1.0
    t = rs.get('rope_type', rs.get('type'))
    if t == 'linear': return inv / rs['factor'], 1.0
    if t == 'llama3':
        f, lo, hi, old = rs['factor'], rs['low_freq_factor'], rs['high_freq_factor'], rs['original_max_position_embeddings']
        wl = 2 * math.pi / inv
        out = torch.where(wl > old / lo, inv / f, inv)
        smooth = (old / wl - lo) / (hi - lo)
        mid = (1 - smooth) * out / f + smooth * out
        is_mid = ~(wl < old / hi) & ~(wl > old / lo)
        return torch.where(is_mid, mid, out), 1.0
    if t == 'yarn':
        f = rs['factor']; old = rs.get('original_max_position_embeddings', cfg['max_position_embeddings'])
        bf, bs = rs.get('beta_fast', 32), rs.get('beta_slow', 1)
        att = rs.get('attention_factor') or (0.1 * math.log(f) + 1.0 if f > 1 else 1.0)
        corr = lambda rot: (D * math.log(old / (rot * 2 * math.pi))) / (2 * math.log(theta))
        low, high = max(math.floor(corr(bf)), 0), min(math.ceil(corr(bs)), D - 1)
        if low == high: high += 0.001
        ramp = ((torch.arange(D // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        extra = 1 - ramp
        return (inv / f) * (1 - extra) + inv * extra, att
    raise ValueError(t)

def forward_nll(cfg, W, ids, A, want_tensor=False):
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
        mt = cfg['model_type']
        gemma = mt in ('gemma2', 'gemma3_text')
        C = cfg['hidden_size']; H = cfg['num_attention_heads']; KV = cfg['num_key_value_heads']
        D = head_dim(cfg); eps = cfg['rms_norm_eps']; F = cfg['intermediate_size']
        nl = cfg['num_hidden_layers']
        sliding = layer_sliding(cfg)
        scale = cfg['query_pre_attn_scalar'] ** -0.5 if gemma else 1 / math.sqrt(D)
        cap = cfg.get('attn_logit_softcapping', 50.0 if mt == 'gemma2' else None)
        def rope_tables(theta, scaling):
            inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
            inv, att = scaled_inv_freq(inv, scaling, cfg, D, theta)
            fr = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
            emb = torch.cat([fr, fr], -1)
            return emb.cos() * att, emb.sin() * att
        glob = rope_tables(cfg.get('rope_theta', 1e6 if mt == 'gemma3_text' else 10000.0), cfg.get('rope_scaling'))
        local = rope_tables(cfg.get('rope_local_base_freq', 10000.0), None) if mt == 'gemma3_text' else glob
        def rope(x, n, cs):
            cos, sin = cs
            x = x.view(T, n, D); x1, x2 = x[..., :D // 2], x[..., D // 2:]
            return (x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]).reshape(T, n * D)
        def rms(x, w):
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            return y * (1 + w) if gemma else w * y
        def attend(q, k, v, window):
            q = q.view(T, H, D).transpose(0, 1)
            k = k.view(T, KV, D).transpose(0, 1).repeat_interleave(H // KV, 0)
            v = v.view(T, KV, D).transpose(0, 1).repeat_interleave(H // KV, 0)
            att = (q @ k.transpose(-1, -2)) * scale
            if cap: att = torch.tanh(att / cap) * cap
            qi = torch.arange(T)[:, None]; ki = torch.arange(T)[None, :]
            allowed = ki <= qi
            if window: allowed = allowed & (ki > qi - window)  # transformers' sliding_window_overlay
            att = att.masked_fill(~allowed, float('-inf')).softmax(-1)
            return (att @ v).transpose(0, 1).reshape(T, H * D)
        act = (lambda z: torch.nn.functional.gelu(z, approximate='tanh')) if gemma else torch.nn.functional.silu
        x = W['model.embed_tokens.weight'][t_ids]
        if gemma: x = x * math.sqrt(C)
        for l in range(nl):
            p = 'model.layers.%d.' % l
            P = lambda n, h: lin(p + n, h, W[p + n + '.weight'], W.get(p + n + '.bias'))
            h = rms(x, W[p + 'input_layernorm.weight'])
            if mt == 'phi3':
                qkv = P('self_attn.qkv_proj', h)
                q, k, v = qkv[:, :H * D], qkv[:, H * D:(H + KV) * D], qkv[:, (H + KV) * D:]
            else:
                q, k, v = P('self_attn.q_proj', h), P('self_attn.k_proj', h), P('self_attn.v_proj', h)
            if mt in ('qwen3', 'gemma3_text'):
                q = rms(q.view(T, H, D), W[p + 'self_attn.q_norm.weight']).reshape(T, H * D)
                k = rms(k.view(T, KV, D), W[p + 'self_attn.k_norm.weight']).reshape(T, KV * D)
            cs = local if (mt == 'gemma3_text' and sliding[l]) else glob
            y = attend(rope(q, H, cs), rope(k, KV, cs), v, cfg['sliding_window'] if sliding[l] else None)
            o = P('self_attn.o_proj', y)
            if gemma: o = rms(o, W[p + 'post_attention_layernorm.weight'])
            x = x + o
            h = rms(x, W[p + ('pre_feedforward_layernorm' if gemma else 'post_attention_layernorm') + '.weight'])
            if mt == 'phi3':
                gu = P('mlp.gate_up_proj', h); g, u = gu[:, :F], gu[:, F:]
            else:
                g, u = P('mlp.gate_proj', h), P('mlp.up_proj', h)
            f = P('mlp.down_proj', act(g) * u)
            if gemma: f = rms(f, W[p + 'post_feedforward_layernorm.weight'])
            x = x + f
        head = W['model.embed_tokens.weight'] if cfg.get('tie_word_embeddings', gemma) else W['lm_head.weight']
        logits = rms(x, W['model.norm.weight']) @ head.T
        fcap = cfg.get('final_logit_softcapping', 30.0 if mt == 'gemma2' else None)
        if fcap: logits = torch.tanh(logits / fcap) * fcap
    lp = torch.log_softmax(logits, -1)
    nll = torch.stack([-lp[t, ids[t + 1]] for t in range(T - 1)])
    return nll if want_tensor else [x.item() for x in nll]

def llama_cfg(mt, **kw):
    c = {'model_type': mt, 'architectures': [{'llama': 'LlamaForCausalLM', 'mistral': 'MistralForCausalLM', 'qwen2': 'Qwen2ForCausalLM',
                                              'qwen3': 'Qwen3ForCausalLM', 'gemma2': 'Gemma2ForCausalLM',
                                              'gemma3_text': 'Gemma3ForCausalLM', 'phi3': 'Phi3ForCausalLM'}[mt]],
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
MODELS = {}
def model(name, *a, **kw): MODELS[name] = (a, kw)

model('qwen2-tied-bias', llama_cfg('qwen2', tie_word_embeddings=True, num_key_value_heads=3, rope_theta=1000000.0),
     adapter=peft_cfg(target_modules='all-linear', r=4, lora_alpha=16, rank_pattern={'k_proj': 2, 'down_proj': 6}, alpha_pattern={'v_proj': 3}), seed=1)
model('mistral-gqa3-bf16', llama_cfg('mistral', num_attention_heads=6, num_key_value_heads=2, sliding_window=4096, rope_theta=500000.0),
     storage='BF16', adapter=peft_cfg(target_modules=['q_proj', 'k_proj', 'o_proj', 'down_proj'], use_rslora=True, r=8, lora_alpha=4, layers_to_transform=[1]), seed=2)
model('llama-mha-headdim-f16-sharded', llama_cfg('llama', num_attention_heads=4, num_key_value_heads=4, head_dim=16, attention_bias=True, mlp_bias=True),
     storage='F16', shards=3, adapter=peft_cfg(target_modules=r'.*\.(q_proj|up_proj)', r=3, lora_alpha=5), seed=3)
model('gpt2-n-inner-3layer', {'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'], 'vocab_size': 300, 'n_embd': 48, 'n_layer': 3,
                            'n_head': 3, 'n_positions': 64, 'n_inner': 100, 'layer_norm_epsilon': 1e-5, 'activation_function': 'gelu_new',
                            'tie_word_embeddings': True, 'bos_token_id': 0, 'eos_token_id': 0},
     adapter=peft_cfg(target_modules=['c_fc', 'attn.c_proj'], fan_in_fan_out=True, r=2, lora_alpha=2, alpha_pattern={'c_fc': 7}), seed=4)
# Round 2 families and features (24-token sequences: windows of 6-8 tokens take effect).
model('mistral-window8', llama_cfg('mistral', sliding_window=8),
     adapter=peft_cfg(target_modules=['q_proj', 'v_proj']), seed=5)
model('qwen2-window-layers', llama_cfg('qwen2', use_sliding_window=True, sliding_window=6, max_window_layers=1, rope_theta=1000000.0),
     adapter=peft_cfg(target_modules=['k_proj', 'o_proj']), seed=6)
model('qwen3-headdim-qknorm', llama_cfg('qwen3', head_dim=16, rope_theta=1000000.0),
     adapter=peft_cfg(target_modules='all-linear', r=4, lora_alpha=8), seed=7)
model('gemma2-softcap-window', dict(llama_cfg('gemma2', head_dim=16, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                                              final_logit_softcapping=3.0, sliding_window=8, num_hidden_layers=3,
                                              tie_word_embeddings=True, hidden_activation='gelu_pytorch_tanh'), hidden_act='gelu_pytorch_tanh'),
     adapter=peft_cfg(target_modules=['q_proj', 'gate_proj', 'down_proj']), seed=8)
model('gemma3-local-global', dict(llama_cfg('gemma3_text', head_dim=16, query_pre_attn_scalar=16, sliding_window=8, sliding_window_pattern=3,
                                            num_hidden_layers=3, rope_theta=1000000.0, rope_local_base_freq=10000.0,
                                            rope_scaling={'rope_type': 'linear', 'factor': 4.0}, tie_word_embeddings=True,
                                            hidden_activation='gelu_pytorch_tanh'), hidden_act='gelu_pytorch_tanh'),
     adapter=peft_cfg(target_modules=['v_proj', 'up_proj']), seed=9)
model('phi3-fused', llama_cfg('phi3', sliding_window=None),
     adapter=peft_cfg(target_modules=['qkv_proj', 'gate_up_proj', 'o_proj'], r=4, lora_alpha=8), seed=10)
model('llama3-rope-scaling', llama_cfg('llama', head_dim=8, rope_theta=500000.0,
                                       rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                                                     'high_freq_factor': 4.0, 'original_max_position_embeddings': 8192}),
     adapter=peft_cfg(target_modules=['q_proj', 'v_proj']), seed=11)
model('qwen2-yarn', llama_cfg('qwen2', rope_theta=1000000.0,
                              rope_scaling={'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 32}),
     adapter=peft_cfg(target_modules=['q_proj']), seed=12)
model('llama-linear-rope', llama_cfg('llama', rope_scaling={'type': 'linear', 'factor': 2.0}),
     adapter=peft_cfg(target_modules=['q_proj', 'k_proj']), seed=13)

# /usr/bin/python3 dev/make_synthetic.py [NAME ...]: (re)generates the named models (all by default).
for name in (sys.argv[1:] or list(MODELS)):
    a, kw = MODELS[name]
    make(name, *a, **kw)
