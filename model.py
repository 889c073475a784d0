"""
The Sudoku backbone of METHOD.md 2: a bidirectional pre-norm transformer over the 81 cells with
rotary position embeddings, tied or untied embeddings, and the relay R (relay.py).
forward(z, h) returns the digit logits and the new last-layer state h (before the final norm),
which the next pass feeds back through R: h_{k+1} = f(Emb(z_k) + R(h_k)), logits = UnEmb(h_{k+1}).
"""
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from relay import Relay, relay_embed
from data.sudoku import N_CELLS

N_DIGITS = 9          # token ids 0..8 are the digits 1..9
MASK_ID = N_DIGITS    # id 9 is [MASK]; it is embedded but never predicted
VOCAB_SIZE = N_DIGITS + 1


@dataclass
class ModelConfig:
    n_layer: int = 4
    n_head: int = 6
    n_embd: int = 384
    ffn: int = 1536
    dropout: float = 0.1
    tied: bool = True      # UnEmb reuses the digit rows of the embedding matrix
    relay: bool = True     # has R; False for the mlm and rollout baselines
    pos: str = "rope"      # "rope" (paper) or "rcb": learned row + column + box embeddings
    relay_gain: float = 1.0  # initial LayerNorm gain of R; 1 = PyTorch default (authors)

    def to_dict(self):
        return asdict(self)


# The paper's "xtiny" model (METHOD.md 2, ~7M parameters) and the CPU default (~0.8M parameters).
# relay_gain: R's LayerNorm gain at init. The authors keep PyTorch's 1, so R(h) starts with norm
# sqrt(C), ~10x the token embedding's (init std C^-1/2); in short CPU runs that drowned the input
# and the relay model did not learn in 300 steps (loss stuck at 2 ln 9) while rollout did. The
# small sizes start R at the embedding's scale instead (METHOD.md 9, Departures).
SIZES = {
    "paper": dict(n_layer=4, n_head=6, n_embd=384, ffn=1536, dropout=0.1, pos="rope", relay_gain=1.0),
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, ffn=512, dropout=0.0, pos="rcb",
                relay_gain=128 ** -0.5),
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, ffn=64, dropout=0.0, pos="rcb",
                 relay_gain=32 ** -0.5),  # tests
}


def rotary_tables(T, head_dim, base=10000.0):
    """cos, sin of shape (T, head_dim/2) for rotary position embeddings over cell index 0..T-1."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(T).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """x: (B, nh, T, hd) -> rotated pairs (x1, x2) by the cell's angle."""
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class SelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x, rope):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        # bidirectional: every cell attends to every cell, no causal mask
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, cfg.ffn), nn.ReLU(),
                                 nn.Linear(cfg.ffn, cfg.n_embd), nn.Dropout(cfg.dropout))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope):
        x = x + self.drop(self.attn(self.ln_1(x), rope))   # pre-norm
        return x + self.mlp(self.ln_2(x))


class SudokuTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.pos not in ("rope", "rcb"):
            raise ValueError(f"pos must be 'rope' or 'rcb', got {cfg.pos!r}")
        self.cfg = cfg
        C = cfg.n_embd
        self.wte = nn.Embedding(VOCAB_SIZE, C)
        if cfg.pos == "rcb":  # row, column and 3x3-box embeddings: the board's geometry, given
            self.wre, self.wce, self.wbe = (nn.Embedding(9, C) for _ in range(3))
            cells = torch.arange(N_CELLS)
            self.register_buffer("cell_rcb", torch.stack(
                [cells // 9, cells % 9, (cells // 27) * 3 + (cells % 9) // 3]), persistent=False)
        else:
            cos, sin = rotary_tables(N_CELLS, C // cfg.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = None if cfg.tied else nn.Linear(C, N_DIGITS, bias=False)
        self.relay = Relay(C, weight_init=cfg.relay_gain) if cfg.relay else None  # R: LayerNorm
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=m.weight.shape[1] ** -0.5)  # N(0, d^-1/2), METHOD.md 2
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, z, h=None, stop_grad=False):
        """z: (B, 81) token ids; h: (B, 81, C) relay state from the previous pass, or None.
        Returns logits (B, 81, 9) over the digits and the new state h (B, 81, C)."""
        x = self.wte(z)                                          # Emb(z)   (B, T, C)
        if self.cfg.pos == "rcb":
            r, c, b = self.cell_rcb
            x = x + self.wre(r) + self.wce(c) + self.wbe(b)
            rope = None
        else:
            rope = (self.rope_cos, self.rope_sin)
        x = relay_embed(x, self.relay, h, stop_grad=stop_grad)   # + R(h)    Alg. 1 line 6
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope)
        h = x                                                    # last block, before ln_f
        x = self.ln_f(x)
        if self.lm_head is None:                                 # UnEmb tied to Emb
            logits = x @ self.wte.weight[:N_DIGITS].t()          # [MASK] row never predicted
        else:
            logits = self.lm_head(x)
        return logits, h

    def flops_per_pass(self, T=N_CELLS):
        """Forward FLOPs per board (2 per multiply-add): matmuls of the blocks and the head, plus
        the attention scores and weighted sum. Backward counts 2x this (nanoGPT/PaLM's 6N rule)."""
        C, L, F_ = self.cfg.n_embd, self.cfg.n_layer, self.cfg.ffn
        per_token = L * (2 * 4 * C * C + 2 * 2 * C * F_ + 2 * 2 * T * C) + 2 * C * N_DIGITS
        return per_token * T


def build_model(cfg_dict):
    return SudokuTransformer(ModelConfig(**cfg_dict))


def encode(boards):
    """Digit boards (N, 81) with 0 for a blank -> token ids (N, 81) long: digit-1, [MASK] at blanks."""
    b = torch.as_tensor(boards, dtype=torch.long)
    return torch.where(b == 0, MASK_ID, b - 1)


def decode_ids(z):
    """Token ids (N, 81) -> digit boards (N, 81) uint8 numpy with 0 where [MASK] remains."""
    z = z.cpu()
    return torch.where(z == MASK_ID, 0, z + 1).to(torch.uint8).numpy()
