"""A tiny Llama trained in code, whose answer depends on ONE word of the prompt by construction.

Reusable by any test that needs a ground truth for attribution methods (white-box and
perturbation methods alike): ``build(path)`` trains it (a few seconds on a CPU) and saves it
with ``save_pretrained`` plus a word-level tokenizer with a chat template, so
``HFCausalLM.from_path(path)`` loads it like any local model. Nothing is downloaded.

The task: the user's text is six words, five *fillers* ``f0..f7`` and one *value* word
``v0..v3`` at a random position; the answer is ``a<i>`` for the value ``v<i>``. The formatted
prompt is ``<user> w1 .. w6 <end> <bot>`` and the response is the single token ``a<i>``. So
the answer is a function of the value word's identity only: the fillers and the position are
irrelevant by construction (the model reaches 100% accuracy on the task after training).
It is trained with label smoothing (0.3) so that it is not saturated: the correct answer gets
p ≈ 0.8, not 1 - 1e-6, where every gradient would vanish (without smoothing, gradient×input
gave coefficients of ~1e-8, ranked at random).
"""

from __future__ import annotations

import random
from pathlib import Path

FILLERS = [f"f{i}" for i in range(8)]
VALUES = [f"v{i}" for i in range(4)]
ANSWERS = [f"a{i}" for i in range(4)]
SPECIALS = ["<pad>", "<unk>", "<user>", "<end>", "<bot>"]
VOCAB = SPECIALS + FILLERS + VALUES + ANSWERS
N_WORDS = 6
CHAT_TEMPLATE = ("{% for m in messages %}<user> {{ m['content'] }} <end>{% endfor %}"
                 "{% if add_generation_prompt %} <bot>{% endif %}")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the space-separated words of ``text``."""
    spans, pos = [], 0
    for word in text.split(" "):
        spans.append((pos, pos + len(word)))
        pos += len(word) + 1
    return spans


def sample(rng: random.Random) -> tuple[list[str], int, int]:
    """(words, position of the value word, value index) of one random prompt."""
    words = [rng.choice(FILLERS) for _ in range(N_WORDS)]
    pos, value = rng.randrange(N_WORDS), rng.randrange(len(VALUES))
    words[pos] = VALUES[value]
    return words, pos, value


def answer(words: list[str]) -> str:
    """The correct response token for a prompt's words."""
    value = next(w for w in words if w in VALUES)
    return ANSWERS[VALUES.index(value)]


def build(path: str | Path, *, steps: int = 150, batch: int = 64, seed: int = 0) -> Path:
    """Train the tiny Llama on the task and save it (model and tokenizer) under ``path``."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = Path(path)
    vocab = {w: i for i, w in enumerate(VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<end>")
    tokenizer.chat_template = CHAT_TEMPLATE

    config = transformers.LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32, rope_theta=100.0,
        pad_token_id=vocab["<pad>"], eos_token_id=vocab["<end>"], bos_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)

    for _ in range(steps):
        rows, targets = [], []
        for _ in range(batch):
            words, _, value = sample(rng)
            rows.append([vocab["<user>"], *(vocab[w] for w in words), vocab["<end>"], vocab["<bot>"]])
            targets.append(vocab[ANSWERS[value]])
        logits = model(input_ids=torch.tensor(rows)).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets), label_smoothing=0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
