"""The method itself: the relay step, stop-gradient, the unmasking rule, the sampler, the metrics."""

import numpy as np
import pytest
import torch

from model import N_DIGITS, ModelConfig, SudokuTransformer, SIZES, encode
from relay import unmask_budget, unmask_threshold
from sample import solve_boards, score

SOLUTION = np.array([int(c) for c in
                     "534678912672195348198342567859761423426853791713924856961537284287419635345286179"],
                    dtype=np.uint8)


def tiny(relay=True, pos="rcb", tied=True, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = ModelConfig(**dict(SIZES["tiny"], relay=relay, pos=pos, tied=tied))
    return SudokuTransformer(cfg).to(dtype).eval()


def random_boards(n, seed=0, blanks=50):
    rng = np.random.default_rng(seed)
    q = np.tile(SOLUTION, (n, 1))
    for b in range(n):
        q[b, rng.choice(81, size=blanks, replace=False)] = 0
    return q


# -----------------------------------------------------------------------------
# the relay step and stop-gradient

@pytest.mark.parametrize("pos", ["rope", "rcb"])
def test_zero_relay_equals_plain_model(pos):
    """R's output forced to zero (weight = bias = 0): the relay model is the plain model, for any h."""
    relay_model, plain = tiny(relay=True, pos=pos), tiny(relay=False, pos=pos)
    sd = {k: v for k, v in relay_model.state_dict().items() if not k.startswith("relay.")}
    plain.load_state_dict(sd)
    torch.nn.init.zeros_(relay_model.relay.norm.weight)
    torch.nn.init.zeros_(relay_model.relay.norm.bias)
    z = encode(random_boards(3))
    h = torch.randn(3, 81, relay_model.cfg.n_embd) * 5
    got, _ = relay_model(z, h)
    want, _ = plain(z)
    assert torch.equal(got, want)
    # and a non-zero R does change the output, so the comparison above can fail
    torch.nn.init.ones_(relay_model.relay.norm.weight)
    assert not torch.allclose(relay_model(z, h)[0], want)


def _two_step_grads(stop_grad, detach_between):
    m = tiny(relay=True, seed=1)
    m.relay.norm.bias.data.normal_()   # a generic R
    z1 = encode(random_boards(2, seed=1))
    z2 = encode(random_boards(2, seed=2))
    x0 = encode(np.tile(SOLUTION, (2, 1)))
    _, h1 = m(z1, torch.zeros(2, 81, m.cfg.n_embd))
    if detach_between:
        h1 = h1.detach()
    logits2, _ = m(z2, h1, stop_grad=stop_grad)
    loss2 = torch.nn.functional.cross_entropy(logits2.transpose(1, 2), x0)  # step 2's loss only
    m.zero_grad()
    loss2.backward()
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_stop_gradient_blocks_credit_through_h():
    """relay_sg: step 2's loss sends nothing back through h into step 1, so its parameter
    gradients equal those with h cut by hand; full relay (BPTT) gets extra gradient from step 1."""
    sg = _two_step_grads(stop_grad=True, detach_between=False)
    cut = _two_step_grads(stop_grad=False, detach_between=True)
    bptt = _two_step_grads(stop_grad=False, detach_between=False)
    assert sg.keys() == cut.keys()
    for n in sg:
        assert torch.allclose(sg[n], cut[n], atol=1e-7), n
    # with BPTT, step 1's computation (e.g. the first block's weights) gets credit from step 2
    diff = max((bptt[n] - cut[n]).abs().max().item() for n in cut)
    assert diff > 1e-5
    # the token embedding of step 1's input is touched only through h
    w = "wte.weight"
    assert not torch.allclose(bptt[w], cut[w])


# -----------------------------------------------------------------------------
# the unmasking rule (METHOD.md 4)

def logits_with_pmax(pmax):
    """(1, T, 9) logits whose softmax max equals the given values: a = ln(8p / (1 - p))."""
    p = torch.tensor(pmax, dtype=torch.float64)
    out = torch.zeros(1, len(pmax), N_DIGITS, dtype=torch.float64)
    out[0, :, 3] = torch.log(8 * p / (1 - p))
    return out


def test_unmask_budget_is_cumulative():
    # uncertainties u = 0.01, 0.02, 0.05, 0.10, 0.50 in shuffled order
    u = [0.10, 0.01, 0.50, 0.05, 0.02]
    logits = logits_with_pmax([1 - x for x in u])
    masked = torch.ones(1, 5, dtype=torch.bool)
    # cumsum in confidence order: 0.01, 0.03, 0.08, 0.18, 0.68 -> tau 0.1 reveals three cells,
    # although a per-cell cutoff at 0.1 would also take the 0.10 cell
    r = unmask_budget(logits, masked, 0.1)[0].tolist()
    assert r == [False, True, False, True, True]
    assert unmask_budget(logits, masked, 0.2)[0].sum() == 4
    assert unmask_budget(logits, masked, 1.0)[0].all()


def test_unmask_budget_at_least_one_and_never_clues():
    logits = logits_with_pmax([0.99, 0.5, 0.4, 0.3])
    masked = torch.tensor([[False, True, True, True]])   # cell 0 is a clue, the most confident
    r = unmask_budget(logits, masked, 0.0)[0].tolist()   # nothing fits the budget: one cell anyway
    assert r == [False, True, False, False]
    r = unmask_budget(logits, masked, 5.0)[0].tolist()
    assert r == [False, True, True, True]                 # never the clue
    none = unmask_budget(logits, torch.zeros(1, 4, dtype=torch.bool), 0.5)
    assert not none.any()                                 # a full board reveals nothing


def test_unmask_budget_per_board_tau():
    logits = logits_with_pmax([0.9, 0.9, 0.9]).repeat(2, 1, 1)
    masked = torch.ones(2, 3, dtype=torch.bool)
    r = unmask_budget(logits, masked, torch.tensor([0.05, 0.25]))
    assert r.sum(1).tolist() == [1, 2]


def test_unmask_threshold_groups():
    conf = torch.tensor([[0.9, 0.2, 0.3, 0.1, 0.5, 0.6, 0.95, 0.99]])
    masked = torch.tensor([[True, True, True, True, True, True, True, False]])
    r = unmask_threshold(conf, masked, 0.85, group=4)[0].tolist()
    # group 1: 0.9 > 0.85; group 2: 0.95 > 0.85 (0.99 is not masked)
    assert r == [True, False, False, False, False, False, True, False]
    r = unmask_threshold(conf * 0.5, masked, 0.85, group=4)[0].tolist()
    # nothing over the threshold: the most confident masked token of each group
    assert r == [True, False, False, False, False, False, True, False]
    r = unmask_threshold(conf * 0.5, masked, 0.85, group=None)[0].tolist()
    assert sum(r) == 1 and r[6]



def test_unmask_threshold_decode_aligned_reveals_only_the_earliest_open_sub_block():
    T, F = True, False
    # two groups of 8, sub-groups of 4. Group 1: its first sub-group is done (nothing masked),
    # so the second may reveal, above the threshold: 5 and 7. Group 2: its first sub-group still
    # has masks, none over 0.85, so only its best (9, 0.3) opens; the 0.99s after it wait
    conf = torch.tensor([[0.99, 0.99, 0.99, 0.99, 0.5, 0.9, 0.2, 0.95,
                          0.1, 0.3, 0.99, 0.2, 0.99, 0.99, 0.99, 0.99]])
    masked = torch.tensor([[F, F, F, F, T, T, T, T, T, T, F, T, T, T, T, T]])
    r = unmask_threshold(conf, masked, 0.85, group=8, sub_group=4)[0]
    assert r.nonzero().flatten().tolist() == [5, 7, 9]
    # the `bd` rule on the same numbers opens anything over the threshold in the group
    r = unmask_threshold(conf, masked, 0.85, group=8)[0]
    assert r.nonzero().flatten().tolist() == [5, 7, 12, 13, 14, 15]
    # the best of the open sub-group is revealed even when a later one holds higher numbers
    conf2 = torch.tensor([[0.2, 0.4, 0.3, 0.1, 0.8, 0.8, 0.8, 0.8]])
    r = unmask_threshold(conf2, torch.ones(1, 8, dtype=torch.bool), 0.85, group=8, sub_group=4)[0]
    assert r.nonzero().flatten().tolist() == [1]

# -----------------------------------------------------------------------------
# the sampler

def sharp_model(seed):
    """A random tiny relay model with large weights, so its predictions are confident and
    several cells are revealed per pass (more varied NFE than a near-uniform fresh model)."""
    m = tiny(relay=True, seed=seed, dtype=torch.float64)
    with torch.no_grad():
        m.wte.weight.mul_(6)
        m.relay.norm.bias.normal_(0, 0.5)
    return m


@pytest.mark.parametrize("tau", [0.05, 0.6])
def test_batched_decoding_equals_one_at_a_time(tau):
    m = sharp_model(3)
    puzzles = random_boards(12, seed=5, blanks=55)
    boards, nfe, _ = solve_boards(m, puzzles, tau, batch_size=5)
    assert len(set(nfe.tolist())) > 1          # the batch really mixes different lengths
    for i in range(len(puzzles)):
        b1, n1, _ = solve_boards(m, puzzles[i:i + 1], tau, batch_size=1)
        assert n1[0] == nfe[i]
        assert np.array_equal(b1[0], boards[i])


def test_no_relay_ablation_feeds_zero_state_every_pass():
    m = sharp_model(4)
    with torch.no_grad():
        m.relay.norm.weight.normal_(0, 3.0)   # a relay that moves the predictions
    puzzles = random_boards(8, seed=6, blanks=55)
    with_h = solve_boards(m, puzzles, 0.3)
    without = solve_boards(m, puzzles, 0.3, use_relay=False)
    forward = m.forward
    m.forward = lambda z, h: forward(z, torch.zeros_like(h))   # what the ablation must equal
    zeroed = solve_boards(m, puzzles, 0.3)
    assert (without[0] == zeroed[0]).all() and (without[1] == zeroed[1]).all()
    assert (with_h[0] != without[0]).any() or (with_h[1] != without[1]).any()   # h did matter


def test_decoding_keeps_clues_and_fills_every_cell():
    m = sharp_model(4)
    puzzles = random_boards(6, seed=6, blanks=60)
    boards, nfe, traj = solve_boards(m, puzzles, 0.0, record=True)
    clue = puzzles > 0
    assert np.array_equal(boards[clue], puzzles[clue])
    assert (boards > 0).all()
    # tau = 0 reveals exactly one cell per pass: 60 blanks need 60 passes (under the 64 cap)
    assert (nfe == 60).all()
    assert all(len(t) == 61 for t in traj)
    assert all(((t[p] > 0).sum() - (t[p - 1] > 0).sum()) == 1 for t in traj for p in range(1, 61))


def test_pass_cap_then_final_fill():
    m = sharp_model(5)
    puzzles = random_boards(2, seed=7, blanks=70)
    boards, nfe, _ = solve_boards(m, puzzles, 0.0, max_passes=64)
    assert (nfe == 65).all()      # 64 one-cell passes, then one pass fills the 6 left
    assert (boards > 0).all()


# -----------------------------------------------------------------------------
# metrics on hand-made boards

def test_metrics_on_hand_made_boards():
    sol = np.tile(SOLUTION, (4, 1))
    puzzles = random_boards(4, seed=8, blanks=40)
    boards = sol.copy()
    relabel = np.array([0, 2, 3, 4, 5, 6, 7, 8, 9, 1], dtype=np.uint8)
    boards[1] = relabel[SOLUTION]            # a different but legal grid
    boards[2, [0, 1]] = boards[2, [1, 0]]    # swap two cells in row 1: columns now repeat
    boards[3, 40] = 0                        # one cell left blank
    m = score(boards, sol, puzzles, np.array([1, 2, 3, 4]))
    assert m["acc"] == 0.25                  # only board 0 equals its solution
    assert m["legal"] == 0.5                 # boards 0 and 1
    assert m["nfe"] == 2.5
    assert m["n"] == 4
