#!/usr/bin/env python3
"""Writes a model card and its loss-curve SVG from what the model file itself
records (`cellscope.train` metadata: config, steps, losses, curve), so the card
cannot drift from the weights. The default model's card is models/README.md;
another model's is models/<stem>.md (the comparison models of
scripts/train-compare.sh).

    python3 scripts/model-card.py [models/linux-lstm.safetensors] [--concepts FILE]
    python3 scripts/model-card.py models/linux-gru-2x297.safetensors

--concepts: a markdown table (from scripts/concept-table.sh) to include.
Standard library only.
"""
import json
import math
import struct
import sys
from pathlib import Path


def metadata(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return header.get("__metadata__", {}), header


def curve_svg(curve, out, steps=None):
    pts = [(p[0], p[1], p[2]) for p in curve]
    w, h, pad = 640, 300, 44
    max_step = max(p[0] for p in pts)
    ys = [v for p in pts for v in p[1:] if v is not None]
    # The axis starts at 0.8, or lower (a multiple of 0.2) when a loss goes below it.
    lo, hi = min(0.8, math.floor(min(ys) / 0.2) * 0.2), min(max(ys), 2.5)
    x = lambda s: pad + (w - 2 * pad) * s / max_step
    y = lambda v: h - pad - (h - 2 * pad) * (min(v, hi) - lo) / (hi - lo)
    def path(i):
        d = [f"{x(p[0]):.1f},{y(p[i]):.1f}" for p in pts if p[i] is not None]
        return "M" + " L".join(d)
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>']
    v = lo
    while v <= hi + 1e-9:
        lines.append(f'<line x1="{pad}" x2="{w-pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                     f'<text x="{pad-6}" y="{y(v)+4:.1f}" text-anchor="end">{v:.1f}</text>')
        v += 0.2
    lines.append(f'<line x1="{pad}" x2="{w-pad}" y1="{y(1.134):.1f}" y2="{y(1.134):.1f}" stroke="#999" stroke-dasharray="4 3"/>'
                 f'<text x="{w-pad}" y="{y(1.134)-4:.1f}" text-anchor="end" fill="#777">PyTorch 2×256 bar: test 1.134</text>')
    lines.append(f'<path d="{path(1)}" fill="none" stroke="#2166ac" stroke-width="1.5"/>')
    lines.append(f'<path d="{path(2)}" fill="none" stroke="#b2182b" stroke-width="2.5"/>')
    for p in pts:
        if p[2] is not None:
            lines.append(f'<circle cx="{x(p[0]):.1f}" cy="{y(p[2]):.1f}" r="3" fill="#b2182b"/>')
    lines.append(f'<text x="{w/2}" y="{h-8}" text-anchor="middle">training step (batch of 50 × 100 characters); {steps or max_step:,} steps</text>')
    lines.append(f'<text x="{pad}" y="18" fill="#2166ac">training loss</text><text x="{pad+100}" y="18" fill="#b2182b">validation loss (nats/char)</text>')
    lines.append("</svg>")
    Path(out).write_text("\n".join(lines) + "\n")


def main():
    args = sys.argv[1:]
    concepts = None
    if "--concepts" in args:
        i = args.index("--concepts")
        concepts = Path(args[i + 1]).read_text().strip()
        del args[i : i + 2]
    model = Path(args[0] if args else "models/linux-lstm.safetensors")
    meta, header = metadata(model)
    train = json.loads(meta["cellscope.train"])
    vocab = json.loads(meta["cellscope.vocab"])
    cfg = train["config"]
    params = 0
    for name, t in header.items():
        if name != "__metadata__":
            n = 1
            for d in t["shape"]:
                n *= d
            params += n
    curve = train.get("curve", [])
    svg = model.parent / (model.stem + ".curve.svg")
    if curve:
        curve_svg(curve, svg, train.get("steps"))
    hours = train.get("train_seconds", 0) / 3600
    arch = {"lstm": "LSTM", "gru": "GRU", "rnn": "tanh-RNN"}[meta.get("cellscope.arch", "lstm")]
    default = model.name == "linux-lstm.safetensors"
    rows = [
        ("Architecture", f"{arch}, {cfg['layers']} layers × {cfg['hidden']} cells, one-hot input"),
        ("Parameters", f"{params:,}"),
        ("Vocabulary", f"{len(vocab)} characters (every character of the train and val splits)"),
        ("Corpus", "Linux 6.1 C source (kernel, mm, fs/ext4, net/ipv4, drivers/char), `scripts/linux-corpus.sh`"),
        ("Train split", f"{train.get('train_chars', 0):,} characters, sha256 `{train.get('train_sha256', '?')}`"),
        ("Optimiser", f"{cfg['optimizer']}, lr {cfg['lr']:.0e}, ×{cfg['lr_decay']:.2f} per epoch after epoch {cfg['decay_after']:.0f}; gradient-norm clip {cfg['clip']:.0f}"),
        ("Batches", f"{cfg['batch']} parallel streams × {cfg['seq']} characters (truncated BPTT), state carried"),
        ("Regularisation", f"dropout {cfg['dropout']:.2f} between layers and before the decoder"),
        ("Init", f"uniform ±{cfg['init']:.2f}" + (", forget-gate bias 1" if arch == "LSTM" else "") + f"; seed {cfg['seed']}"),
        ("Trained", f"{train.get('steps', 0):,} steps = {train.get('epochs', 0):.2f} epochs, {hours:.2f} h on 2 cores ({cfg['threads']} threads), this machine, shared with development work"),
        ("Validation loss (batched estimate, at the saved step)", f"{train.get('best_val_loss', float('nan')):.4f} nats/char"),
        ("Validation loss (whole split, one stream)", f"{train['val_loss']:.4f} nats/char" if "val_loss" in train else "—"),
        ("Test loss (whole split, one stream)", f"**{train['test_loss']:.4f} nats/char** ({train['test_loss']/0.693147:.3f} bits/char)" if "test_loss" in train else "—"),
    ]
    role = ("The default model of `cellscope serve` / `trace` / `find-cells`." if default else
            "One of the three comparison models (LSTM, GRU and tanh-RNN of about 0.91 M parameters each, the same split "
            "and the same budget: `scripts/train-compare.sh`), served beside the default model; the README's "
            "\"Comparing them\" table sets them side by side.")
    out = [f"# Model card: `{model.name}`", "",
           role + " Written by `scripts/model-card.py` from the",
           "model file's own `cellscope.train` metadata.", "",
           "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    out += ["", "## Loss curve", ""]
    if curve:
        out += [f"![training and validation loss]({svg.name})", "",
                "Validation points are the trainer's batched estimate (50 streams, each from the zero state);",
                "the table above gives it beside the one-stream figure for the saved step. The dashed line is the",
                "issue's bar (PyTorch 2 × 256, 35 minutes: test 1.134)."]
    if not default:
        out += ["", "Served as `" + model.stem + "`: `/model?model=" + model.stem + "` is its page, with the gate-saturation",
                "plot; its cell pages draw contexts from the default model's reference text.", ""]
        card = model.parent / (model.stem + ".md")
        card.write_text("\n".join(out) + "\n")
        print(f"wrote {card} and {svg}")
        return
    out += ["", "## For comparison", "",
            "| model | test loss (nats/char) |", "|---|---:|",
            f"| this model | {train.get('test_loss', float('nan')):.4f} |",
            "| PyTorch 2 × 256, 35 min on this machine, 4.5 epochs (same split) | 1.134 |",
            "| Karpathy et al. 2015, best LSTM 3 × 512 (their split) | 0.84 |",
            "| Karpathy et al. 2015, 20-gram (their split) | 0.889 |", ""]
    if concepts:
        out += ["## Cells that track concepts", "", concepts, ""]
    out += ["## Files", "",
            f"- `{model.name}`: the weights (safetensors, DESIGN §3 names) and metadata.",
            f"- `{model.stem}.reference.txt`: the first 10,000 bytes of the validation split (Linux source, GPL-2.0);",
            "  the text cell pages show contexts from.",
            f"- `{svg.name}`: the curve above.", "",
            "Training: `scripts/train-linux.sh` resumes from the checkpoint in `checkpoints/` (which step it holds, and what",
            "resuming it reproduces: `checkpoints/README.md`)."]
    (model.parent / "README.md").write_text("\n".join(out) + "\n")
    print(f"wrote {model.parent / 'README.md'} and {svg}")


if __name__ == "__main__":
    main()
