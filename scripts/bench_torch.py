#!/usr/bin/env python3
"""PyTorch baseline for cellscope's benchmark harness.

Prints ONE JSON object per line on stdout (diagnostics go to stderr).
Needs: pip install torch safetensors numpy   (the CPU is all it uses).

    python3 scripts/bench_torch.py infer --hidden 256 --layers 2 --vocab 97 --chars 20000 [--threads 1] [--model m.safetensors]
    python3 scripts/bench_torch.py train --hidden 256 --layers 2 --vocab 97 --batch 50 --seq 100 --steps 30 [--threads 1]

infer: one-hot (or the model's embedding) input, batch 1, zero initial state;
  one line per method in --impls (default "fused,loop"):
    impl "torch_fused":      F.one_hot -> nn.LSTM forward over all chars ->
                             decoder -> log_softmax, under torch.inference_mode().
    impl "torch_loop_gates": per layer, the input projection for all T at once
                             (x @ W_ih^T + b_ih + b_hh; for one-hot input a
                             column gather), then a Python loop over steps
                             (addmv with W_hh, sigmoid/tanh, c, h) that writes
                             h, c, i, f, g, o of every layer and step into
                             preallocated [T, H] tensors; then decoder +
                             log_softmax over all steps.
  Each method is warmed up, then run repeatedly for >= --min-time seconds
  (and >= 3 runs); chars_per_s is the MEDIAN over runs, best_chars_per_s the best.
  The loop's log_probs over the first 200 chars are checked against the fused
  ones (max abs diff reported as "check_max_abs_diff"; > 1e-3 aborts).

train: char-rnn step with one-hot input (F.one_hot(ids).float() fed to
  nn.LSTM(V, H, layers); --input embed uses nn.Embedding(V, --embed) instead),
  decoder, cross-entropy over batch*seq, backward, clip_grad_norm_(params, 5),
  Adam lr 2e-3, hidden state carried (detached) between steps, random data.
  --warmup steps (default 3) are run first and not timed; then --steps are
  timed: chars_per_s = batch * seq * steps / time.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class CharLSTM(nn.Module):
    """Same attribute names as cellscope's model format."""

    def __init__(self, vocab, hidden, layers, embed=None):
        super().__init__()
        self.vocab = vocab
        self.embedding = nn.Embedding(vocab, embed) if embed else None
        self.rnn = nn.LSTM(embed if embed else vocab, hidden, layers, batch_first=False)
        self.decoder = nn.Linear(hidden, vocab)

    def inputs(self, ids):
        """ids [T] or [T, B] -> layer-0 input [T, (B,) in0]."""
        if self.embedding is None:
            return F.one_hot(ids, self.vocab).to(torch.float32)
        return self.embedding(ids)


def random_model(vocab, hidden, layers, embed=None):
    # PyTorch's default init (uniform +-1/sqrt(H)): a trained-like, non-chaotic
    # regime, so the fused/loop cross-check stays tight over 20k steps.
    # (Much larger weights, e.g. uniform(-0.5, 0.5) at H = 256, make the
    # recurrence chaotic and f32 rounding differences grow without bound.)
    return CharLSTM(vocab, hidden, layers, embed)


def load_model(path):
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}
    layers = 0
    while f"rnn.weight_ih_l{layers}" in sd:
        layers += 1
    hidden = sd["rnn.weight_hh_l0"].shape[1]
    vocab = sd["decoder.weight"].shape[0]
    embed = sd["embedding.weight"].shape[1] if "embedding.weight" in sd else None
    if "cellscope.vocab" in meta:
        assert len(json.loads(meta["cellscope.vocab"])) == vocab, "vocab metadata / decoder mismatch"
    m = CharLSTM(vocab, hidden, layers, embed)
    m.load_state_dict(sd, strict=True)
    return m


# ---------------------------------------------------------------- infer

def infer_fused(model, ids):
    with torch.inference_mode():
        out, _ = model.rnn(model.inputs(ids).unsqueeze(1))
        return F.log_softmax(model.decoder(out.squeeze(1)), dim=-1)


def infer_loop(model, ids):
    """Recording loop: returns (log_probs, {name_lk: [T, H]})."""
    rnn = model.rnn
    H, L, T = rnn.hidden_size, rnn.num_layers, ids.shape[0]
    rec = {}
    with torch.inference_mode():
        x = None
        for k in range(L):
            W_ih = getattr(rnn, f"weight_ih_l{k}")
            W_hh = getattr(rnn, f"weight_hh_l{k}")
            bias = getattr(rnn, f"bias_ih_l{k}") + getattr(rnn, f"bias_hh_l{k}")
            # Input projection for all steps at once: [T, 4H].
            if k == 0 and model.embedding is None:
                pre_x = W_ih.t()[ids] + bias  # one-hot @ W_ih^T == row gather of W_ih^T
            else:
                xin = model.embedding(ids) if k == 0 else x
                pre_x = torch.addmm(bias, xin, W_ih.t())
            hs = torch.empty(T, H)
            cs = torch.empty(T, H)
            gates = torch.empty(T, 4, H)  # i, f, g, o after activation
            h = torch.zeros(H)
            c = torch.zeros(H)
            for t in range(T):
                pre = torch.addmv(pre_x[t], W_hh, h).view(4, H)
                act = gates[t]
                torch.sigmoid(pre, out=act)           # i, f, o (g overwritten next)
                torch.tanh(pre[2], out=act[2])        # g
                c = torch.addcmul(act[1] * c, act[0], act[2], out=cs[t])
                h = torch.mul(act[3], torch.tanh(c), out=hs[t])
            rec[f"h_l{k}"], rec[f"c_l{k}"] = hs, cs
            for j, g in enumerate("ifgo"):
                rec[f"{g}_l{k}"] = gates[:, j]
            x = hs
        log_probs = F.log_softmax(model.decoder(x), dim=-1)
    return log_probs, rec


def time_runs(fn, min_time, min_runs=3):
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def cmd_infer(a):
    torch.manual_seed(a.seed)
    model = load_model(a.model) if a.model else random_model(a.vocab, a.hidden, a.layers)
    model.eval()
    V, H, L = model.vocab, model.rnn.hidden_size, model.rnn.num_layers
    ids = torch.randint(V, (a.chars,))

    # Correctness check on a short prefix (short, so that even a model with
    # chaotic dynamics cannot amplify f32 rounding differences), then warm-up.
    check = ids[: min(a.chars, 200)]
    diff = (infer_fused(model, check) - infer_loop(model, check)[0]).abs().max().item()
    if diff > 1e-3:
        sys.exit(f"loop and fused disagree: max abs diff of log_probs {diff}")
    warm = ids[: min(a.chars, 2000)]
    infer_fused(model, warm)
    if "loop" in a.impls:
        infer_loop(model, warm)

    impls = {"fused": ("torch_fused", lambda: infer_fused(model, ids)),
             "loop": ("torch_loop_gates", lambda: infer_loop(model, ids))}
    for impl, fn in (impls[name] for name in a.impls.split(",")):
        times = time_runs(fn, a.min_time)
        rates = [a.chars / t for t in times]
        print(json.dumps({
            "bench": "infer", "impl": impl, "hidden": H, "layers": L, "vocab": V,
            "input": "embed" if model.embedding is not None else "onehot",
            "threads": torch.get_num_threads(), "chars": a.chars,
            "chars_per_s": round(statistics.median(rates), 1),
            "best_chars_per_s": round(max(rates), 1), "runs": len(times),
            "check_max_abs_diff": diff, "torch": torch.__version__,
            "model": a.model,
        }), flush=True)


# ---------------------------------------------------------------- train

def cmd_train(a):
    torch.manual_seed(a.seed)
    embed = a.embed if a.input == "embed" else None
    model = CharLSTM(a.vocab, a.hidden, a.layers, embed)  # PyTorch default init
    model.train()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    B, S, V = a.batch, a.seq, a.vocab
    total = a.warmup + a.steps
    data = torch.randint(V, (total, S + 1, B))  # time-major, like batch_first=False
    state = None
    losses = []

    def step(n):
        nonlocal state
        x, y = data[n, :-1], data[n, 1:]
        if state is not None:
            state = tuple(s.detach() for s in state)
        out, state = model.rnn(model.inputs(x), state)
        logits = model.decoder(out)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        return loss.item()

    for n in range(a.warmup):
        step(n)
    t0 = time.perf_counter()
    for n in range(a.warmup, total):
        losses.append(step(n))
    dt = time.perf_counter() - t0
    print(json.dumps({
        "bench": "train", "impl": "torch", "hidden": a.hidden, "layers": a.layers,
        "vocab": V, "input": a.input if embed is None else f"embed{embed}",
        "batch": B, "seq": S, "steps": a.steps, "warmup": a.warmup,
        "threads": torch.get_num_threads(),
        "chars_per_s": round(B * S * a.steps / dt, 1),
        "seconds": round(dt, 3), "last_loss": round(losses[-1], 4),
        "torch": torch.__version__,
    }), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--threads", type=int, default=1)
        sp.add_argument("--hidden", type=int, default=256)
        sp.add_argument("--layers", type=int, default=2)
        sp.add_argument("--vocab", type=int, default=97)
        sp.add_argument("--seed", type=int, default=0)

    pi = sub.add_parser("infer")
    common(pi)
    pi.add_argument("--chars", type=int, default=20000)
    pi.add_argument("--model", help="load weights from a cellscope .safetensors (overrides --hidden/--layers/--vocab)")
    pi.add_argument("--min-time", type=float, default=2.0, help="seconds timed per method (default 2)")
    pi.add_argument("--impls", default="fused,loop",
                    help="which to time, comma-separated: fused (nn.LSTM), loop (records the gates); default both")

    pt = sub.add_parser("train")
    common(pt)
    pt.add_argument("--batch", type=int, default=50)
    pt.add_argument("--seq", type=int, default=100)
    pt.add_argument("--steps", type=int, default=30)
    pt.add_argument("--warmup", type=int, default=3)
    pt.add_argument("--input", choices=["onehot", "embed"], default="onehot")
    pt.add_argument("--embed", type=int, default=64, help="embedding size for --input embed")

    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.cmd == "infer":
        cmd_infer(a)
    else:
        cmd_train(a)


if __name__ == "__main__":
    main()
