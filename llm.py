"""
Fast-dLLM v2 with the relay (METHOD.md 7): load a checkpoint into transformers' own Qwen2 classes,
patch in R (relay.Relay, zero-initialised), and the two forwards both scripts share:
  - train_llm.py's block-diffusion forward over [x_t || x_0] (length 2L),
  - sample_llm.py's block pass against a KV cache.
Both produce, for every position j, the hidden state that predicts token j (the model is
AR-initialised: position j-1 predicts token j, "token shift"), and that shifted state is also
the relay state h fed back at position j on the next pass. At a block's first position j0 the
state comes from the clean previous block (x_0 half in training, the cache-writing pass in
decoding), so training and decoding see the same numbers (tests/test_llm_decode.py checks it).

Names for the hidden states: `hidden` (B, T, C) is the stack's output at each position (what
position j computes); `hs` is it shifted by one, hs[:, j] predicts token j (section 7's token
shift); `h` is the relay state a pass receives, the previous pass's `hs`.

    python llm.py --init-tiny DIR      # a tiny random checkpoint in this layout (tests, CPU runs)
"""
import argparse
import contextlib
import inspect
import json
import os

import torch
import torch.nn as nn

from common import UserError, atomic, atomic_write, run_main
from relay import Relay, relay_embed

MASK_TOKEN = "|<MASK>|"        # id 151665 in Fast-dLLM v2's tokenizer
STOP_TOKEN = "<|im_end|>"      # id 151645
PAD_TOKEN = "<|endoftext|>"    # id 151643
BLOCK_SIZE = 32                # bd_size
SUB_BLOCK = 8                  # a 32-token block is decoded as four 8-token sub-blocks in turn
THRESHOLD = 0.85               # the paper's reveal threshold, in training and in decoding
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "fixtures",
                       "llm_mix.jsonl")   # a few {prompt, response} rows shipped with the repo
RELAY_FILE = "relay.safetensors"
RELAY_EPS = 1e-5               # R's LayerNorm eps unless config.json says (the authors': 1e-6)
QWEN2_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
              "rope_theta", "rms_norm_eps", "tie_word_embeddings", "hidden_act",
              "attention_dropout", "initializer_range", "bos_token_id", "eos_token_id")


# Qwen2 shapes of the real checkpoints (their config.json), for what needs the shape and not the
# weights: parameter counts and memory (bench.py --training-memory)
REAL_SHAPES = {
    "fast-dllm-v2-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                              num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                              rope_theta=1e6, tie_word_embeddings=True),
    "fast-dllm-v2-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                            num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                            rope_theta=1e6, tie_word_embeddings=False),
}


class LLMError(UserError):
    """Bad input for the LLM scripts (a checkpoint or data file): one line naming what is wrong."""


def _cache_kw():
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Model
    params = inspect.signature(Qwen2Model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"   # renamed in transformers 5.x


class RelayLM(nn.Module):
    """A Qwen2ForCausalLM plus the relay R (None for an unpatched model)."""

    def __init__(self, qwen, relay, mask_id, pad_id, stop_id, block_size=BLOCK_SIZE):
        super().__init__()
        self.qwen, self.relay = qwen, relay
        self.mask_id, self.pad_id, self.stop_id, self.block_size = mask_id, pad_id, stop_id, block_size
        self._cache_kw = _cache_kw()

    @property
    def lm_head(self):
        return self.qwen.lm_head

    def logits(self, hs):
        """UnEmb(h) with [MASK] excluded: what decoding (and Alg. 1 line 8's confidences in
        training) choose from; a revealed token is never [MASK]. The training loss keeps [MASK]
        in its softmax instead (train_llm.masked_ce)."""
        return self.exclude_mask(self.qwen.lm_head(hs))

    def exclude_mask(self, logits):
        return logits.index_fill(-1, torch.tensor([self.mask_id], device=logits.device),
                                 float("-inf"))

    def forward(self, x_t, x0, h=None, relay_where=None, stop_grad=False):
        """Training forward over [x_t || x_0], both halves at positions 0..T-1 (METHOD.md 7).
        x_t, x0: (B, T) ids; h: (B, T, C) shifted relay state from the previous forward, added
        (through R) at relay_where (B, T). Returns hs (B, T, C): hs[:, j] predicts token j (from
        x_t position j-1 inside a block, from x_0 position j-1 at a block's first position);
        hs[:, 0] is zero (position 0 is never predicted)."""
        B, T = x_t.shape
        emb_t = self.embed(x_t, h, where=relay_where, stop_grad=stop_grad)
        emb_0 = self.embed(x0)
        pos = torch.arange(T, device=x_t.device)
        mask = training_mask(T, self.block_size, x_t.device)[None, None]
        hidden = self.run(torch.cat([emb_t, emb_0], 1), mask, torch.cat([pos, pos])[None].expand(B, -1))
        return shift_states(hidden[:, :T], hidden[:, T:], self.block_size)

    def run(self, embeds, mask, position_ids, cache=None):
        """The Qwen2 stack on given input embeddings with our own boolean attention mask
        (B, 1, Tq, Tk), True = may attend. Returns the final hidden state after the last
        RMSNorm (B, Tq, C): what lm_head reads, and what the relay carries."""
        kw = {self._cache_kw: cache, "use_cache": cache is not None}
        out = self.qwen.model(inputs_embeds=embeds, attention_mask={"full_attention": mask},
                              position_ids=position_ids, **kw)
        return out.last_hidden_state

    def embed(self, ids, h=None, *, where=None, stop_grad=False):
        """Emb(z) + R(h) at `where` (the relay step's input, relay.relay_embed)."""
        return relay_embed(self.qwen.model.embed_tokens(ids), self.relay, h, stop_grad=stop_grad,
                           where=where)


# -----------------------------------------------------------------------------
# attention masks

def training_mask(T, block_size, device=None):
    """(2L, 2L) bool for [x_t || x_0] (METHOD.md 7): x_t block b sees x_t block b and x_0 blocks < b;
    x_0 block b sees x_0 blocks <= b; x_0 never sees x_t."""
    blk = torch.arange(T, device=device) // block_size
    same = blk[:, None] == blk[None, :]
    before = blk[:, None] > blk[None, :]
    upto = blk[:, None] >= blk[None, :]
    top = torch.cat([same, before], dim=1)                                  # x_t queries
    bottom = torch.cat([torch.zeros_like(same), upto], dim=1)               # x_0 queries
    return torch.cat([top, bottom], dim=0)


def shift_states(h_t, h_0_prev, block_size):
    """hs[:, j] = h_t[:, j-1] inside a block; at block starts j0 > 0, h_0_prev[:, j0-1] (the
    clean previous block). h_0_prev may be the full clean hidden (B, T, C) or, in decoding,
    just (B, 1, C) for the single block start."""
    B, T, C = h_t.shape
    hs = torch.cat([h_t.new_zeros(B, 1, C), h_t[:, :-1]], dim=1)
    if h_0_prev.shape[1] == T:
        starts = torch.arange(block_size, T, block_size, device=h_t.device)
        hs = hs.clone()
        hs[:, starts] = h_0_prev[:, starts - 1]
    else:
        hs = torch.cat([h_0_prev, h_t[:, :-1]], dim=1)
    return hs


# -----------------------------------------------------------------------------
# loading, patching, saving

def load_config(path):
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise LLMError(f"{path}: no such checkpoint directory (hub ids need network access; "
                       f"pass a local directory)")
    if not os.path.exists(cfg_path):
        raise LLMError(f"{path}: no config.json, not a Fast-dLLM v2 / Qwen2 checkpoint")
    with open(cfg_path) as f:
        raw = json.load(f)
    if raw.get("model_type") not in ("Fast_dLLM_Qwen", "qwen2"):
        raise LLMError(f"{cfg_path}: model_type {raw.get('model_type')!r} is not a Fast-dLLM v2 "
                       f"(Fast_dLLM_Qwen) or Qwen2 checkpoint")
    missing = [k for k in QWEN2_KEYS[:6] if k not in raw]
    if missing:
        raise LLMError(f"{cfg_path}: missing {', '.join(missing)}")
    return raw


def resolve_model_path(name):
    """A local directory as is; otherwise a hub id, downloaded (needs network access)."""
    if os.path.isdir(name):
        return name
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name)
    except Exception as e:
        raise LLMError(f"{name}: not a local directory and the hub download failed "
                       f"({type(e).__name__}); pass a local checkpoint directory") from None


def load_relay_lm(path, dtype=torch.float32, patch=False, device="cpu", relay_eps=RELAY_EPS,
                  relay_gain=0.0):
    """Load a Fast-dLLM v2 checkpoint (or one this repo saved) into Qwen2ForCausalLM by weight
    name. The relay comes from relay.safetensors when present (its LayerNorm eps from
    config.json's relay_eps); patch=True adds one with eps relay_eps when absent, zero-initialised
    (the patched model then equals the base model exactly) unless relay_gain sets its initial
    gain (a departure for models trained from scratch, as the Sudoku half's; bias stays 0)."""
    with _quiet_transformers():   # it warns that Fast_dLLM_Qwen is not qwen2: we know
        return _load_relay_lm(path, dtype, patch, device, relay_eps, relay_gain)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' warnings off for the duration, then back to what they were."""
    from transformers.utils import logging as hf_logging
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _load_relay_lm(path, dtype, patch, device, relay_eps, relay_gain):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    path = resolve_model_path(path)
    raw = load_config(path)
    cfg = Qwen2Config(**{k: raw[k] for k in QWEN2_KEYS if k in raw})
    cfg._attn_implementation = "sdpa"    # our boolean masks need the SDPA path
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise LLMError(f"{path}: no usable tokenizer ({type(e).__name__})") from None
    ids = {}
    for name, token in (("mask", MASK_TOKEN), ("stop", STOP_TOKEN), ("pad", PAD_TOKEN)):
        i = tok.convert_tokens_to_ids(token)
        if i is None or i == tok.unk_token_id:
            raise LLMError(f"{path}: the tokenizer has no {token} token (the {name} token)")
        ids[name] = i
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors") and f != RELAY_FILE)
    if not files:
        raise LLMError(f"{path}: no *.safetensors weight files")
    with torch.device("meta"):
        qwen = Qwen2ForCausalLM(cfg)
    state = {}
    for f in files:
        state.update(load_file(os.path.join(path, f), device=str(device)))
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    expected = set(qwen.state_dict()) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise LLMError(f"{path}: weights do not match Qwen2 (missing {sorted(missing)[:3]}, "
                       f"unexpected {sorted(unexpected)[:3]})")
    qwen.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        qwen.tie_weights()
    qwen.model.rotary_emb = type(qwen.model.rotary_emb)(cfg)   # its buffers, off the meta device
    relay = None
    rpath = os.path.join(path, RELAY_FILE)
    if os.path.exists(rpath) or patch:
        eps = raw.get("relay_eps", RELAY_EPS) if os.path.exists(rpath) else relay_eps
        relay = Relay(cfg.hidden_size, eps=eps, zero_init=True)
        if os.path.exists(rpath):
            relay.load_state_dict(load_file(rpath))
        elif relay_gain:
            nn.init.constant_(relay.norm.weight, relay_gain)
    lm = RelayLM(qwen, relay, ids["mask"], ids["pad"], ids["stop"],
                 raw.get("bd_size", BLOCK_SIZE)).to(device)
    return lm.to(dtype), tok, raw


def save_relay_lm(lm, tok, raw_config, out_dir, state=None):
    """The Fast-dLLM v2 layout (config.json, model.safetensors, tokenizer) plus relay.safetensors.
    state: the RelayLM's full state dict when lm's own is sharded (FSDP2, gathered on rank 0 by
    train_llm.py); default lm.state_dict(). Each file goes to a temporary name first, then is
    renamed."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    state = lm.state_dict() if state is None else state
    def part(prefix):
        return {k[len(prefix):]: v.detach().contiguous().cpu() for k, v in state.items()
                if k.startswith(prefix)}
    sd = part("qwen.")
    if lm.qwen.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    atomic(lambda p: save_file(sd, p), os.path.join(out_dir, "model.safetensors"))
    if lm.relay is not None:
        rsd = part("relay.")
        atomic(lambda p: save_file(rsd, p), os.path.join(out_dir, RELAY_FILE))
    cfg = dict(raw_config, relay=lm.relay is not None)
    if lm.relay is not None:
        cfg["relay_eps"] = lm.relay.norm.eps
    atomic_write(os.path.join(out_dir, "config.json"), json.dumps(cfg, indent=1))
    tok.save_pretrained(out_dir)


# -----------------------------------------------------------------------------
# a tiny random checkpoint in the Fast-dLLM v2 layout, for tests and CPU runs

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def user_turn(tok, message):
    """The chat template around one user message, ending where the assistant's answer starts
    (what training puts before every response; decoding and evaluation build prompts with it)."""
    return tok.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                   add_generation_prompt=True)


def init_tiny(out_dir, corpus, seed=0, vocab_size=384, hidden_size=64, layers=2, heads=4,
              rope_theta=1e6):
    """A byte-level BPE tokenizer trained on `corpus` (strings) with Fast-dLLM v2's special
    tokens (vocab_size 260: the 256 bytes and the specials, no merges: one token per
    character), and a random Qwen2 (default 2 layers, width 64) with Fast-dLLM v2's config keys
    (model_type Fast_dLLM_Qwen, bd_size 32). rope_theta: Qwen2.5's 1e6 by default; a narrow
    toy model resolves nearby positions better with 1e4 (Qwen2's own default)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    specials = [PAD_TOKEN, "<|im_start|>", STOP_TOKEN, MASK_TOKEN]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=PAD_TOKEN, eos_token=STOP_TOKEN,
                                  additional_special_tokens=specials[1:])
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    raw = dict(model_type="Fast_dLLM_Qwen", architectures=["Fast_dLLM_QwenForCausalLM"],
               vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
               num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=max(1, heads // 2), max_position_embeddings=2048,
               rope_theta=rope_theta, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
               bd_size=BLOCK_SIZE, bos_token_id=tok.convert_tokens_to_ids(PAD_TOKEN),
               eos_token_id=tok.convert_tokens_to_ids(STOP_TOKEN))
    cfg = Qwen2Config(**{k: raw[k] for k in QWEN2_KEYS if k in raw})
    qwen = Qwen2ForCausalLM(cfg)
    lm = RelayLM(qwen, None, *(tok.convert_tokens_to_ids(t) for t in (MASK_TOKEN, PAD_TOKEN, STOP_TOKEN)))
    save_relay_lm(lm, tok, raw, out_dir)
    return out_dir


def fixture_corpus(path=FIXTURE, repeat=20):
    """A jsonl file's prompts and responses (default: the fixture's) as tokenizer-training text."""
    if not os.path.exists(path):
        raise LLMError(f"{path}: no such file")
    rows = []
    for n, line in enumerate(open(path), 1):
        if line.strip():
            try:
                r = json.loads(line)
                rows.append(r["prompt"] + " " + r["response"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise LLMError(f"{path}:{n}: not a JSON object with prompt and response") from None
    return rows * repeat


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--init-tiny", required=True, metavar="DIR",
                   help="write a tiny random Fast-dLLM v2-layout checkpoint (tokenizer trained on "
                        "the repository's fixture) to DIR")
    p.add_argument("--seed", type=int, default=1, help="torch seed of the random weights")
    p.add_argument("--corpus", default=FIXTURE,
                   help="jsonl of {prompt, response} the tokenizer is trained on (default: fixture)")
    p.add_argument("--vocab-size", type=int, default=384,
                   help="tokenizer size (260: one token per character, no merges)")
    p.add_argument("--hidden-size", type=int, default=64, help="model width")
    p.add_argument("--layers", type=int, default=2, help="transformer layers")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--rope-theta", type=float, default=1e6,
                   help="RoPE base (Fast-dLLM v2's 1e6; 1e4 suits a toy model's short contexts)")
    args = p.parse_args(argv)
    init_tiny(args.init_tiny, fixture_corpus(args.corpus, repeat=1 if args.corpus != FIXTURE else 20),
              seed=args.seed, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
              layers=args.layers, heads=args.heads, rope_theta=args.rope_theta)
    print(f"wrote a tiny random Fast-dLLM v2-layout checkpoint to {args.init_tiny}")
    return args.init_tiny


if __name__ == "__main__":
    run_main(main)
