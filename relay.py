"""
The relay: the learned map R, the relay step's input Emb(z) + R(h), and the unmasking rules.
One implementation, imported by the Sudoku trainer and sampler and by the LLM trainer and decoder.

Paper (arXiv 2605.22967), Algorithm 1 line 6:   h <- f_theta( Emb_theta(z) + R_theta(h) )
                                      line 7:   logits <- UnEmb_theta(h)
"""
import torch
import torch.nn as nn


class Relay(nn.Module):
    """R_theta: a LayerNorm over the carried last-layer state h (METHOD.md 2).
    zero_init=True zeroes weight and bias, so R(h) = 0 and a patched pretrained model starts
    exactly equal to the base model (the Fast-dLLM v2 recipe, METHOD.md 7). weight_init sets the
    LayerNorm's initial gain (PyTorch's default, used by the authors, is 1)."""

    def __init__(self, n_embd, eps=1e-5, zero_init=False, weight_init=1.0):
        super().__init__()
        self.norm = nn.LayerNorm(n_embd, eps=eps)
        nn.init.constant_(self.norm.weight, weight_init)
        nn.init.zeros_(self.norm.bias)
        if zero_init:
            self.zero_()

    @torch.no_grad()
    def zero_(self):
        """Weight and bias to zero: R(h) = 0 for every h, so the model computes what it did
        without the relay (patching a pretrained model, or fine-tuning from one without R)."""
        self.norm.weight.zero_()
        self.norm.bias.zero_()
        return self

    def forward(self, h):
        return self.norm(h)


def relay_embed(emb, relay, h, *, stop_grad=False, where=None):
    """The input of the relay step: Emb(z) + R(h).
    emb: (B, T, C) token embeddings Emb(z); h: (B, T, C) state from the previous pass or None
    (the first pass of a decode that carries nothing adds nothing, not R(0)).
    stop_grad: the `relay_sg` ablation, h.detach() before R, so no credit flows to the step
    that produced h. where: optional (B, T) bool, add R(h) only there (the LLM adds it at
    [MASK] positions only, METHOD.md 7)."""
    if relay is None or h is None:
        return emb
    r = relay(h.detach() if stop_grad else h)
    if where is not None:
        r = r * where.unsqueeze(-1).to(r.dtype)
    return emb + r.to(emb.dtype)


@torch.no_grad()
def unmask_budget(logits, masked, tau):
    """METHOD.md 4, the Sudoku rule shared by the training rollout (Alg. 1 line 8) and the sampler.
    Per board, among still-masked cells sorted by uncertainty u = 1 - p_max, reveal the most
    confident cells while the running sum of u stays below tau (a cumulative budget, not a
    per-cell cutoff), and always at least the single most confident one.
    logits: (B, T, V) over the predictable tokens; masked: (B, T) bool; tau: float or (B,) tensor.
    Returns reveal: (B, T) bool, a subset of `masked`, non-empty on every board with a masked cell."""
    u = 1.0 - logits.float().softmax(-1).amax(-1)                    # (B, T) uncertainty
    u = u.masked_fill(~masked, float("inf"))                         # clues/revealed never chosen
    u_sorted, order = u.sort(dim=-1)                                 # most confident first
    tau = torch.as_tensor(tau, dtype=u.dtype, device=u.device).reshape(-1, 1)
    take = u_sorted.cumsum(-1) < tau                                 # budget: cumsum(u) < tau
    take[:, 0] = True                                                # at least one cell ...
    take &= u_sorted.isfinite()                                      # ... but only masked ones
    reveal = torch.zeros_like(masked)
    return reveal.scatter(-1, order, take)


@torch.no_grad()
def unmask_threshold(confidence, masked, threshold, group=None, sub_group=None):
    """METHOD.md 7, the LLM rule shared by the relay rollout in training (Alg. 1 line 8) and the
    block decoder: reveal masked tokens whose confidence (max softmax prob of the argmax token)
    exceeds `threshold`, plus the single most confident masked token of every group of `group`
    consecutive positions that still has one (the 32-token block; group=None: the whole row).
    sub_group: only the earliest `sub_group`-token part of each group that still has a masked
    token may reveal, threshold and best alike: decoding's order (8-token sub-blocks in turn),
    and the authors' `decode_aligned` training rule. sub_group=None: anywhere in the group
    (their `bd` rule, the one behind the paper's Table 2).
    confidence, masked: (B, T). Returns reveal: (B, T) bool, a subset of `masked`."""
    B, T = masked.shape
    g = group or T
    assert T % g == 0, f"length {T} is not a multiple of the group size {g}"
    if sub_group:
        assert g % sub_group == 0, f"group {g} is not a multiple of the sub-group {sub_group}"
        open_sub = masked.view(B, T // g, g // sub_group, sub_group).any(-1)    # (B, groups, subs)
        earliest = open_sub.float().argmax(-1, keepdim=True)                    # first with a mask
        active = torch.zeros_like(open_sub).scatter(-1, earliest, True)
        masked = masked & active.repeat_interleave(sub_group, dim=-1).view(B, T)
    conf = confidence.float().masked_fill(~masked, -1.0).view(B, T // g, g)
    best = torch.zeros_like(conf, dtype=torch.bool).scatter(-1, conf.argmax(-1, keepdim=True), True)
    reveal = (conf > threshold) | best
    return reveal.view(B, T) & masked
