"""Build a tiny random-weight Llama chat model that vLLM can serve.

No generative model ships in a package and no model hub is reachable, so tests and demos
serve this one: a 2-layer Llama with a byte-level BPE tokenizer trained on a small corpus
kept in this file, and a chat template. Its answers are random text, but every part of the
serving path (tokenizer, chat template, sampling, streaming, KV cache, metrics) is real.

Needs torch, transformers and tokenizers, so it runs in the engine virtualenv:

    .engine-venv/bin/python -m workers.engine.tinymodel OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS)

TARGET_VOCAB_SIZE = 4096

# The CPU attention kernels accept head dimension 64 (16 is rejected): 128 hidden / 2 heads.
HIDDEN_SIZE = 128
NUM_ATTENTION_HEADS = 2
HEAD_DIM = HIDDEN_SIZE // NUM_ATTENTION_HEADS
NUM_HIDDEN_LAYERS = 2
INTERMEDIATE_SIZE = 256
MAX_POSITION_EMBEDDINGS = 2048

# A ChatML-like template. It reads `message['content']` as a string, which vLLM detects
# as the "string" content format and flattens OpenAI content parts into.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_CORPUS_SENTENCES = """\
The platform serves open-weight models to internal teams on the organization's own GPUs.
An administrator creates an organization, adds teams, and issues API keys to each team.
Every request passes through the gateway, which checks the key, the policy and the limits.
The gateway picks a healthy replica and streams the answer back without changing it.
Usage events are written to a stream and counted exactly once in the ledger.
The reconciler compares the desired deployments with what the node agents report.
A node agent starts, health-checks, drains and stops engine processes on its host.
Tensor-parallel groups are placed on one node; replicas are spread or packed by free memory.
Prefix caching lets repeated prompts skip work that an earlier request already did.
The audit log is a chain of hashed events, so nobody can rewrite history unnoticed.
Quotas limit requests per minute, tokens per day, concurrent streams and monthly budgets.
Hello! How can I help you today? Please summarize the following document in three lines.
What is the capital of France? Paris is the capital and largest city of France.
Write a short poem about the sea, the wind, the rain and the quiet morning light.
Translate this sentence into German, French, Spanish, Italian and Dutch, please.
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.
Once upon a time there was a small village at the edge of a great green forest.
The weather today is cloudy with a chance of rain in the afternoon and evening.
Machine learning models learn patterns from data and make predictions about new data.
A transformer has attention layers, feed-forward layers, residual connections and norms.
Tokens are pieces of words; a tokenizer turns text into numbers and numbers into text.
def add(a, b): return a + b  # a function in Python that adds two numbers together
for i in range(10): print(i * i)  # squares of the first ten natural numbers
SELECT name, count(*) FROM requests GROUP BY name ORDER BY count(*) DESC LIMIT 10;
{"model": "tiny-chat", "messages": [{"role": "user", "content": "Say hello"}]}
Security matters: keys are stored as hashes, secrets never leave the vault, logs are kept.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the days of the week.
January February March April May June July August September October November December.
Red, orange, yellow, green, blue, indigo and violet are the colours of the rainbow.
One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, a hundred.
Thank you very much for your question; I am happy to explain it step by step.
First, open the settings page. Second, choose a model. Third, press the deploy button.
The engine reports requests running, requests waiting and the usage of its key-value cache.
Latency is the time to the first token; throughput is the number of tokens per second.
Errors happen: the server answers with a status code and a message that explains why.
"""

_CORPUS_WORDS = """\
ability able about above accept access account across action active actual address admin
after again against agent agree ahead allow almost alone along already also always amount
answer anyone apply area argue around arrive article assume attack author available avoid
balance base battery bear beautiful become before begin behavior behind believe benefit
better between beyond billion black board body book border bottle branch bread break bridge
bring brother budget build burden business button buyer cable camera campaign cancel capital
carbon career careful carry case catalog cause center certain chain chair challenge change
chapter charge check child choice church circle citizen claim class clear client climate
close cloud cluster coast code coffee cold collect college column common community company
compare complete compute concept concern condition conference config consider constant
contain content context continue contract control cost country couple course court cover
create credit crisis cross culture current customer cycle damage dance danger data database
debate decade decide default defense degree deliver demand deploy depth design detail
develop device dinner direction discover discuss disease distance doctor document dollar
domain door double dream drive driver during early earth easy economy edge education effect
effort eight either election element email employee energy engine enjoy enough enter entire
environment equal error escape estimate event evidence exact example expect expert explain
export factor failure family father feature federal feeling field figure final finance
finger finish fire flight floor flower focus follow force foreign forest format forward
frame friend front future garden gateway general generate glass global goal government
graph great ground group growth guard guess hand happen hardware header health heart heavy
height history holder hospital hotel house however human hundred husband idea image impact
import improve include income index industry inference input inside instance interest
island issue item journey judge kernel kitchen knowledge label language large later launch
layer leader learn least leave legal length letter level library light limit listen little
local lock logic machine manage market matter measure media memory message method metric
middle minute mirror model modern moment money month morning mother mountain movement music
nation natural nature network never night normal notice number object ocean office option
order output owner paper parent parser partner party pattern payment people period person
phone picture piece place planet player pocket point police policy pool popular portion
power practice prepare present pressure price primary print private problem process produce
product program project proof property protect provide public purpose quality quarter
question queue quick quiet radio range rather reach ready reason receive record region
release remain remote replica report request require research resource response result
return review river road rock route rule runtime safety sample scale scene school science
score screen search season second section secret sector select server service session
settle shape share shore short signal simple single sister skill small social software
source space speak special speech spend sport spring staff stage standard state station
status stock storage store story stream street strong student study style subject success
summer support surface system table target teacher team technology tenant test theory
thought thousand thread ticket token tonight total toward trade traffic train travel
treatment trial trouble truth update upgrade usage user valley value vector version victim
village violence visit voice volume wait wall water weight western window winter wisdom
woman wonder worker world worry writer yellow young zone
"""


def training_corpus() -> list[str]:
    """The built-in text the tokenizer learns its merges from; fixed, so merges are too."""
    sentences = _CORPUS_SENTENCES.splitlines()
    words = _CORPUS_WORDS.split()
    # Word forms and numbers give the BPE trainer enough distinct pairs for a few
    # thousand merges; a fixed stride keeps the lines reproducible without randomness.
    word_lines = []
    for index, word in enumerate(words):
        partner = words[(index * 7 + 3) % len(words)]
        word_lines.append(
            f"{word} {word}s {word}ed {word}ing {word.capitalize()} {word.upper()} "
            f"the {word} of the {partner}, {index} {index * 37 % 1000}."
        )
    return sentences * 4 + word_lines


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    # Plain encodes (the completions endpoint) start with BOS, as Llama tokenizers do;
    # vLLM encodes rendered chat templates without special tokens, and the template
    # writes BOS itself.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, tokenizer.token_to_id(BOS_TOKEN))],
    )
    return tokenizer


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_tokenizer(tokenizer, model_dir: Path) -> dict[str, int]:
    tokenizer.save(str(model_dir / "tokenizer.json"))
    token_ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    # Written by hand rather than through transformers' save_pretrained, whose output
    # changes between transformers releases; this is the stable subset vLLM reads.
    _write_json(
        model_dir / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
            "additional_special_tokens": list(ROLE_TOKENS),
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": MAX_POSITION_EMBEDDINGS,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _write_json(
        model_dir / "special_tokens_map.json",
        {
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
            "additional_special_tokens": list(ROLE_TOKENS),
        },
    )
    return token_ids


def _write_model(model_dir: Path, *, vocab_size: int, token_ids: dict[str, int], seed: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_HIDDEN_LAYERS,
        num_attention_heads=NUM_ATTENTION_HEADS,
        num_key_value_heads=NUM_ATTENTION_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=token_ids[BOS_TOKEN],
        eos_token_id=token_ids[EOS_TOKEN],
        pad_token_id=token_ids[PAD_TOKEN],
        tie_word_embeddings=False,
        # vLLM runs bfloat16 on CPU; weights in that type load without conversion.
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids[BOS_TOKEN],
        eos_token_id=token_ids[EOS_TOKEN],
        pad_token_id=token_ids[PAD_TOKEN],
    )
    model.save_pretrained(model_dir)
    if not (model_dir / "model.safetensors").is_file():
        raise RuntimeError(f"transformers did not write model.safetensors in {model_dir}")


def build_tiny_chat_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the tiny chat model into `out_dir` (replacing it) and return its path.

    The same seed gives the same weights and the same tokenizer. The directory appears
    whole or not at all: it is built beside `out_dir` and renamed into place.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = _train_tokenizer()
        token_ids = _write_tokenizer(tokenizer, build_dir)
        _write_model(
            build_dir,
            vocab_size=tokenizer.get_vocab_size(),
            token_ids=token_ids,
            seed=seed,
        )
        build_dir.chmod(0o755)  # mkdtemp made it private
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(build_dir, out_dir)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    args = parser.parse_args(argv)
    print(build_tiny_chat_model(args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
