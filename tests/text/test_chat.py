"""Prompts and SFT examples through a tokenizer's chat template (zoo.text.chat): the prompt is what the template
renders with the generation prompt, SFT learns the assistant turn only (ending at the end-of-turn token), and
generation stops there."""

import pytest

from zoo.datamodules.prompts import PromptDataModule
from zoo.datamodules.sft import SFTDataModule
from zoo.errors import DataError
from zoo.tasks.registry import TASKS
from zoo.text.chat import ChatFormat, chat_format
from zoo.text.tokenizer import load_tokenizer


def _data(module, hf_models, arch="qwen2", **settings):
    data = module(
        task="arithmetic", tokenizer=str(hf_models[arch]), train_size=40, val_size=4, batch_size=4, **settings
    )
    data.setup("fit")
    return data


def test_prompts_are_rendered_by_the_template_with_the_task_system_prompt(hf_models):
    data = _data(PromptDataModule, hf_models)
    tokenizer = data.tokenizer
    problem = data.train_problems[0]
    text = tokenizer.decode(data.train_set[0]["prompt_ids"])
    assert text == (
        f"<|im_start|>system\n{TASKS['arithmetic'].system}<|im_end|>\n"
        f"<|im_start|>user\n{problem.prompt}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert data.stop_token_ids == (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    own = _data(PromptDataModule, hf_models, system_prompt="Think first.")
    assert "system\nThink first.<|im_end|>" in tokenizer.decode(own.train_set[0]["prompt_ids"])


def test_raw_prompts_without_a_template_or_with_none(hf_models):
    for data in (_data(PromptDataModule, hf_models, "llama"), _data(PromptDataModule, hf_models, chat_template="none")):
        assert data.chat is None and data.stop_token_ids == (data.tokenizer.eos_token_id,)
        ids = data.train_set[0]["prompt_ids"]
        assert data.tokenizer.decode(ids) == data.train_problems[0].prompt
    with pytest.raises(DataError, match="data.chat_template must be one of auto, none, got 'yes'"):
        _data(PromptDataModule, hf_models, chat_template="yes")


def test_sft_learns_the_assistant_turn_only_and_its_end(hf_models):
    data = _data(SFTDataModule, hf_models, seq_len=128)
    tokenizer = data.tokenizer
    problem = data.train_problems[0]
    (inputs, targets), *_ = data.examples(data.train_problems)
    learned = [t for t in targets if t != -100]
    assert tokenizer.decode(learned) == problem.solution + "<|im_end|>"
    first = targets.index(learned[0])
    assert all(t == -100 for t in targets[:first]) and all(t != -100 for t in targets[first:])
    prompt = data.chat.prompt_ids(problem.prompt)
    assert inputs[: len(prompt)] == prompt and len(inputs) == len(prompt) + len(learned) - 1
    row = data.train_set[0]  # packed rows carry the same targets
    assert row["targets"][: len(targets)].tolist() == targets


def test_a_template_that_rejects_the_messages_fails_in_one_line(hf_models):
    tokenizer = load_tokenizer(hf_models["qwen2"])
    tokenizer.chat_template = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(DataError, match="chat template fails on this task's messages: System role not supported"):
        ChatFormat(tokenizer, "be brief")
    tokenizer.chat_template = None
    assert chat_format(tokenizer, "auto", "be brief") is None
