#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures used by cellscope's Rust tests.

Run by hand from the repository root (CI does not run it; the outputs are
committed):

    pip install torch safetensors numpy
    python3 scripts/make_fixtures.py            # writes tests/fixtures/

It is deterministic (fixed torch.manual_seed) and writes, for each of two
small 2-layer LSTMs with H = 16 over a 33-character vocabulary taken from a
C snippet:

    tests/fixtures/lstm_onehot.safetensors           no embedding, one-hot input
                                                     (rnn.weight_ih_l0 is [64, V])
    tests/fixtures/lstm_onehot.expected.safetensors
    tests/fixtures/lstm_embed.safetensors            nn.Embedding with E = 8
    tests/fixtures/lstm_embed.expected.safetensors

The model files are the module's own `state_dict()` saved with
`safetensors.torch.save_file`, plus metadata `cellscope.arch`,
`cellscope.vocab` (JSON list of one-char strings, index = id) and
`cellscope.train`.

The expected files hold, for the fixed TEXT below run from a zero state with
batch 1, f32 tensors `h_l{k}`, `c_l{k}`, `i_l{k}`, `f_l{k}`, `g_l{k}`,
`o_l{k}` (each [T, H], row t = state after reading character t) and
`log_probs` ([T, V], log_softmax of the decoder applied to the last layer's
h), with metadata `text` and `source`.

The gate values come from an explicit per-step loop over the weights
(computed in float64, stored as f32); the script asserts that this loop
agrees with the module's fused `nn.LSTM` (output, h_n, c_n) and with the
module's decoder + log_softmax to within 1e-6.

Then, the same way, a 2-layer H = 16 `nn.GRU` and `nn.RNN(nonlinearity="tanh")`
with one-hot input (`cellscope.arch` "gru" and "rnn"):

    tests/fixtures/gru_onehot.safetensors            rnn.weight_ih_l0 is [48, V] (r, z, n)
    tests/fixtures/gru_onehot.expected.safetensors   h_l{k}, r_l{k}, z_l{k}, n_l{k}, log_probs
    tests/fixtures/rnn_onehot.safetensors            rnn.weight_ih_l0 is [16, V]
    tests/fixtures/rnn_onehot.expected.safetensors   h_l{k}, log_probs

where the loop computes r = σ(W_ir x + b_ir + W_hr h + b_hr), z likewise,
n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h, and
is checked against the module's nn.GRU (nn.RNN) output and h_n to 1e-6. The
LSTM fixtures are built first from the same seed, so adding these did not change
them.
"""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

SEED = 20240611
HIDDEN = 16
LAYERS = 2
EMBED = 8
TOL = 1e-6

# The vocabulary is every character of this snippet (sorted, so ids are
# stable): 33 characters including space, newline, tab, double quote,
# parentheses and braces.
VOCAB_SOURCE = (
    'int main(void) {\n\tchar *s = "hi";\n\treturn f(n - 1) + f(n - 2);\n}\n'
    'int f(int n) {\n\tif (n < 2) return n;\n\tputs("fib");\n}\n'
)
VOCAB = sorted(set(VOCAB_SOURCE))

# The text run through both models (82 characters, all in VOCAB).
TEXT = 'int f(int n) {\n\tif (n < 2) return n;\n\tputs("fib");\n\treturn f(n - 1) + f(n - 2);\n}\n'

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


RECURRENT = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": lambda i, h, l, **kw: nn.RNN(i, h, l, nonlinearity="tanh", **kw)}


class CharLSTM(nn.Module):
    """embedding (optional) -> nn.LSTM / nn.GRU / nn.RNN (batch_first=False) -> decoder."""

    def __init__(self, vocab, hidden, layers, embed=None, arch="lstm"):
        super().__init__()
        self.vocab = vocab
        if embed is None:
            self.embedding = None
            in0 = vocab
        else:
            self.embedding = nn.Embedding(vocab, embed)
            in0 = embed
        self.arch = arch
        self.rnn = RECURRENT[arch](in0, hidden, layers, batch_first=False)
        self.decoder = nn.Linear(hidden, vocab)

    def inputs(self, ids):
        """ids [T] -> layer-0 input [T, 1, in0]."""
        if self.embedding is None:
            x = F.one_hot(ids, self.vocab).to(torch.float32)
        else:
            x = self.embedding(ids)
        return x.unsqueeze(1)

    def forward(self, ids):
        out, state = self.rnn(self.inputs(ids))
        h_n, c_n = state if self.arch == "lstm" else (state, None)
        logits = self.decoder(out.squeeze(1))
        c_n = None if c_n is None else c_n.squeeze(1)
        return out.squeeze(1), h_n.squeeze(1), c_n, F.log_softmax(logits, dim=-1)


def init_weights(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("embedding"):
                p.uniform_(-1.0, 1.0)
            else:
                p.uniform_(-0.5, 0.5)


def reference_loop(model, ids):
    """Explicit per-layer, per-step LSTM in float64. Returns dict of [T, ...] tensors."""
    sd = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items()}
    H = model.rnn.hidden_size
    T = ids.shape[0]
    if model.embedding is None:
        x = F.one_hot(ids, model.vocab).to(torch.float64)
    else:
        x = sd["embedding.weight"][ids]
    rec = {}
    for k in range(model.rnn.num_layers):
        W_ih = sd[f"rnn.weight_ih_l{k}"]
        W_hh = sd[f"rnn.weight_hh_l{k}"]
        b_ih = sd[f"rnn.bias_ih_l{k}"]
        b_hh = sd[f"rnn.bias_hh_l{k}"]
        h = torch.zeros(H, dtype=torch.float64)
        c = torch.zeros(H, dtype=torch.float64)
        hs, cs, is_, fs, gs, os_ = [], [], [], [], [], []
        for t in range(T):
            pre = W_ih @ x[t] + b_ih + W_hh @ h + b_hh
            i = torch.sigmoid(pre[0:H])
            f = torch.sigmoid(pre[H:2 * H])
            g = torch.tanh(pre[2 * H:3 * H])
            o = torch.sigmoid(pre[3 * H:4 * H])
            c = f * c + i * g
            h = o * torch.tanh(c)
            for lst, v in ((hs, h), (cs, c), (is_, i), (fs, f), (gs, g), (os_, o)):
                lst.append(v)
        for name, lst in (("h", hs), ("c", cs), ("i", is_), ("f", fs), ("g", gs), ("o", os_)):
            rec[f"{name}_l{k}"] = torch.stack(lst)
        x = rec[f"h_l{k}"]  # input of the next layer
    top = rec[f"h_l{model.rnn.num_layers - 1}"]
    logits = top @ sd["decoder.weight"].T + sd["decoder.bias"]
    rec["log_probs"] = torch.log_softmax(logits, dim=-1)
    return rec


def reference_loop_plain(model, ids):
    """Explicit per-layer, per-step GRU or tanh-RNN in float64 (PyTorch's equations)."""
    sd = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items()}
    H = model.rnn.hidden_size
    x = F.one_hot(ids, model.vocab).to(torch.float64)
    rec = {}
    for k in range(model.rnn.num_layers):
        W_ih, W_hh = sd[f"rnn.weight_ih_l{k}"], sd[f"rnn.weight_hh_l{k}"]
        b_ih, b_hh = sd[f"rnn.bias_ih_l{k}"], sd[f"rnn.bias_hh_l{k}"]
        h = torch.zeros(H, dtype=torch.float64)
        seen = {"h": [], "r": [], "z": [], "n": []}
        for t in range(ids.shape[0]):
            gi = W_ih @ x[t] + b_ih
            gh = W_hh @ h + b_hh
            if model.arch == "gru":
                r = torch.sigmoid(gi[0:H] + gh[0:H])
                z = torch.sigmoid(gi[H:2 * H] + gh[H:2 * H])
                n = torch.tanh(gi[2 * H:3 * H] + r * gh[2 * H:3 * H])
                h = (1 - z) * n + z * h
                for name, v in (("r", r), ("z", z), ("n", n)):
                    seen[name].append(v)
            else:
                h = torch.tanh(gi + gh)
            seen["h"].append(h)
        for name, lst in seen.items():
            if lst:
                rec[f"{name}_l{k}"] = torch.stack(lst)
        x = rec[f"h_l{k}"]
    top = rec[f"h_l{model.rnn.num_layers - 1}"]
    rec["log_probs"] = torch.log_softmax(top @ sd["decoder.weight"].T + sd["decoder.bias"], dim=-1)
    return rec


def check_close(what, a, b):
    diff = (a.to(torch.float64) - b.to(torch.float64)).abs().max().item()
    if not diff <= TOL:
        sys.exit(f"mismatch in {what}: max abs diff {diff:.3e} > {TOL}")
    return diff


def build(name, embed, arch="lstm"):
    """One fixture: the model file and PyTorch's values for TEXT, checked against the loop."""
    stoi = {ch: i for i, ch in enumerate(VOCAB)}
    ids = torch.tensor([stoi[ch] for ch in TEXT], dtype=torch.long)
    model = CharLSTM(len(VOCAB), HIDDEN, LAYERS, embed, arch)
    init_weights(model)
    model.eval()

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in state.values())
    if embed is None:
        assert "embedding.weight" not in state
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[arch]
        assert tuple(state["rnn.weight_ih_l0"].shape) == (gates * HIDDEN, len(VOCAB))
    meta = {
        "cellscope.arch": arch,
        "cellscope.vocab": json.dumps(VOCAB),
        "cellscope.train": json.dumps({"corpus": "fixture"}),
    }
    save_file(state, os.path.join(OUT_DIR, f"{name}.safetensors"), metadata=meta)

    with torch.no_grad():
        out, h_n, c_n, log_probs = model(ids)
    rec = reference_loop(model, ids) if arch == "lstm" else reference_loop_plain(model, ids)
    top = LAYERS - 1
    diffs = [
        check_close("output vs loop h (last layer)", out, rec[f"h_l{top}"]),
        check_close("log_probs", log_probs, rec["log_probs"]),
    ]
    for k in range(LAYERS):
        diffs.append(check_close(f"h_n[{k}]", h_n[k], rec[f"h_l{k}"][-1]))
        if c_n is not None:
            diffs.append(check_close(f"c_n[{k}]", c_n[k], rec[f"c_l{k}"][-1]))

    # Sanity: the recorded values should not all sit near 0.5 / 0.
    spread = min(v.std().item() for key, v in rec.items() if key != "log_probs")
    assert spread > 0.05, f"values too flat (min std {spread})"

    expected = {k: v.to(torch.float32).contiguous() for k, v in rec.items()}
    save_file(
        expected,
        os.path.join(OUT_DIR, f"{name}.expected.safetensors"),
        metadata={"text": TEXT, "source": f"scripts/make_fixtures.py, torch {torch.__version__}"},
    )
    print(f"{name}: V={len(VOCAB)} T={len(TEXT)} H={HIDDEN} layers={LAYERS} "
          f"embed={embed} max|fused-loop|={max(diffs):.2e} min std={spread:.3f}")


def main():
    assert all(ch in VOCAB for ch in TEXT)
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.manual_seed(SEED)
    build("lstm_onehot", None)
    build("lstm_embed", EMBED)
    build("gru_onehot", None, "gru")
    build("rnn_onehot", None, "rnn")


if __name__ == "__main__":
    main()
