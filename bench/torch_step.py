#!/usr/bin/python3
"""Plain-PyTorch reference for `lowrank bench`: the same model shapes with random f32
weights, LoRA on the same targets with a frozen base (requires_grad False), timed
zero_grad + forward + backward (+ AdamW step), inference forward, and greedy decode with a
simple KV cache. Prints one JSON line with the same field names as `lowrank bench --json`.

Run with Debian's torch: /usr/bin/python3 bench/torch_step.py --shape gpt2-124m --mode lora
Threads: --threads N sets torch.set_num_threads(N) (intra-op OpenMP pool) and OpenBLAS's own
pthread pool (via ctypes; --blas-threads overrides the latter). Debian's torch calls the
system libblas.so.3 (OpenBLAS pthread), whose pool is separate from torch's OpenMP pool.
"""
import argparse, ctypes, json, math, os, re, resource, sys, time

SHAPES = {
    'gpt2-124m': dict(model_type='gpt2', vocab_size=50257, n_embd=768, n_layer=12, n_head=12,
                      n_positions=1024, layer_norm_epsilon=1e-5),
    'tinyllama-1.1b': dict(model_type='llama', vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                           num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                           max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                           tie_word_embeddings=False),
}

ap = argparse.ArgumentParser()
ap.add_argument('--shape', default='gpt2-124m')
ap.add_argument('--mode', default='lora', choices=['forward', 'lora', 'full'])
ap.add_argument('--batch', type=int, default=1)
ap.add_argument('--seq', type=int, default=256)
ap.add_argument('--steps', type=int, default=5)
ap.add_argument('--warmup', type=int, default=1)
ap.add_argument('--decode', type=int, default=0)
ap.add_argument('--decode-reps', type=int, default=1)
ap.add_argument('--targets', default='')
ap.add_argument('--r', type=int, default=8)
ap.add_argument('--alpha', type=float, default=16)
ap.add_argument('--lr', type=float, default=1e-4)
ap.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', '2')))
ap.add_argument('--blas-threads', type=int, default=0, help='OpenBLAS pool size (default: --threads)')
ap.add_argument('--seed', type=int, default=0)
ap.add_argument('--json', action='store_true')
args = ap.parse_args()
args.blas_threads = args.blas_threads or args.threads
LOAD_START = open('/proc/loadavg').read().split()[0]

# Thread pools before torch starts them: libgomp (torch ops) and OpenBLAS (its own pthreads).
os.environ['OMP_NUM_THREADS'] = str(args.threads)
os.environ['OPENBLAS_NUM_THREADS'] = str(args.blas_threads)
import torch
import torch.nn.functional as F

torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)

def blas_info():
    maps = open('/proc/self/maps').read()
    libs = sorted(set(re.findall(r'(/\S*(?:blas|lapack|mkl|gomp|libomp)\S*\.so[.\d]*)', maps)))
    info = {'torch_blas_libs': libs, 'libblas_so_3': os.path.realpath('/usr/lib/x86_64-linux-gnu/libblas.so.3')}
    cfg = torch.__config__.show()
    m = re.search(r'BLAS_INFO=(\w+)', cfg)
    info['torch_blas_info'] = m.group(1) if m else '?'
    info['torch_cpu_capability'] = (re.search(r'CPU capability usage: (\S+)', cfg) or [None, '?'])[1]
    for lib in libs:
        if 'openblas' in lib or 'libblas' in lib:
            try:
                L = ctypes.CDLL(lib)
                L.openblas_set_num_threads(args.blas_threads)
                info['openblas_threads'] = L.openblas_get_num_threads()
                L.openblas_get_corename.restype = ctypes.c_char_p
                info['openblas_core'] = L.openblas_get_corename().decode()
                L.openblas_get_config.restype = ctypes.c_char_p
                info['openblas_config'] = L.openblas_get_config().decode().strip()
                break
            except (OSError, AttributeError):
                pass
    return info

def cfg_of(shape):
    if shape in SHAPES:
        return dict(SHAPES[shape])
    p = shape if shape.endswith('.json') else os.path.join(shape, 'config.json')
    return json.load(open(p))

def status_kb(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def cpu_model():
    for line in open('/proc/cpuinfo'):
        if line.startswith('model name'):
            return line.split(':', 1)[1].strip()
    return 'unknown'

def cpu_sample():
    # (all CPUs busy seconds from /proc/stat, this process's CPU seconds, wall): their
    # difference over the run is CPU time taken by other processes.
    v = [float(x) for x in open('/proc/stat').readline().split()[1:11]]
    hz = os.sysconf('SC_CLK_TCK')
    total = sum(v) - v[8] - v[9]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ((total - v[3] - v[4]) / hz, ru.ru_utime + ru.ru_stime, time.perf_counter())

def foreign_frac(a, b):
    wall = b[2] - a[2]
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / (wall * os.cpu_count())) if wall > 0 else 0.0

def med(v):
    v = sorted(v)
    n = len(v)
    return 0.0 if n == 0 else (v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2]))


class Model:
    """GPT-2 / llama decoder as plain tensors (HF layouts: GPT-2 Conv1D weights (in, out),
    llama nn.Linear weights (out, in)). LoRA: y += s · (x·Aᵀ)·Bᵀ as PEFT computes it."""

    def __init__(self, cfg, std=0.02, untie=False, full=False):
        self.gpt2 = cfg['model_type'] == 'gpt2'
        g = self.gpt2
        self.C = cfg['n_embd'] if g else cfg['hidden_size']
        self.L = cfg['n_layer'] if g else cfg['num_hidden_layers']
        self.H = cfg['n_head'] if g else cfg['num_attention_heads']
        self.KVH = self.H if g else cfg.get('num_key_value_heads', self.H)
        self.D = self.C // self.H if g else cfg.get('head_dim', self.C // self.H)
        self.F = (cfg.get('n_inner') or 4 * self.C) if g else cfg['intermediate_size']
        self.V = cfg['vocab_size']
        self.eps = cfg['layer_norm_epsilon'] if g else cfg.get('rms_norm_eps', 1e-6)
        self.theta = cfg.get('rope_theta', 10000.0)
        self.tied = cfg.get('tie_word_embeddings', g) and not untie
        a = std * math.sqrt(3.0)
        def w(*shape):
            return torch.empty(*shape).uniform_(-a, a).requires_grad_(full)
        def ones(n):
            return (torch.ones(n) + torch.empty(n).uniform_(-a, a)).requires_grad_(full)
        C, F_, HD, KD = self.C, self.F, self.H * self.D, self.KVH * self.D
        self.p = {}
        P = self.p
        P['wte'] = w(self.V, C)
        if g:
            P['wpe'] = w(cfg['n_positions'], C)
        for l in range(self.L):
            if g:
                for n in ('ln_1', 'ln_2'):
                    P['%d.%s.w' % (l, n)] = ones(C); P['%d.%s.b' % (l, n)] = w(C)
                for n, i, o in (('c_attn', C, 3 * C), ('attn.c_proj', C, C), ('c_fc', C, F_), ('mlp.c_proj', F_, C)):
                    P['%d.%s.w' % (l, n)] = w(i, o); P['%d.%s.b' % (l, n)] = w(o)
            else:
                P['%d.input_layernorm' % l] = ones(C); P['%d.post_attention_layernorm' % l] = ones(C)
                for n, o, i in (('q_proj', HD, C), ('k_proj', KD, C), ('v_proj', KD, C), ('o_proj', C, HD),
                                ('gate_proj', F_, C), ('up_proj', F_, C), ('down_proj', C, F_)):
                    P['%d.%s' % (l, n)] = w(o, i)
        if g:
            P['ln_f.w'] = ones(C); P['ln_f.b'] = w(C)
        else:
            P['norm'] = ones(C)
        if not self.tied:
            P['lm_head'] = w(self.V, C)
        self.lora = {}
        if not g:
            inv = 1.0 / (self.theta ** (torch.arange(0, self.D, 2, dtype=torch.int64).float() / self.D))
            self.inv_freq = inv

    def num_parameters(self):
        return sum(t.numel() for t in self.p.values())

    def add_lora(self, targets, r, alpha):
        s = alpha / r
        names = []
        for l in range(self.L):
            if self.gpt2:
                mods = {'c_attn': (self.C, 3 * self.C), 'attn.c_proj': (self.C, self.C),
                        'c_fc': (self.C, self.F), 'mlp.c_proj': (self.F, self.C)}
            else:
                HD, KD = self.H * self.D, self.KVH * self.D
                mods = {'q_proj': (self.C, HD), 'k_proj': (self.C, KD), 'v_proj': (self.C, KD),
                        'o_proj': (HD, self.C), 'gate_proj': (self.C, self.F), 'up_proj': (self.C, self.F),
                        'down_proj': (self.F, self.C)}
            for n, (i, o) in mods.items():
                short = n.split('.')[-1]
                if targets == 'all-linear' or n in targets or short in targets:
                    A = torch.empty(r, i).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i)).requires_grad_(True)
                    B = torch.zeros(o, r).requires_grad_(True)
                    self.lora['%d.%s' % (l, n)] = (A, B, s)
                    names.append('%d.%s' % (l, n))
        return names

    def lin(self, key, x, W, b=None, conv1d=False):
        if conv1d:
            y = torch.addmm(b, x.reshape(-1, x.shape[-1]), W).view(*x.shape[:-1], W.shape[1]) if b is not None else x @ W
        else:
            y = F.linear(x, W, b)
        lo = self.lora.get(key)
        if lo is not None:
            A, B, s = lo
            y = y + F.linear(F.linear(x, A), B) * s
        return y

    def rope(self, x, pos):
        # x (B, H, T, D); HF half rotation
        fr = pos.float()[:, None] * self.inv_freq[None]
        emb = torch.cat([fr, fr], -1)
        cos, sin = emb.cos(), emb.sin()
        x1, x2 = x[..., :self.D // 2], x[..., self.D // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, ids, cache=None, last_only=False):
        """ids (B, T). cache: dict with 'k','v' lists of (B, KVH, cap, D) and 'len'. Returns logits."""
        P, C, H, KVH, D = self.p, self.C, self.H, self.KVH, self.D
        Bsz, T = ids.shape
        start = cache['len'] if cache is not None else 0
        pos = torch.arange(start, start + T)
        x = F.embedding(ids, P['wte'])
        if self.gpt2:
            x = x + P['wpe'][start:start + T]
        causal = None
        if T > 1:
            causal = torch.ones(T, start + T, dtype=torch.bool).triu(start + 1)
        for l in range(self.L):
            if self.gpt2:
                h = F.layer_norm(x, (C,), P['%d.ln_1.w' % l], P['%d.ln_1.b' % l], self.eps)
                qkv = self.lin('%d.c_attn' % l, h, P['%d.c_attn.w' % l], P['%d.c_attn.b' % l], True)
                q, k, v = qkv.split(C, -1)
                q = q.view(Bsz, T, H, D).transpose(1, 2)
                k = k.view(Bsz, T, H, D).transpose(1, 2)
                v = v.view(Bsz, T, H, D).transpose(1, 2)
            else:
                h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * P['%d.input_layernorm' % l]
                q = self.lin('%d.q_proj' % l, h, P['%d.q_proj' % l]).view(Bsz, T, H, D).transpose(1, 2)
                k = self.lin('%d.k_proj' % l, h, P['%d.k_proj' % l]).view(Bsz, T, KVH, D).transpose(1, 2)
                v = self.lin('%d.v_proj' % l, h, P['%d.v_proj' % l]).view(Bsz, T, KVH, D).transpose(1, 2)
                q = self.rope(q, pos)
                k = self.rope(k, pos)
            if cache is not None:
                cache['k'][l][:, :, start:start + T] = k
                cache['v'][l][:, :, start:start + T] = v
                k = cache['k'][l][:, :, :start + T]
                v = cache['v'][l][:, :, :start + T]
            if KVH != H:  # HF repeat_kv
                k = k[:, :, None].expand(Bsz, KVH, H // KVH, k.shape[2], D).reshape(Bsz, H, k.shape[2], D)
                v = v[:, :, None].expand(Bsz, KVH, H // KVH, v.shape[2], D).reshape(Bsz, H, v.shape[2], D)
            att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
            if causal is not None:
                att = att.masked_fill(causal, float('-inf'))
            att = att.softmax(-1)
            y = (att @ v).transpose(1, 2).reshape(Bsz, T, H * D)
            if self.gpt2:
                x = x + self.lin('%d.attn.c_proj' % l, y, P['%d.attn.c_proj.w' % l], P['%d.attn.c_proj.b' % l], True)
                h = F.layer_norm(x, (C,), P['%d.ln_2.w' % l], P['%d.ln_2.b' % l], self.eps)
                f = F.gelu(self.lin('%d.c_fc' % l, h, P['%d.c_fc.w' % l], P['%d.c_fc.b' % l], True), approximate='tanh')
                x = x + self.lin('%d.mlp.c_proj' % l, f, P['%d.mlp.c_proj.w' % l], P['%d.mlp.c_proj.b' % l], True)
            else:
                x = x + self.lin('%d.o_proj' % l, y, P['%d.o_proj' % l])
                h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * P['%d.post_attention_layernorm' % l]
                g = F.silu(self.lin('%d.gate_proj' % l, h, P['%d.gate_proj' % l])) * self.lin('%d.up_proj' % l, h, P['%d.up_proj' % l])
                x = x + self.lin('%d.down_proj' % l, g, P['%d.down_proj' % l])
        if cache is not None:
            cache['len'] = start + T
        if last_only:
            x = x[:, -1:]
        if self.gpt2:
            x = F.layer_norm(x, (C,), P['ln_f.w'], P['ln_f.b'], self.eps)
        else:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * P['norm']
        return self.lin('lm_head', x, P['wte'] if self.tied else P['lm_head'])

    def new_cache(self, B, cap):
        z = lambda: torch.zeros(B, self.KVH, cap, self.D)
        return {'k': [z() for _ in range(self.L)], 'v': [z() for _ in range(self.L)], 'len': 0}


def main():
    cfg = cfg_of(args.shape)
    t0 = time.perf_counter()
    untie = args.mode == 'full' and cfg.get('tie_word_embeddings', cfg['model_type'] == 'gpt2')
    with torch.no_grad():
        m = Model(cfg, untie=untie, full=(args.mode == 'full'))
    build_s = time.perf_counter() - t0
    rss_model = status_kb('VmRSS')
    cpu0 = cpu_sample()
    out = {'impl': 'pytorch', 'torch': torch.__version__, 'shape': args.shape, 'arch': cfg['model_type'],
           'mode': args.mode, 'batch': args.batch, 'seq': args.seq, 'threads': torch.get_num_threads(),
           'cpu': cpu_model(), 'params': m.num_parameters(), 'untied_lm_head': bool(untie), 'build_s': build_s,
           'rss_model_mb': rss_model / 1024.0}
    out.update(blas_info())
    trainable = []
    if args.mode == 'lora':
        targets = args.targets or ('c_attn' if m.gpt2 else 'q_proj,v_proj')
        tl = targets if targets == 'all-linear' else targets.split(',')
        names = m.add_lora(tl, args.r, args.alpha)
        for A, B, s in m.lora.values():
            trainable += [A, B]
        out.update(targets=targets, r=args.r, lora_targets=len(names))
    elif args.mode == 'full':
        trainable = list(m.p.values())
    ntrain = sum(t.numel() for t in trainable)
    out.update(trainable_params=ntrain, trainable_frac=ntrain / m.num_parameters(), grad_bytes=4 * ntrain,
               optimizer_bytes=8 * ntrain, grad_optimizer_bytes=12 * ntrain, rss_setup_mb=status_kb('VmRSS') / 1024.0)
    g = torch.Generator().manual_seed(args.seed + 12345)
    ids = torch.randint(0, m.V, (args.batch, args.seq), generator=g)
    tgt = torch.randint(0, m.V, (args.batch, args.seq), generator=g)
    N = args.batch * args.seq
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) if trainable else None
    fwd, bwd, ost, fb, step = [], [], [], [], []
    loss_v = 0.0
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m.forward(ids).view(N, m.V), tgt.view(N))
        else:
            with torch.no_grad():
                loss = F.cross_entropy(m.forward(ids).view(N, m.V), tgt.view(N))
        t1 = time.perf_counter()
        if opt is not None:
            loss.backward()
        t2 = time.perf_counter()
        if opt is not None:
            opt.step()
        t3 = time.perf_counter()
        loss_v = loss.item()
        if i < args.warmup:
            continue
        fwd.append(t1 - t0); bwd.append(t2 - t1); ost.append(t3 - t2); fb.append(t2 - t0); step.append(t3 - t0)
    ms = lambda v: [x * 1e3 for x in v]
    out.update(steps=args.steps, warmup=args.warmup)
    if args.steps > 0:
        out['loss'] = loss_v
        out['fwd_ms'] = med(ms(fwd))
        if opt is not None:
            out.update(bwd_ms=med(ms(bwd)), opt_ms=med(ms(ost)), fwd_bwd_ms=med(ms(fb)),
                       fwd_bwd_tokens_per_s=N / med(fb), fwd_bwd_ms_all=ms(fb))
        out.update(ms_per_step=med(ms(step)), ms_per_step_min=min(ms(step)), tokens_per_s=N / med(step),
                   step_ms_all=ms(step))
    out['peak_rss_train_mb'] = status_kb('VmHWM') / 1024.0
    if args.decode > 0:
        prompt = ids[:1]
        pre, dec = [], []
        toks = []
        m.lora = {}  # decode on the base model, like lowrank bench
        with torch.no_grad():
            c = m.new_cache(1, 10)  # warm-up
            lg = m.forward(prompt[:, :8], c, last_only=True)
            m.forward(lg[:, -1].argmax(-1, keepdim=True), c, last_only=True)
            for _ in range(args.decode_reps):
                c = m.new_cache(1, args.seq + args.decode)
                t0 = time.perf_counter()
                lg = m.forward(prompt, c, last_only=True)
                t1 = time.perf_counter()
                toks = []
                for _ in range(args.decode):
                    nxt = lg[:, -1].argmax(-1, keepdim=True)
                    toks.append(int(nxt))
                    lg = m.forward(nxt, c, last_only=True)
                t2 = time.perf_counter()
                pre.append(t1 - t0); dec.append(t2 - t1)
        out.update(decode_tokens=args.decode, prefill_ms=med(pre) * 1e3, prefill_tok_s=args.seq / med(pre),
                   decode_tok_s=args.decode / med(dec), decode_ms_per_tok=med(dec) * 1e3 / args.decode,
                   decode_first_tokens=toks[:8])
    out['peak_rss_mb'] = status_kb('VmHWM') / 1024.0
    out['foreign_cpu_frac'] = foreign_frac(cpu0, cpu_sample())
    out['loadavg_start'] = float(LOAD_START)
    out['loadavg_end'] = float(open('/proc/loadavg').read().split()[0])
    out['glibc_tunables'] = os.environ.get('GLIBC_TUNABLES', '')
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    sys.stdout.flush()


main()
