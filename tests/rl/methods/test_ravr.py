"""RAVR's objective pieces (zoo.rl.methods.ravr) against hand-computed values and direct gradients, the path and
answer spans on a real BPE tokenizer, and the answer-conditioned prompts in the RL and SFT data."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.datamodules.prompts import PromptDataModule
from zoo.datamodules.sft import SFTDataModule
from zoo.errors import ConfigError
from zoo.rl.methods.ravr import (
    distillation_weights,
    path_length,
    posterior_advantages,
    sample_kl,
    utility_inputs,
    weighted_path_nll,
)
from zoo.rl.methods.ravr_posterior_prompt import check_template
from zoo.tasks.registry import TASKS
from zoo.text.tokenizer import train_bpe


def test_posterior_advantage_is_the_gain_over_the_prior_mean_in_pooled_standard_deviations():
    prior = torch.tensor([[0.1, 0.3], [0.5, 0.5]])
    posterior = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    got = posterior_advantages(prior, posterior)
    pooled = [0.1, 0.3, 0.9, 0.1]
    mean = sum(pooled) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in pooled) / 4)
    expected = [(0.9 - 0.2) / (std + 1e-6), (0.1 - 0.2) / (std + 1e-6)]
    torch.testing.assert_close(got[0], torch.tensor(expected))
    torch.testing.assert_close(got[1], torch.zeros(2))  # nothing to gain, nothing to spread


def test_distillation_weights_are_the_gain_over_the_baseline_averaged_over_the_paths():
    prior = torch.tensor([[0.2, 0.4], [0.8, 0.8], [0.01, 0.03]])
    posterior = torch.tensor([[0.9, 0.1, 0.5], [0.1, 0.2, 0.8], [0.05, 0.0, 0.0]])
    got = distillation_weights(prior, posterior)
    torch.testing.assert_close(got[0], torch.tensor([0.6, 0.0, 0.2]) / 3)
    torch.testing.assert_close(got[1], torch.zeros(3))  # no posterior path beats b̂ = 0.8
    torch.testing.assert_close(got[2], torch.tensor([0.03, 0.0, 0.0]) / 3)  # a small gain keeps a small weight


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), paths=st.integers(1, 6), length=st.integers(1, 7))
def test_weighted_path_nll_gradient_is_the_weighted_mean_of_one_hot_minus_softmax(seed, paths, length):
    generator = torch.Generator().manual_seed(seed)
    vocab = 5
    logits = torch.randn(paths, length, vocab, generator=generator, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(vocab, (paths, length), generator=generator)
    mask = (torch.rand(paths, length, generator=generator) < 0.7).double()
    mask[:, 0] = 1
    weights = torch.rand(paths, generator=generator, dtype=torch.float64)
    logprobs = torch.log_softmax(logits, -1).gather(2, tokens[..., None]).squeeze(2)
    weighted_path_nll(logprobs, mask, weights).backward()
    # d/dlogits of -w_i/|m_i| Σ_t m_it log softmax(logits_it)[y_it] = -w_i/|m_i| m_it (onehot(y_it) - softmax)
    direct = torch.zeros_like(logits)
    probabilities = torch.softmax(logits.detach(), -1)
    for i in range(paths):
        for t in range(length):
            onehot = torch.nn.functional.one_hot(tokens[i, t], vocab).double()
            direct[i, t] = -weights[i] / mask[i].sum() * mask[i, t] * (onehot - probabilities[i, t])
    torch.testing.assert_close(logits.grad, direct)


def test_weighted_path_nll_over_minibatches_adds_up_to_the_whole_batch():
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(8, 5, generator=generator)
    mask = torch.ones(8, 5)
    mask[::2, 3:] = 0
    weights = torch.rand(8, generator=generator)
    whole = weighted_path_nll(logprobs, mask, weights)
    parts = sum(weighted_path_nll(logprobs[i : i + 3], mask[i : i + 3], weights[i : i + 3]) for i in range(0, 8, 3))
    torch.testing.assert_close(whole, parts)


def test_sample_kl_converges_to_the_exact_kl_of_two_categoricals():
    generator = torch.Generator().manual_seed(1)
    q = torch.softmax(torch.randn(6, generator=generator, dtype=torch.float64), 0)
    p = torch.softmax(torch.randn(6, generator=generator, dtype=torch.float64), 0)
    exact = float((q * (q / p).log()).sum())
    draws = torch.multinomial(q, 400_000, replacement=True, generator=generator)
    assert abs(float(sample_kl(q.log()[draws], p.log()[draws])) - exact) < 0.01


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["flip #afdb", "keep #abcd", "zov bdfa=", "left #bcda", "no cue here"] * 50
    return train_bpe(texts, 64)


@pytest.mark.parametrize("completion", ["flip #afdb", "flip #zzzz", "flip", "#afdb", ""])
def test_the_answer_span_follows_the_path_and_the_cue(tokenizer, completion):
    prompt = [5, 6, 7]
    contexts, answers = utility_inputs(tokenizer, [prompt], [completion], ["afdb"], "#")
    path = completion.split("#")[0]
    assert contexts[0][:3] == prompt
    assert tokenizer.decode(contexts[0][3:] + answers[0]) == path + "#afdb"
    assert answers[0] and tokenizer.decode(answers[0]).endswith("afdb")
    assert tokenizer.decode(contexts[0][3:]).startswith(path)


@pytest.mark.parametrize("completion, path", [("flip #afdb", "flip #"), ("#afdb", "#"), ("no cue here", None)])
def test_the_path_ends_at_the_cue(tokenizer, completion, path):
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    k = path_length(tokenizer, ids, "#")
    if path is None:
        assert k is None
    else:
        assert tokenizer.decode(ids[:k]) == path


@pytest.fixture(scope="module")
def spaced_tokenizer():
    """A GPT-2-style byte-level BPE: a word carries its leading space (`` 42`` is one token)."""
    texts = [f"so it is {n} #### {n} and answer: {n} or # {n}" for n in range(100)] * 5
    return train_bpe(texts, 600)


@settings(max_examples=60, deadline=None)
@given(
    cue=st.sampled_from(["#### ", "answer: ", "#", "# "]),
    answer=st.integers(0, 999),
    words=st.lists(st.sampled_from(["so", "it", "is", "and", "12", "or"]), max_size=5),
    stop=st.booleans(),
)
def test_the_path_never_holds_an_answer_character(spaced_tokenizer, cue, answer, words, stop):
    """With a cue that ends in a space the answer's first token carries that space: the path stops before it, and
    it is the longest prefix that does (the next token reaches into the answer)."""
    tokenizer = spaced_tokenizer
    text = " ".join(words) + (" " if words else "") + cue + str(answer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if stop else [])
    k = path_length(tokenizer, ids, cue)
    start = text.find(cue) + len(cue)
    path = tokenizer.decode(ids[:k])
    assert text[:start].startswith(path)  # no answer character
    assert len(tokenizer.decode(ids[: k + 1])) > start  # the next token holds the answer's first character
    assert ids[k - 1 : k] != [tokenizer.eos_token_id]


def test_a_completion_that_stops_at_its_cue_keeps_the_stop_token_out_of_the_path(spaced_tokenizer):
    ids = spaced_tokenizer("so it is ####", add_special_tokens=False)["input_ids"]
    assert path_length(spaced_tokenizer, ids + [spaced_tokenizer.eos_token_id], "####") == len(ids)


def test_a_cue_with_a_trailing_space_leaves_the_answer_token_out(spaced_tokenizer):
    ids = spaced_tokenizer("so it is 42 #### 42", add_special_tokens=False)["input_ids"]
    assert spaced_tokenizer.convert_ids_to_tokens(ids)[-1] == "Ġ42"  # the space rides on the answer
    k = path_length(spaced_tokenizer, ids, "#### ")
    assert k == len(ids) - 1 and spaced_tokenizer.decode(ids[:k]) == "so it is 42 ####"


def test_answer_conditioned_prompts_reach_the_rl_and_sft_data():
    template = "answer {answer}: {prompt}"
    with pytest.raises(ConfigError, match="data.posterior_prompt"):
        check_template("{prompt} without the answer")
    with pytest.raises(ConfigError, match="data.posterior_prompt"):
        PromptDataModule(task="methods", posterior_prompt="{prompt} {answer} {hint}")
    data = PromptDataModule(task="methods", train_size=20, val_size=4, vocab_size=64, posterior_prompt=template)
    data.setup()
    for item in data.train_set:
        assert data.tokenizer.decode(item["posterior_ids"]) == f"answer {item['reference']}: {item['prompt']}"
    sft = SFTDataModule(task="methods", train_size=20, val_size=4, vocab_size=64, seq_len=64, pack=False)
    sft.setup()
    conditioned = SFTDataModule(task="methods", train_size=20, val_size=4, vocab_size=64, seq_len=64, pack=False,
                                posterior_prompt=template)  # fmt: skip
    conditioned.setup()
    assert len(conditioned.train_set) == 2 * len(sft.train_set) and len(conditioned.val_set) == len(sft.val_set)


def test_the_answer_ravr_conditions_on_is_the_references_final_answer():
    assert TASKS["gsm8k"].final_answer("Half of 2,468 is 1,234.\n#### 1,234") == "1234"
    assert TASKS["methods"].final_answer("dfhc") == "dfhc"
