"""Train the demo SAEs that ship in ``sae_sens/demo_saes/`` (``make demo-saes``).

What it does, deterministically (fixed seeds, deterministic torch algorithms, one CPU thread order):

1. Reads SmolLM2-135M-Instruct (``demo:smollm2``) at ``blocks.15.hook_resid_post`` on the Wikipedia
   summaries (``demo:wiki``): the training split for training, the held-out split for evaluation.
   Documents (shuffled with a fixed seed) are packed the way ``collect`` reads a corpus: their
   tokens concatenated, each document followed by EOS, cut into 127-token chunks, BOS prepended.
   Only positions that ``HookedLM.count_mask`` keeps are used (never position 0, BOS, EOS or pad:
   this model puts a huge-norm activation on the first position of every context).
   Activations are cached (float16) under ``$SAE_SENS_CACHE/demo_acts`` so retraining is cheap.
2. Trains, in plain torch with Adam on inputs scaled to mean squared norm ``d_model``:
   TopK SAEs (k=K) at widths 576, 1152, 2304 and 4608 (1x-8x d_model), with unit-norm decoder rows (gradient component
   along each row removed, rows renormalised after each step), ``b_dec`` initialised at the
   coordinate-wise median, and the AuxK loss of Gao et al. (2024) so latents that stopped firing
   are pulled back to the residual; plus a ReLU SAE with an L1 penalty (weighted by decoder norms)
   at width 1152. The input scaling is folded back into the weights, so the saved SAEs read raw
   activations and keep unit-norm decoder rows.
3. Saves each SAE in the dictionary_learning format (``ae.pt`` in bfloat16 + ``config.json``) with
   ``eval_results.json`` (held-out fraction of variance explained, L0, alive fraction, token counts),
   measured with the saved bfloat16 weights, and prints a quality table. The bar: the widest TopK
   SAE explains >= 85% of held-out variance and has > 90% of its latents alive.

Run: ``python scripts/train_demo_saes.py [--out DIR] [--only NAME ...]``. On 2 shared CPU cores, reading
the activations took ~20 minutes (cached afterwards) and training ~10; reruns are byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sae_sens import assets  # noqa: E402
from sae_sens.corpus import pack_windows  # noqa: E402
from sae_sens.model import HookedLM, load_model  # noqa: E402

SEED = 0
CONTEXT = 128
TRAIN_TOKENS = 300_000
HELDOUT_TOKENS = 40_000
BATCH = 512
K = 32
MASSIVE_NORM = assets.MASSIVE_NORM
MODEL_ID = assets.DEMO_MODEL


@dataclass(frozen=True)
class Recipe:
    name: str
    arch: str  # topk | relu
    width: int
    steps: int
    lr: float
    l1: float = 0.0


# Widths are 1x, 2x, 4x and 8x d_model (576): sae_bench's loaders refuse SAEs narrower than their input.
RECIPES = [  # widest first: it carries the quality bar
    Recipe("smol_4608_topk", "topk", 4608, 1000, 1e-3),
    Recipe("smol_2304_topk", "topk", 2304, 800, 1.2e-3),
    Recipe("smol_1152_topk", "topk", 1152, 800, 1.5e-3),
    Recipe("smol_576_topk", "topk", 576, 800, 2e-3),
    Recipe("smol_1152_relu", "relu", 1152, 800, 1e-3, l1=2.0),
]


# ----- activations -----------------------------------------------------------------------------
@torch.no_grad()
def extract(lm: HookedLM, windows: list[list[int]], n_tokens: int, label: str) -> torch.Tensor:
    out: list[torch.Tensor] = []
    have, t0 = 0, time.time()
    for i in range(0, len(windows), 32):
        ids, mask = lm.pad(windows[i : i + 32])
        h = lm.hidden(ids, mask)[lm.count_mask(ids, mask)]
        out.append(h.to(torch.float16))
        have += h.shape[0]
        print(f"\r  {label}: {have:,} / {n_tokens:,} tokens ({time.time() - t0:.0f} s)", end="", flush=True)
        if have >= n_tokens:
            break
    print()
    acts = torch.cat(out)[:n_tokens]
    if not torch.isfinite(acts).all():
        raise SystemExit("activations overflow float16: store them in float32")
    return acts


def activations(split: str, n_tokens: int, lm_box: list[HookedLM]) -> torch.Tensor:
    model_dir = assets.resolve_model(MODEL_ID)
    key = hashlib.sha256(f"{model_dir.name}|{assets.DEMO_HOOK}|{split}|{n_tokens}|{CONTEXT}|{SEED}".encode())
    path = assets.cache_root() / "demo_acts" / f"{split}-{key.hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path)
    if not lm_box:
        lm_box.append(load_model(MODEL_ID, assets.DEMO_HOOK, device="cpu", dtype="float32"))
    lm = lm_box[0]
    docs = assets.demo_documents(split)
    random.Random(SEED).shuffle(docs)
    acts = extract(lm, pack_windows(lm, docs, n_tokens, CONTEXT), n_tokens, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(acts, tmp)
    tmp.replace(path)
    return acts


def sparse_decode(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Sum of each token's k weighted decoder rows: far cheaper than a dense [n,width] @ [width,d]."""
    return torch.einsum("nk,nkd->nd", vals, W_dec[idx])


# ----- the SAE ---------------------------------------------------------------------------------
class TrainSae(torch.nn.Module):
    def __init__(self, d_in: int, width: int, arch: str, k: int, b_dec: torch.Tensor) -> None:
        super().__init__()
        w = torch.randn(width, d_in)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w)  # [width, d_in], unit rows
        self.W_enc = torch.nn.Parameter(w.T.clone())  # [d_in, width]
        self.b_enc = torch.nn.Parameter(torch.zeros(width))
        self.b_dec = torch.nn.Parameter(b_dec.clone())
        self.arch, self.k = arch, k

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        # (x - b_dec) @ W_enc, written so autograd never forms the [n, d_in] gradient of x - b_dec.
        return F.relu(x @ self.W_enc - self.b_dec @ self.W_enc + self.b_enc)

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top values [n,k], top indices [n,k], all ReLU pre-activations [n,width])."""
        pre = self.pre(x)
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return vals, idx, pre

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return sparse_decode(vals, idx, self.W_dec) + self.b_dec

    @torch.no_grad()
    def constrain_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def drop_parallel_grad(self) -> None:
        if self.W_dec.grad is not None:
            w = self.W_dec.data
            self.W_dec.grad -= (self.W_dec.grad * w).sum(1, keepdim=True) * w


def train(recipe: Recipe, x_train: torch.Tensor, scale: float) -> TrainSae:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    d = x_train.shape[1]
    median = (x_train[:20_000].float() * scale).median(dim=0).values
    sae = TrainSae(d, recipe.width, recipe.arch, K, median)
    opt = torch.optim.Adam(sae.parameters(), lr=recipe.lr, betas=(0.9, 0.999))
    decay_from = int(recipe.steps * 0.8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else max(0.0, (recipe.steps - s) / (recipe.steps - decay_from))
    )
    # A latent is dead once it has not fired for this many tokens (about 1.5 passes over its expected share).
    dead_after = max(50_000, int(1.5 * recipe.width / K * BATCH))
    since_fired = torch.zeros(recipe.width, dtype=torch.long)
    k_aux = d // 2  # as in Gao et al.: half the input dimension
    order = torch.randperm(x_train.shape[0], generator=gen)
    pos, t0 = 0, time.time()
    for step in range(recipe.steps):
        if pos + BATCH > order.numel():
            order, pos = torch.randperm(x_train.shape[0], generator=gen), 0
        x = x_train[order[pos : pos + BATCH]].float() * scale
        pos += BATCH
        if recipe.arch == "topk":
            vals, idx, pre = sae.encode_sparse(x)
            x_hat = sae.decode_sparse(vals, idx)
            err = x - x_hat
            loss = err.pow(2).sum(-1).mean()
            fired = torch.zeros(recipe.width, dtype=torch.bool)
            fired[idx[vals > 0].unique()] = True
            since_fired = torch.where(fired, 0, since_fired + BATCH)
            dead = since_fired > dead_after
            if dead.any():
                # AuxK: the dead latents' top activations must explain the main reconstruction's error.
                cols = dead.nonzero().squeeze(1)
                pre_dead = pre[:, cols]  # only the dead columns: cheap while few latents are dead
                a_vals, a_pos = pre_dead.topk(min(k_aux, cols.numel()), dim=-1, sorted=False)
                e_hat = torch.zeros_like(pre_dead).scatter(-1, a_pos, a_vals) @ sae.W_dec[cols]
                e = err.detach()
                aux = (e - e_hat).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(-1).mean()
                loss = loss + aux * loss.detach() / 32
        else:
            f = sae.pre(x)
            x_hat = f @ sae.W_dec + sae.b_dec
            l1_scale = min(1.0, step / (0.05 * recipe.steps))  # L1 warm-up avoids killing latents early
            loss = (x - x_hat).pow(2).sum(-1).mean() + recipe.l1 * l1_scale * f.sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.drop_parallel_grad()
        opt.step()
        sched.step()
        sae.constrain_decoder()
        if step % 100 == 0 or step == recipe.steps - 1:
            print(f"\r  {recipe.name}: step {step + 1}/{recipe.steps} loss {loss.item():.2f} "
                  f"({time.time() - t0:.0f} s)", end="", flush=True)
    print()
    return sae


# ----- export & evaluation ---------------------------------------------------------------------
def export_state(sae: TrainSae, scale: float) -> dict[str, torch.Tensor]:
    """dictionary_learning ``ae.pt`` tensors for raw (unscaled) activations, in bfloat16.

    With x' = s·x: f = act(W_enc(x' - b') + b_e) = s·act(W_enc(x - b'/s) + b_e/s) since ReLU and TopK
    commute with a positive scale, and x̂ = (W_dec f + b')/s. So latents are divided by s, ``b_enc``
    and ``b_dec`` too, and both weight matrices stay as trained.
    """
    state = {
        "encoder.weight": sae.W_enc.detach().T.contiguous(),
        "encoder.bias": sae.b_enc.detach() / scale,
        "decoder.weight": sae.W_dec.detach().T.contiguous(),
        "bias": sae.b_dec.detach() / scale,
    }
    state = {k: v.to(torch.bfloat16) for k, v in state.items()}
    state["decoder.weight"] = unit_rows_bf16(state["decoder.weight"].T).T.contiguous()
    if sae.arch == "topk":
        state["k"] = torch.tensor(sae.k, dtype=torch.int)
    return state


def unit_rows_bf16(w: torch.Tensor, tol: float = 2e-6) -> torch.Tensor:
    """Nudge bfloat16 rows by single ulps until each one's squared norm is within ``tol`` of 1.

    Rounding unit rows to bfloat16 leaves norms off by ~1e-3, but sae_bench's loaders, reading into
    float32, require decoder norms within 1e-5 of 1. Each round moves, in every row still off, the one
    entry whose one-ulp step (away from zero if the norm is short, towards zero if long) best closes
    the gap; entries of every magnitude make the steps fine enough to converge in a few rounds.
    """
    w = w.to(torch.bfloat16).clone()
    rows = torch.arange(w.shape[0])
    for _ in range(64):
        v = w.double()
        err = v.pow(2).sum(1) - 1
        if err.abs().max() <= tol:
            return w
        bits = w.view(torch.int16)
        step = torch.where(err > 0, -1, 1).to(torch.int16)[:, None]
        moved = (bits + step).view(torch.bfloat16).double()
        after = (err[:, None] + moved.pow(2) - v.pow(2)).abs().masked_fill(v == 0, float("inf"))
        best = after.argmin(1)
        better = after[rows, best] < err.abs()
        bits[rows[better], best[better]] += step[better, 0]
    raise RuntimeError("could not bring bfloat16 decoder rows to unit norm")


@torch.no_grad()
def evaluate(state: dict[str, torch.Tensor], arch: str, x: torch.Tensor) -> dict[str, float]:
    """Held-out FVE, L0 and alive fraction of the saved (bfloat16) weights, computed in float32."""
    W_enc, b_enc = state["encoder.weight"].float().T, state["encoder.bias"].float()
    W_dec, b_dec = state["decoder.weight"].float().T, state["bias"].float()
    xf = x.float()
    typical = xf.norm(dim=-1) < MASSIVE_NORM
    err = torch.empty(x.shape[0])
    l0 = 0.0
    fired = torch.zeros(W_enc.shape[1], dtype=torch.bool)
    for start in range(0, x.shape[0], 4096):
        xc = xf[start : start + 4096]
        f = F.relu((xc - b_dec) @ W_enc + b_enc)
        if arch == "topk":
            vals, idx = f.topk(int(state["k"]), dim=-1)
            f = torch.zeros_like(f).scatter_(-1, idx, vals)
        err[start : start + 4096] = (xc - (f @ W_dec + b_dec)).pow(2).sum(-1)
        l0 += (f > 0).sum().item()
        fired |= (f > 0).any(0)

    def fve(rows: torch.Tensor) -> float:
        return 1 - err[rows].sum().item() / (xf[rows] - xf[rows].mean(0)).pow(2).sum().item()

    return {"fve": fve(torch.ones_like(typical)), "fve_typical_tokens": fve(typical),
            "massive_tokens": int((~typical).sum()), "l0": l0 / x.shape[0],
            "alive_fraction": fired.float().mean().item()}


def save(folder: Path, recipe: Recipe, state: dict[str, torch.Tensor], results: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ae.pt")
    trainer = {
        "trainer_class": "TopKTrainer" if recipe.arch == "topk" else "StandardTrainer",
        "layer": 15, "lm_name": MODEL_ID, "submodule_name": "resid_post_layer_15",
        "activation_dim": int(state["bias"].shape[0]), "dict_size": recipe.width,
        "lr": recipe.lr, "steps": recipe.steps, "batch_size": BATCH, "seed": SEED,
        "trained_by": "scripts/train_demo_saes.py",
    }
    if recipe.arch == "topk":
        trainer["k"] = K
    else:
        trainer["l1_penalty"] = recipe.l1
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}, indent=2) + "\n")
    (folder / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "sae_sens" / "demo_saes")
    parser.add_argument("--only", nargs="*", help="train only these names")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    lm_box: list[HookedLM] = []
    x_train = activations("train", TRAIN_TOKENS, lm_box)
    x_held = activations("heldout", HELDOUT_TOKENS, lm_box)
    lm_box.clear()
    # Scale so that a typical token's norm is sqrt(d_model): the same learning rates fit any activation
    # scale. The median, not the mean: a few tokens carry massive activations (see MASSIVE_NORM).
    scale = float(x_train.shape[1] ** 0.5 / x_train[:50_000].float().norm(dim=-1).median())
    print(f"train {x_train.shape[0]:,} tokens, held out {x_held.shape[0]:,} tokens, input scale {scale:.4g}")
    rows = []
    for recipe in RECIPES:
        if args.only and recipe.name not in args.only:
            continue
        t0 = time.time()
        sae = train(recipe, x_train, scale)
        state = export_state(sae, scale)
        results = {**evaluate(state, recipe.arch, x_held), "heldout_tokens": int(x_held.shape[0]),
                   "train_tokens": int(x_train.shape[0]), "hook": assets.DEMO_HOOK, "model": MODEL_ID,
                   "corpus": "demo:wiki-heldout", "dtype": "bfloat16"}
        save(args.out / recipe.name, recipe, state, results)
        rows.append((recipe.name, results, time.time() - t0))
    print(f"\n{'sae':<16}{'width':>7}{'FVE':>8}{'FVE*':>8}{'L0':>8}{'alive':>8}{'time':>8}")
    for name, r, secs in rows:
        width = next(x.width for x in RECIPES if x.name == name)
        print(f"{name:<16}{width:>7}{r['fve']:>8.3f}{r['fve_typical_tokens']:>8.3f}{r['l0']:>8.1f}"
              f"{r['alive_fraction']:>8.1%}{secs:>7.0f}s")
    print(f"FVE* leaves out the {rows[0][1]['massive_tokens'] if rows else 0} held-out tokens with norm >= "
          f"{MASSIVE_NORM:g}")
    widest = max((x for x in RECIPES if x.arch == "topk"), key=lambda x: x.width)
    for name, r, _ in rows:
        if name == widest.name:
            ok = r["fve"] >= 0.85 and r["alive_fraction"] > 0.9
            print(f"quality bar (widest TopK: FVE >= 0.85, > 90% alive): {'met' if ok else 'NOT met'}")
            if not ok:
                sys.exit(1)


if __name__ == "__main__":
    main()
