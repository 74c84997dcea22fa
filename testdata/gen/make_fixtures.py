#!/usr/bin/env python3
"""Build matsurgery's real-format test fixtures and golden outputs with the real PyTorch code.

What it writes under --out (see testdata/fixtures/README.md):

  fixtures/phi-tiny/     TinyLLaVA_Factory layout, PhiForCausalLM LLM, bf16, sharded (index + 3 shards)
  fixtures/qwen2-tiny/   Qwen2ForCausalLM LLM, tied embeddings (no lm_head tensor), f16, one file
  fixtures/llama-tiny/   LlamaForCausalLM LLM, untied head, f32, one file
                         each with config.json, tokenizer.json, tokenizer_config.json, special_tokens_map.json
  golden/tokenizer/<family>.json     ids / tokens / decoded strings from the `tokenizers` library
  golden/model/<family>.safetensors  the TinyLLaVA forward pass in float64 on CPU
  golden/images/                     a PNG, a JPEG with an EXIF orientation tag, and PIL's preprocessing

Everything is seeded; running it twice gives the same bytes (same library versions).
Needs torch, transformers, tokenizers, safetensors, numpy and (for the images) Pillow.

    PYTHONUNBUFFERED=1 python3 testdata/gen/make_fixtures.py --out /tmp/fx
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import traceback

import numpy as np
import torch
from torch import nn

import safetensors
import tokenizers
import transformers
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SEED = 20261117

# --------------------------------------------------------------------------------------------
# Sizes of the tiny models.
# --------------------------------------------------------------------------------------------

VOCAB = 1024  # model vocabulary (the tokenizers hold at most 1000 entries, like Phi-2's padded 51200)

VISION = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=56,
    patch_size=14,
    num_channels=3,
    layer_norm_eps=1e-6,
    hidden_act="gelu_pytorch_tanh",
)

FAMILIES = {
    "phi": dict(
        dir="phi-tiny",
        llm_name="microsoft/phi-2",
        modeling="modeling_tinyllava_phi",
        arch="PhiForCausalLM",
        hidden=80,  # 4 heads of 20; partial_rotary_factor 0.4 -> rotary dim 8 (Phi-2: 80 -> 32)
        store_dtype=torch.bfloat16,
        store_name="bfloat16",
        shard_bytes=700_000,
        max_length=3072,
    ),
    "qwen2": dict(
        dir="qwen2-tiny",
        llm_name="Qwen/Qwen2-0.5B",
        modeling="modeling_tinyllava_qwen2",
        arch="Qwen2ForCausalLM",
        hidden=64,
        store_dtype=torch.float16,
        store_name="float16",
        shard_bytes=None,
        max_length=2048,
    ),
    "llama": dict(
        dir="llama-tiny",
        llm_name="TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        modeling="modeling_tinyllava_llama",
        arch="LlamaForCausalLM",
        hidden=64,
        store_dtype=torch.float32,
        store_name="float32",
        shard_bytes=None,
        max_length=2048,
    ),
}

PHI_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)
MODEL_PROMPT = PHI_SYSTEM + " USER: <image>\nWhat is in the picture? ASSISTANT:"

# --------------------------------------------------------------------------------------------
# Text: a small English training corpus and a varied golden corpus.
# --------------------------------------------------------------------------------------------

TRAIN_TEXT = """
The quick brown fox jumps over the lazy dog. The dog does not mind; it is sleeping in the sun.
A vision language model looks at an image and answers questions about it in plain English.
The assistant gives helpful, detailed, and polite answers to the user's questions.
A chat between a curious user and an artificial intelligence assistant.
USER: What is in the picture? ASSISTANT: There is a cat sitting on a red chair next to a window.
USER: How many people are there? ASSISTANT: I can see three people standing near the river.
USER: Describe the image in detail. ASSISTANT: The photo shows a busy street with cars, shops and trees.
The weather today is warm and sunny, with a light wind from the west and a few clouds in the afternoon.
It's been a long day, and they're tired, but we'll finish the work before the evening train leaves.
I've read the book twice; you'd like it too, I'm sure. Don't forget to bring it back next week.
Numbers appear in text as well: 1, 2, 3, 10, 42, 100, 2024, 3.14, and 1000000 are all written here.
Mamba layers replace attention layers; the hidden state carries information from one token to the next.
The model was trained for one epoch on a mixture of captions, questions and long conversations.
Children played in the park while their parents talked about the news, the prices and the rain.
She opened the door, looked around the room, and found the old letter under a pile of papers.
Scientists measure the temperature of the ocean every hour and publish the results every month.
The train station is crowded in the morning, quiet at noon, and crowded again in the evening.
He wrote a short program that reads a file, counts the words, and prints the ten most common ones.
Water boils at one hundred degrees, and ice melts at zero degrees, at normal pressure near the sea.
The library opens at nine o'clock and closes at six; on Sundays it stays closed all day long.
Every picture tells a story, and every story needs a reader who is patient and curious.
Please answer the question with a single word or a short phrase, and explain your reasoning briefly.
The small bird built its nest in the tall tree behind the house, far away from the hungry cats.
Mountains, rivers, forests and deserts cover the land; oceans and seas cover most of the planet.
They're going to the market on Saturday to buy apples, bread, cheese, milk, and fresh vegetables.
Learning a new language takes time: you listen, you read, you speak, and you make many mistakes.
The computer has a fast processor, a large memory, and a screen that shows bright, sharp colours.
In the kitchen, the chef cuts onions, boils pasta, and tastes the sauce before serving dinner.
"""

GOLDEN_TEXTS = [
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "Hello world",
    "Hello  world",
    "Hello world!",
    " leading space",
    "trailing space ",
    "   three leading spaces",
    "many        spaces        between",
    "\tTab\tseparated\tvalues",
    "tab\t\tend\t",
    "line1\nline2\r\nline3\rline4",
    "\n\n\nthree newlines first",
    "   \n  mixed whitespace run\n\n  ",
    "It's",
    "it's they're we've I'm you'll he'd",
    "IT'S THEY'RE WE'VE I'M YOU'LL HE'D",
    "Don't stop, won't stop: can't stop!",
    "1234567",
    "0 1 22 333 4444 55555",
    "3.14159265358979",
    "year 2024: 100% done, $5.99 each",
    "000000000000",
    "caf\u00e9",
    "cafe\u0301",
    "na\u00efve r\u00e9sum\u00e9 fa\u00e7ade",
    "\u212bngstr\u00f6m \u00c5ngstr\u00f6m",
    "Stra\u00dfe",
    "\u1100\u1161 decomposed hangul",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u03b3\u03c1\u03ac\u03bc\u03bc\u03b1\u03c4\u03b1",
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u4e2d\u6587\u5b57\u7b26\u6d4b\u8bd5\uff0c\u6807\u70b9\u3002",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5",
    "mixed \u6f22\u5b57 and English",
    "\u0645\u0631\u062d\u0628\u0627 \u0661\u0662\u0663",
    "emoji \U0001F600\U0001F389",
    "\U0001F469\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family",
    "\U0001F3F3\ufe0f\u200d\U0001F308 flag",
    "thumbs \U0001F44D\U0001F3FD up",
    "a\u00a0non-breaking space",
    "zero\u200bwidth space",
    "\ufb01 ligature and \u00bd \u00bc \u2122\u00ae\u00a9",
    "bell\u0007 and escape\u001b",
    "!!!???...;;;",
    "(parentheses) [brackets] {braces} <angles>",
    "email@example.com and https://example.com/path?q=1&r=2#frag",
    "C:\\path\\to\\file.txt",
    "snake_case_identifier camelCaseIdentifier",
    "x = y + z * 2; // comment",
    "#include <stdio.h>\nint main() { return 0; }",
    "def f(x):\n    return x ** 2\n",
    "<|endoftext|>",
    "Hello<|endoftext|>world",
    "Hello <|endoftext|> world",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<s>inside</s>",
    "<unk> token",
    "<mask> at start",
    "end with <mask>",
    "a   <mask>   b",
    "x<|im_sep|>   y",
    "    four spaces",
    "\t\tdouble tab",
    "USER: <image>\nWhat is shown? ASSISTANT: A cat.<|endoftext|>",
    PHI_SYSTEM + " USER: <image>\nWhat is in the picture? ASSISTANT: There is a cat sitting on a red chair.<|endoftext|>",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "A longer paragraph: the model was trained for one epoch on a mixture of captions, questions and long "
    "conversations; it's fast (3.6x) and uses 27.5% less memory at 16K tokens.",
]

# --------------------------------------------------------------------------------------------
# Small helpers.
# --------------------------------------------------------------------------------------------

WRITTEN = []


def note_file(path):
    WRITTEN.append(path)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path, obj, sort_keys=False):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=sort_keys)
        f.write("\n")
    note_file(path)


def rope_theta_of(cfg):
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict):
        if "rope_theta" in rp:
            return float(rp["rope_theta"])
        for v in rp.values():
            if isinstance(v, dict) and "rope_theta" in v:
                return float(v["rope_theta"])
    t = getattr(cfg, "rope_theta", None)
    if t is not None:
        return float(t)
    raise ValueError("cannot find rope_theta in %r" % type(cfg).__name__)


def diff_dict(cfg):
    """The fields of cfg that differ from the class defaults, as save_pretrained writes them."""
    try:
        d = cfg.to_diff_dict()
    except Exception:  # pragma: no cover - older/newer API
        base = type(cfg)().to_dict()
        d = {k: v for k, v in cfg.to_dict().items() if k not in base or base[k] != v}
    for k in list(d):
        if k.startswith("_attn_implementation") or k in ("_commit_hash",):
            d.pop(k)
    return d


def legacy_text_config(d, partial_rotary_factor=None):
    """Rewrite a transformers-5 diff dict into the flat 4.x field names the published TinyLLaVA files use."""
    d = dict(d)
    rp = d.pop("rope_parameters", None)
    if "dtype" in d:
        d["torch_dtype"] = d.pop("dtype")
    if isinstance(rp, dict):
        if rp.get("rope_theta") is not None and float(rp["rope_theta"]) != 10000.0:
            d["rope_theta"] = float(rp["rope_theta"])
        if rp.get("partial_rotary_factor") is not None and float(rp["partial_rotary_factor"]) != 1.0:
            d["partial_rotary_factor"] = float(rp["partial_rotary_factor"])
        if rp.get("rope_type", "default") != "default":
            d["rope_scaling"] = rp
    if partial_rotary_factor is not None:
        d["partial_rotary_factor"] = partial_rotary_factor
    return d


def perturb_(module, gen):
    """Move every parameter away from the class's init so that constant-1 / constant-0 bugs show."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not torch.isfinite(p).all() or float(p.abs().max()) > 20:
                # The class left it uninitialised (torch.empty): start it from a plain normal instead.
                print("  warning: %s looked uninitialised; drawing it N(0, 0.02)" % name)
                p.copy_(0.02 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
            sigma = 0.05 if p.dim() >= 2 else 0.1
            p.add_(sigma * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
            if p.numel() > 1 and float(p.std()) < 1e-3:
                raise ValueError("parameter %s is nearly constant" % name)


def round_params_through_(module, dtype):
    """Round every parameter to the storage dtype (as the checkpoint holds it), keeping the module dtype."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(dtype).to(p.dtype))


def patch_rope_float64(model, cfg, label):
    """HF computes the RoPE angles in float32 even in a float64 model; recompute them in float64."""
    theta = rope_theta_of(cfg)
    patched = 0
    for mod in model.modules():
        if not type(mod).__name__.endswith("RotaryEmbedding"):
            continue
        half = mod.inv_freq.shape[0]
        dim = 2 * half
        inv64 = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        ref = mod.inv_freq.detach().to(torch.float64)
        if not torch.allclose(inv64, ref, rtol=2e-6, atol=0):
            raise ValueError("%s: float64 inv_freq disagrees with the module's (theta %g, dim %d)" % (label, theta, dim))
        scaling = float(getattr(mod, "attention_scaling", 1.0))

        def forward(self, x, position_ids, *args, _inv=inv64, _s=scaling, **kwargs):
            freqs = position_ids[..., None].to(torch.float64) * _inv.to(position_ids.device)
            emb = torch.cat((freqs, freqs), dim=-1)
            return (emb.cos() * _s).to(x.dtype), (emb.sin() * _s).to(x.dtype)

        mod.forward = forward.__get__(mod, type(mod))
        patched += 1
        print("  %s: RoPE theta %g, rotary dim %d, scaling %g (float64 angles)" % (label, theta, dim, scaling))
    if patched == 0:
        raise ValueError("%s: no rotary embedding module found" % label)


def build(cls, cfg):
    try:
        m = cls._from_config(cfg, attn_implementation="sdpa")
    except Exception as e:  # pragma: no cover
        print("  _from_config(attn_implementation='sdpa') failed (%s); using the default" % e)
        m = cls(cfg)
    return m


# --------------------------------------------------------------------------------------------
# Tokenizers.
# --------------------------------------------------------------------------------------------

GPT2_ADDED = [
    AddedToken("    ", special=False, normalized=True),
    AddedToken("\t\t", special=False, normalized=True),
    AddedToken("<mask>", special=True, lstrip=True, normalized=False),
    AddedToken("<|im_sep|>", special=False, rstrip=True, normalized=False),
]

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_lines():
    lines = [l for l in TRAIN_TEXT.strip().split("\n") if l.strip()]
    return lines * 4


def make_phi_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=990,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(train_lines(), trainer=trainer)
    tok.add_tokens([t for t in GPT2_ADDED if not t.special])
    tok.add_special_tokens([t for t in GPT2_ADDED if t.special])
    return tok, dict(bos="<|endoftext|>", eos="<|endoftext|>", unk="<|endoftext|>", pad="<|endoftext|>")


def make_qwen2_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=990,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(train_lines(), trainer=trainer)
    # A non-special added token matched on the NFC-normalised text ("cafe\u0301" must hit it too).
    tok.add_tokens([AddedToken("caf\u00e9", special=False, normalized=True)])
    return tok, dict(bos=None, eos="<|endoftext|>", unk=None, pad="<|endoftext|>")


def make_llama_tokenizer():
    # Train word pieces the SentencePiece way (split on spaces, "\u2581" glued to the next word) ...
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=1000 - 259 + 1,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<unk>"],
        limit_alphabet=90,
    )
    trainer_tok.train_from_iterator(train_lines(), trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    # ... then lay it out as TinyLlama's tokenizer.json: <unk> <s> </s> <0x00>..<0xFF> first, byte fallback,
    # no pre-tokenizer, Prepend+Replace normaliser.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = 3 + b
    for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens(
        [
            AddedToken("<unk>", special=True, normalized=False),
            AddedToken("<s>", special=True, normalized=False),
            AddedToken("</s>", special=True, normalized=False),
        ]
    )
    return tok, dict(bos="<s>", eos="</s>", unk="<unk>", pad="<unk>")


TOKENIZER_MAKERS = {"phi": make_phi_tokenizer, "qwen2": make_qwen2_tokenizer, "llama": make_llama_tokenizer}


def save_tokenizer(family, tok, specials, outdir, max_length):
    path = os.path.join(outdir, "tokenizer.json")
    tok.save(path, pretty=True)
    if family == "llama":
        # TinyLlama's file stores merges as "a b" strings (the pre-0.20 format); keep one fixture that way.
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        ms = j["model"]["merges"]
        if ms and not isinstance(ms[0], str) and all(" " not in a and " " not in b for a, b in ms):
            j["model"]["merges"] = ["%s %s" % (a, b) for a, b in ms]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, indent=2, ensure_ascii=False)
            f.write("\n")
    note_file(path)
    # tokenizer_config.json / special_tokens_map.json as transformers' save_pretrained writes them.
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # pragma: no cover
        from transformers import TokenizersBackend as PreTrainedTokenizerFast
    kw = {k + "_token": v for k, v in specials.items() if v is not None}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(path), model_max_length=max_length, padding_side="right", **kw
    )
    tmp = tempfile.mkdtemp()
    try:
        hf.save_pretrained(tmp)
        for name in sorted(os.listdir(tmp)):
            if name == "tokenizer.json":
                continue
            shutil.copy(os.path.join(tmp, name), os.path.join(outdir, name))
            note_file(os.path.join(outdir, name))
    finally:
        shutil.rmtree(tmp)
    stm = os.path.join(outdir, "special_tokens_map.json")
    if not os.path.exists(stm):
        # transformers 5 no longer writes it; write what 4.x's save_pretrained wrote (the published repos have it).
        write_json(stm, {k + "_token": v for k, v in sorted(specials.items()) if v is not None})
    return Tokenizer.from_file(path)


def tokenizer_golden(family, tok, path):
    rng = np.random.RandomState(SEED + 7)
    enc_cases, dec_cases = [], []
    for text in GOLDEN_TEXTS:
        for add in (False, True):
            e = tok.encode(text, add_special_tokens=add)
            enc_cases.append({"text": text, "add_special_tokens": add, "ids": e.ids, "tokens": e.tokens})
            if add:
                for skip in (False, True):
                    dec_cases.append(
                        {"ids": e.ids, "skip_special_tokens": skip, "text": tok.decode(e.ids, skip_special_tokens=skip)}
                    )
    n = tok.get_vocab_size(with_added_tokens=True)
    for _ in range(24):
        ids = [int(i) for i in rng.randint(0, n, size=int(rng.randint(1, 24)))]
        for skip in (False, True):
            dec_cases.append({"ids": ids, "skip_special_tokens": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
    added = {str(k): v.content for k, v in sorted(tok.get_added_tokens_decoder().items())}
    write_json(
        path,
        {
            "family": family,
            "tokenizers_version": tokenizers.__version__,
            "vocab_size_with_added": n,
            "added_tokens": added,
            "encode": enc_cases,
            "decode": dec_cases,
        },
    )
    print("  %s tokenizer: %d tokens, %d encode cases, %d decode cases" % (family, n, len(enc_cases), len(dec_cases)))


# --------------------------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------------------------


def text_config_for(family, tok, specials):
    from transformers import LlamaConfig, PhiConfig, Qwen2Config

    def tid(s):
        return None if s is None else tok.token_to_id(s)

    if family == "phi":
        eot = tid("<|endoftext|>")
        kw = dict(
            vocab_size=VOCAB,
            hidden_size=80,
            intermediate_size=256,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=4,
            hidden_act="gelu_new",
            layer_norm_eps=1e-5,
            resid_pdrop=0.1,
            embd_pdrop=0.0,
            tie_word_embeddings=False,
            partial_rotary_factor=0.4,
            qk_layernorm=False,
            bos_token_id=eot,
            eos_token_id=eot,
        )
        return PhiConfig(**kw), 10000.0
    if family == "qwen2":
        eot = tid("<|endoftext|>")
        kw = dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            max_position_embeddings=32768,
            bos_token_id=eot,
            eos_token_id=eot,
        )
        try:
            cfg = Qwen2Config(rope_theta=1e6, **kw)
            if rope_theta_of(cfg) != 1e6:
                raise ValueError("rope_theta kwarg ignored")
        except Exception as e:
            print("  Qwen2Config(rope_theta=...) did not take (%s); using rope_parameters" % e)
            cfg = Qwen2Config(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **kw)
        return cfg, 1e6
    if family == "llama":
        kw = dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=8,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            max_position_embeddings=2048,
            bos_token_id=tid("<s>"),
            eos_token_id=tid("</s>"),
        )
        return LlamaConfig(**kw), 10000.0
    raise ValueError(family)


def make_family(family, out):
    from transformers import (
        LlamaForCausalLM,
        PhiForCausalLM,
        Qwen2ForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    spec = FAMILIES[family]
    fdir = os.path.join(out, "fixtures", spec["dir"])
    os.makedirs(fdir, exist_ok=True)
    print("== %s -> %s" % (family, fdir))

    # Tokenizer first: the model config takes its special ids from it.
    tok, specials = TOKENIZER_MAKERS[family]()
    tok = save_tokenizer(family, tok, specials, fdir, spec["max_length"])
    tokenizer_golden(family, tok, os.path.join(out, "golden", "tokenizer", family + ".json"))

    torch.manual_seed(SEED + {"phi": 1, "qwen2": 2, "llama": 3}[family])
    gen = torch.Generator().manual_seed(SEED + {"phi": 11, "qwen2": 12, "llama": 13}[family])

    tcfg, theta = text_config_for(family, tok, specials)
    if abs(rope_theta_of(tcfg) - theta) > 0:
        raise ValueError("%s: rope theta is %g, wanted %g" % (family, rope_theta_of(tcfg), theta))
    lm_cls = {"phi": PhiForCausalLM, "qwen2": Qwen2ForCausalLM, "llama": LlamaForCausalLM}[family]
    lm = build(lm_cls, tcfg)
    if family == "qwen2":
        if lm.lm_head.weight.data_ptr() != lm.model.embed_tokens.weight.data_ptr():
            print("  qwen2: lm_head was not tied by the class; tying it by hand")
            lm.lm_head.weight = lm.model.embed_tokens.weight
    vcfg = SiglipVisionConfig(**VISION)
    vt = build(SiglipVisionModel, vcfg)
    hidden = spec["hidden"]
    connector = nn.Sequential(nn.Linear(VISION["hidden_size"], hidden), nn.GELU(), nn.Linear(hidden, hidden))
    print("  attention: llm %s, vision %s" % (lm.config._attn_implementation, vt.config._attn_implementation))

    for m in (lm, vt, connector):
        m.float()
        perturb_(m, gen)
        round_params_through_(m, spec["store_dtype"])
        m.eval()

    # ---- the checkpoint ------------------------------------------------------------------
    tensors = {}
    for prefix, m in (("language_model.", lm), ("vision_tower._vision_tower.", vt), ("connector._connector.", connector)):
        for k, v in m.state_dict().items():
            if family == "qwen2" and k == "lm_head.weight":
                continue  # tied: the hub file has no lm_head tensor
            if not torch.is_floating_point(v):
                raise ValueError("unexpected non-float tensor %s" % k)
            if prefix.startswith("vision_tower") and not k.startswith("vision_model."):
                # transformers 5 flattened SiglipVisionModel; the hub files (and TinyLLaVA's) keep vision_model.
                k = "vision_model." + k
            tensors[prefix + k] = v.detach().to(spec["store_dtype"]).contiguous().clone()
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if spec["shard_bytes"]:
        shards, cur, cur_size = [], {}, 0
        for k, t in tensors.items():
            n = t.numel() * t.element_size()
            if cur and cur_size + n > spec["shard_bytes"]:
                shards.append(cur)
                cur, cur_size = {}, 0
            cur[k] = t
            cur_size += n
        if cur:
            shards.append(cur)
        weight_map = {}
        for i, sh in enumerate(shards, 1):
            name = "model-%05d-of-%05d.safetensors" % (i, len(shards))
            p = os.path.join(fdir, name)
            save_file(sh, p, metadata={"format": "pt"})
            note_file(p)
            for k in sh:
                weight_map[k] = name
        write_json(
            os.path.join(fdir, "model.safetensors.index.json"),
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        )
        print("  %d tensors, %d bytes in %d shards" % (len(tensors), total, len(shards)))
    else:
        p = os.path.join(fdir, "model.safetensors")
        save_file(tensors, p, metadata={"format": "pt"})
        note_file(p)
        print("  %d tensors, %d bytes in one file" % (len(tensors), total))

    # ---- config.json ---------------------------------------------------------------------
    td = diff_dict(tcfg)
    if family == "qwen2":
        td["dtype"] = spec["store_name"]  # transformers-5 field names kept as they are
    else:
        td = legacy_text_config(td, partial_rotary_factor=0.4 if family == "phi" else None)
        td["torch_dtype"] = spec["store_name"]
    td["_name_or_path"] = spec["llm_name"]
    td["architectures"] = [spec["arch"]]
    td.pop("transformers_version", None)
    vd = diff_dict(vcfg)
    for k in ("dtype", "torch_dtype", "transformers_version"):
        vd.pop(k, None)
    # The published TinyLLaVA files list these even at their class defaults.
    vd["hidden_act"] = VISION["hidden_act"]
    vd["layer_norm_eps"] = VISION["layer_norm_eps"]
    vd["model_name_or_path"] = "google/siglip-so400m-patch14-384"
    vd["model_name_or_path2"] = ""
    pad = specials["pad"]
    config = {
        "architectures": ["TinyLlavaForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration.TinyLlavaConfig",
            "AutoModelForCausalLM": spec["modeling"] + ".TinyLlavaForConditionalGeneration",
        },
        "cache_dir": None,
        "connector_type": "mlp2x_gelu",
        "hidden_size": hidden,
        "ignore_index": -100,
        "image_aspect_ratio": "square",
        "image_token_index": -200,
        "llm_model_name_or_path": spec["llm_name"],
        "model_type": "tinyllava",
        "num_queries": 128,
        "num_resampler_layers": 3,
        "pad_token": pad,
        "pad_token_id": tok.token_to_id(pad),
        "resampler_hidden_size": 768,
        "text_config": td,
        "tokenizer_model_max_length": spec["max_length"],
        "tokenizer_padding_side": "right",
        "tokenizer_use_fast": False,
        "torch_dtype": spec["store_name"],
        "transformers_version": transformers.__version__,
        "tune_type_connector": "full",
        "tune_type_llm": "full",
        "tune_type_vision_tower": "frozen",
        "tune_vision_tower_from_layer": 0,
        "use_cache": True,
        "vision_config": vd,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "patch",
        "vision_hidden_size": VISION["hidden_size"],
        "vision_model_name_or_path": "google/siglip-so400m-patch14-384",
        "vision_model_name_or_path2": "",
        "vocab_size": VOCAB,
    }
    write_json(os.path.join(fdir, "config.json"), config, sort_keys=True)

    # ---- golden forward in float64 -------------------------------------------------------
    golden_forward(family, spec, lm, vt, connector, tcfg, tok, os.path.join(out, "golden", "model", family + ".safetensors"))


def golden_forward(family, spec, lm, vt, connector, tcfg, tok, path):
    for m in (lm, vt, connector):
        m.to(torch.float64)
    patch_rope_float64(lm, tcfg, family)
    gen = torch.Generator().manual_seed(SEED + 99)
    pixel_values = torch.rand((1, 3, VISION["image_size"], VISION["image_size"]), generator=gen, dtype=torch.float64)
    pixel_values = pixel_values * 2 - 1

    before, after = MODEL_PROMPT.split("<image>")
    ids = []
    if family == "llama":
        ids.append(tok.token_to_id("<s>"))
    ids += tok.encode(before, add_special_tokens=False).ids
    ids.append(-200)
    ids += tok.encode(after, add_special_tokens=False).ids
    input_ids = torch.tensor([ids], dtype=torch.int64)

    out = {}
    meta = {
        "family": family,
        "prompt": MODEL_PROMPT,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "dtype": "float64 forward of the weights as stored (%s), RoPE angles in float64" % spec["store_name"],
    }
    with torch.no_grad():
        # Vision tower.
        vhooks = {}
        handles = []
        vm = getattr(vt, "vision_model", vt)  # transformers 5 flattened SiglipVisionModel
        vlayers = vm.encoder.layers
        handles.append(vm.embeddings.register_forward_hook(lambda mod, inp, o: vhooks.__setitem__("emb", (o[0] if isinstance(o, tuple) else o).detach().clone())))
        for i, layer in enumerate(vlayers):
            handles.append(
                layer.register_forward_hook(
                    lambda mod, inp, o, i=i: vhooks.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach().clone())
                )
            )
        vo = vt(pixel_values=pixel_values, output_hidden_states=True)
        for h in handles:
            h.remove()
        vhs = vo.hidden_states
        if vhs is None:
            print("  warning: the vision tower returned no hidden_states; rebuilding them from hooks")
            vhs = (vhooks["emb"],) + tuple(vhooks[i] for i in range(len(vlayers)))
        for k, h in enumerate(vhs):
            out["vision.hidden_states.%d" % k] = h
        n = len(vlayers)
        same = torch.equal(vhs[-2], vhooks[n - 2])
        meta["vision_hidden_states_minus2_is_layer_%d_output" % (n - 2)] = str(same)
        print("  vision: %d hidden states; hidden_states[-2] == output of layer %d: %s" % (len(vhs), n - 2, same))
        feats = vhs[-2][:, 1:]  # "patch" strategy: drop row 0 (SigLIP has no CLS; TinyLLaVA drops it anyway)
        out["vision.features"] = feats
        img = connector(feats)
        out["image_features"] = img

        # Splice the image rows at the placeholder.
        emb_layer = lm.get_input_embeddings()
        pieces = []
        for tid in ids:
            if tid == -200:
                pieces.append(img[0])
            else:
                pieces.append(emb_layer(torch.tensor([tid], dtype=torch.int64)))
        inputs_embeds = torch.cat(pieces, dim=0)[None]
        out["inputs_embeds"] = inputs_embeds

        # Language model.
        lhooks = {}
        handles = []
        layers = lm.model.layers
        for i, layer in enumerate(layers):
            handles.append(
                layer.register_forward_hook(
                    lambda mod, inp, o, i=i: lhooks.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach().clone())
                )
            )
        norm = getattr(lm.model, "norm", None) or getattr(lm.model, "final_layernorm")
        handles.append(norm.register_forward_hook(lambda mod, inp, o: lhooks.__setitem__("norm", o.detach().clone())))
        lo = lm(inputs_embeds=inputs_embeds, output_hidden_states=True, use_cache=False)
        for h in handles:
            h.remove()
        for i in range(len(layers)):
            out["llm.layer_output.%d" % i] = lhooks[i]
        out["llm.final_norm"] = lhooks["norm"]
        logits_from_norm = lm.lm_head(lhooks["norm"])
        meta["hf_logits_dtype"] = str(lo.logits.dtype)
        meta["hf_logits_max_abs_diff_from_lm_head_of_final_norm"] = repr(
            float((lo.logits.to(torch.float64) - logits_from_norm).abs().max())
        )
        if lo.logits.dtype == torch.float64:
            out["logits"] = lo.logits
        else:
            print("  warning: HF returned %s logits; saving lm_head(final_norm) in float64" % lo.logits.dtype)
            out["logits"] = logits_from_norm
        if lo.hidden_states is not None:
            hs = lo.hidden_states
            for k, h in enumerate(hs):
                out["llm.hidden_states.%d" % k] = h
            eq = [torch.equal(hs[k + 1], lhooks[k]) for k in range(len(layers))]
            last_is_norm = torch.equal(hs[-1], lhooks["norm"])
            meta["llm_hidden_states"] = "len %d; [k+1]==layer_output[k]: %s; last==final_norm: %s" % (
                len(hs),
                "".join("1" if e else "0" for e in eq),
                last_is_norm,
            )
            meta["llm_hidden_states_0_is_inputs_embeds"] = str(torch.equal(hs[0], inputs_embeds))
            print("  llm hidden_states: " + meta["llm_hidden_states"])

    tensors = {"pixel_values": pixel_values, "input_ids": input_ids}
    for k, v in out.items():
        tensors[k] = v.detach().to(torch.float64).contiguous().clone()
    save_file(tensors, path, metadata=meta)
    note_file(path)
    print(
        "  golden: %d tokens (%d image rows), logits %s, max |logit| %.4g"
        % (input_ids.shape[1] - 1 + img.shape[1], img.shape[1], tuple(out["logits"].shape), float(out["logits"].abs().max()))
    )
    print("  " + ", ".join("%s=%s" % kv for kv in sorted(meta.items()) if kv[0] != "prompt"))


# --------------------------------------------------------------------------------------------
# Images.
# --------------------------------------------------------------------------------------------


def make_images(out):
    from PIL import Image, ImageOps
    import PIL

    d = os.path.join(out, "golden", "images")
    os.makedirs(d, exist_ok=True)
    rng = np.random.RandomState(SEED + 5)

    def colourful(w, h):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        r = 127.5 + 127.5 * np.sin(x / 7.0 + y / 13.0)
        g = 127.5 + 127.5 * np.cos(x / 11.0 - y / 5.0)
        b = 255.0 * (x + y) / (w + h - 2)
        a = np.stack([r, g, b], axis=-1) + rng.normal(0, 25, size=(h, w, 3))
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)

    png_path = os.path.join(d, "colourful_97x61.png")
    Image.fromarray(colourful(97, 61), "RGB").save(png_path, format="PNG")
    note_file(png_path)

    jpg_path = os.path.join(d, "orientation6_80x50.jpg")
    exif_ok = True
    jimg = Image.fromarray(colourful(80, 50), "RGB")
    try:
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 CW to display
        jimg.save(jpg_path, format="JPEG", quality=92, exif=exif.tobytes())
    except Exception as e:  # pragma: no cover
        exif_ok = False
        print("  EXIF writing unavailable (%s); JPEG written without it" % e)
        jimg.save(jpg_path, format="JPEG", quality=92)
    note_file(jpg_path)

    size = VISION["image_size"]
    tensors = {}
    meta = {"pillow_version": PIL.__version__, "resize": "PIL Image.resize((56,56), Image.BICUBIC)",
            "normalize": "(v/255 - 0.5)/0.5 in float64, stored as float32", "exif_written": str(exif_ok)}

    def reference(prefix, im):
        rgb = im.convert("RGB")
        tensors[prefix + ".decoded"] = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())
        resized = rgb.resize((size, size), Image.BICUBIC)
        arr = np.asarray(resized, dtype=np.uint8).copy()
        tensors[prefix + ".resized"] = torch.from_numpy(arr)
        pv = ((arr.astype(np.float64) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
        tensors[prefix + ".pixel_values"] = torch.from_numpy(np.ascontiguousarray(pv.astype(np.float32)))

    with Image.open(png_path) as im:
        reference("png", im)
    with Image.open(jpg_path) as im:
        meta["jpeg_exif_orientation"] = str(im.getexif().get(0x0112))
        reference("jpeg", im)  # TinyLLaVA: Image.open(...).convert('RGB'), EXIF ignored
        reference("jpeg_exif_transposed", ImageOps.exif_transpose(im))

    # The processor TinyLLaVA actually calls, for comparison (the slow PIL one, if this transformers has it).
    try:
        from transformers import SiglipImageProcessor

        proc = SiglipImageProcessor(size={"height": size, "width": size})
        meta["siglip_processor"] = type(proc).__name__
        with Image.open(png_path) as im:
            pv = proc(images=im.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        tensors["png.siglip_processor"] = pv.to(torch.float32).contiguous()
    except Exception as e:
        meta["siglip_processor"] = "unavailable: %s" % e
        print("  SiglipImageProcessor unavailable: %s" % e)

    p = os.path.join(d, "preprocess.safetensors")
    save_file(tensors, p, metadata=meta)
    note_file(p)
    print("  images: %s" % ", ".join(sorted(tensors)))


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory to write fixtures/ and golden/ into")
    ap.add_argument("--families", default="phi,qwen2,llama")
    args = ap.parse_args()
    print(
        "torch %s, transformers %s, tokenizers %s, safetensors %s, numpy %s"
        % (torch.__version__, transformers.__version__, tokenizers.__version__, safetensors.__version__, np.__version__)
    )
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    for sub in ("golden/tokenizer", "golden/model", "golden/images", "fixtures"):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)
    failed = []
    for fam in args.families.split(","):
        try:
            make_family(fam, args.out)
        except Exception:
            traceback.print_exc()
            failed.append(fam)
    try:
        make_images(args.out)
    except Exception:
        traceback.print_exc()
        failed.append("images")
    print("== wrote:")
    for p in WRITTEN:
        print("  %8d  %s  %s" % (os.path.getsize(p), sha256_of(p)[:16], os.path.relpath(p, args.out)))
    if failed:
        print("FAILED: %s" % ", ".join(failed))
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
