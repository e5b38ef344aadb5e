"""QAgent's environment and masks (zoo/envs/search.py, zoo/search/task.py): what the environment answers, the
observation tokens that never get gradient (RL) and never a target (SFT), and frozen readers that plug in."""

import re

import pytest
import torch

from zoo.envs.search import SearchEnvironment
from zoo.errors import DataError
from zoo.generation.engine import GenerationResult, Sample
from zoo.models import build_model, config_from_dict
from zoo.modules.qagent import QAgentModule
from zoo.rl.pg_variants import PolicyInputs, policy_loss, variant_options
from zoo.rl.rollout import Round, assemble, token_logprobs
from zoo.search.readers import ExtractiveReader, build_reader
from zoo.search.rewards import hit, stage1_reward
from zoo.search.tags import RETRY, STOP_STRINGS, retrieved_passages
from zoo.search.task import PROMPTS, question_of, teacher_transcript
from zoo.search.world import default_world
from zoo.text.tokenizer import train_bpe

WORLD = default_world()
TWO_HOP = next(q for q in WORLD.questions if len(q.hops) == 2)


def test_environment_answers_searches_with_passages_and_anything_else_with_the_retry():
    env = SearchEnvironment("world", top_k=2, max_queries=2)
    assert env.reset({"prompt": "x"}) == "" and env.stop_strings == STOP_STRINGS
    bridge = TWO_HOP.hops[0]
    queries = "".join(f"<query>{q}</query>" for q in (f"{bridge.entity} discovered", "nothing matches zzz", "extra"))
    step = env.step(f"<plan>p</plan><search>{queries}</search>")
    assert not step.done and step.reward == 0 and step.observation.startswith("\n<information>Doc 1(Title: ")
    passages = retrieved_passages(step.observation)
    assert passages[0].title == bridge.entity and len(passages) == 2  # top 2 of the first query, none of the second
    assert env.counts == {"searches": 1, "queries": 2, "invalid": 0}  # the third query is over max_queries
    assert env.step("<plan>hmm</plan>").observation == RETRY and env.counts["invalid"] == 1
    assert env.step("<answer>x</answer>").done


def _trajectory(tokenizer, question):
    """A hand-written trajectory laid out as the multi-turn rollout lays it out: the teacher's turns (the policy's
    tokens) and the environment's observations, each tokenized on its own."""
    env = SearchEnvironment("world")
    turns = [
        f"<plan>look up {h.entity}</plan><search><query>{h.entity} {h.keyword}</query></search>" for h in question.hops
    ]
    tokens, mask = [], []
    for k, turn in enumerate(turns):
        own = tokenizer(turn if k == 0 else f"<reflection>{question.hops[k - 1].finding}</reflection>" + turn)
        observed = tokenizer(env.step(turn).observation)
        tokens += own["input_ids"] + observed["input_ids"]
        mask += [1] * len(own["input_ids"]) + [0] * len(observed["input_ids"])
    own = tokenizer(f"<reflection>{question.hops[-1].finding}</reflection><answer>{question.answer}</answer>")
    return tokens + own["input_ids"], mask + [1] * len(own["input_ids"])


def test_information_tokens_never_receive_gradient():
    texts = [
        PROMPTS["short"].format(question=q.text) + teacher_transcript(q, "competent", SearchEnvironment())
        for q in WORLD.questions[:50]
    ]
    tokenizer = train_bpe(texts, vocab_size=400)
    tokens, mask = _trajectory(tokenizer, TWO_HOP)
    prompt = tokenizer(PROMPTS["short"].format(question=TWO_HOP.text))["input_ids"]
    batch = assemble([prompt], [Sample(0, tokens, [0.0] * len(tokens), "stop", mask=mask)])
    start = len(prompt) - 1
    assert batch.response_mask[0, start : start + len(tokens)].tolist() == mask
    information = tokenizer.decode([t for t, m in zip(tokens, mask, strict=True) if not m])
    assert information.count("<information>") == 2 and "<answer>" not in information
    torch.manual_seed(0)
    model = build_model(config_from_dict(dict(arch="gpt_neox", vocab_size=len(tokenizer), hidden_size=32,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=512)))  # fmt: skip
    logprobs, _ = token_logprobs(model, batch.input_ids)
    logprobs.retain_grad()
    inputs = PolicyInputs(logprobs, logprobs.detach(), logprobs.detach(), torch.ones_like(logprobs),
                          torch.ones(1), batch.response_mask)  # fmt: skip
    loss, _, _ = policy_loss("ppo", variant_options("ppo", {}), inputs, 0.2, 0.2, "seq_mean_token_mean", 64, None)
    loss.backward()
    grad = logprobs.grad[0, start : start + len(tokens)]
    observed = torch.tensor(mask) == 0
    assert (grad[observed] == 0).all() and (grad[~observed] != 0).all()


def _round(tokenizer, question, tokens, mask):
    prompt = tokenizer(PROMPTS["short"].format(question=question.text))["input_ids"]
    problem = {"prompt": PROMPTS["short"].format(question=question.text), "reference": question.answer,
               "prompt_ids": prompt}  # fmt: skip
    result = GenerationResult([Sample(0, tokens, [0.0] * len(tokens), "stop", mask=mask)])
    return Round.from_generation([problem], result, tokenizer, "cpu")


@pytest.mark.parametrize("stage", [1, 2])
def test_only_passages_the_environment_returned_earn_hit(stage):
    """Stage 2 pays for retrieval: a trajectory whose passages came from the environment earns the reader's EM and
    Hit; the same text written by the policy itself (an ``<information>`` block it never searched for, or the
    answer in its reflection) earns neither, in training and in validation's Hit alike."""
    texts = [
        PROMPTS["short"].format(question=q.text) + teacher_transcript(q, "competent", SearchEnvironment())
        for q in WORLD.questions[:50]
    ]
    tokenizer = train_bpe(texts, vocab_size=400)
    tokens, mask = _trajectory(tokenizer, TWO_HOP)
    module = QAgentModule(dict(arch="gpt_neox", vocab_size=len(tokenizer)), reward_stage=stage)
    module.reader = ExtractiveReader()
    retrieved = module.score(_round(tokenizer, TWO_HOP, tokens, mask))
    forged = module.score(_round(tokenizer, TWO_HOP, tokens, [1] * len(tokens)))  # the policy wrote it all
    assert retrieved.parts["hit"].tolist() == [1.0] and forged.parts["hit"].tolist() == [0.0]
    assert retrieved.parts["stage1"].tolist() == forged.parts["stage1"].tolist() == [1.0]  # stage 1: the answer
    if stage == 2:
        assert retrieved.scores.tolist() == [1.5] and forged.scores.tolist() == [0.0]


def test_sft_targets_skip_the_observations(zoo_env):
    from zoo.datamodules.sft import SFTDataModule
    from zoo.models.cross_entropy import IGNORE_INDEX

    data = SFTDataModule(task="search", options={"teacher_error": 0.0}, train_size=40, val_size=4, seq_len=512,
                         chat_template="none", vocab_size=400)  # fmt: skip
    data.setup()
    inputs, targets = data.examples(data.train_problems[:5])[0]
    trained = data.tokenizer.decode([t for t in targets if t != IGNORE_INDEX])
    solution = data.train_problems[0].solution
    assert "<information>" in solution and "<information>" not in trained and "Doc 1" not in trained
    for piece in ("<plan>", "</search>", "<reflection>", "<answer>"):
        assert trained.count(piece) == solution.count(piece)
    data.chat = object()  # as a tokenizer with a chat template would give
    with pytest.raises(DataError, match="chat_template=none"):
        data.examples(data.train_problems[:1])


def test_teachers_and_question_of():
    env = SearchEnvironment("world")
    good, sloppy = teacher_transcript(TWO_HOP, "competent", env), teacher_transcript(TWO_HOP, "sloppy", env)
    assert good.endswith(f"<answer>{TWO_HOP.answer}</answer>") and good.count("<search>") == 2
    assert sloppy.count("<search>") == 1 and f"<answer>{TWO_HOP.hops[0].value}</answer>" in sloppy
    memory = teacher_transcript(TWO_HOP, "memory", env)
    assert memory.count("<search>") == 1 and memory.endswith(f"<answer>{TWO_HOP.answer}</answer>")
    assert stage1_reward(memory, TWO_HOP.answer) == 1.0  # the route stage 1 cannot tell from retrieval
    assert not hit(retrieved_passages(memory), TWO_HOP.answer)
    for template in PROMPTS.values():
        assert question_of(template.format(question=TWO_HOP.text)) == TWO_HOP.text


def test_model_readers_plug_in_beside_the_extractive_one(hf_models, trained_run):
    question, passages = TWO_HOP.text, [p for p in WORLD.passages if p.title == TWO_HOP.hops[0].entity]
    assert isinstance(build_reader("extractive"), ExtractiveReader)
    for source in (str(hf_models["llama"]), str(trained_run)):
        reader = build_reader(source, max_new_tokens=4)
        first = reader([question, "Who?"], [passages, []])
        assert len(first) == 2 and all(isinstance(a, str) and "\n" not in a for a in first)
        assert reader([question, "Who?"], [passages, []]) == first  # greedy: the same answers again


def test_a_model_reader_can_be_held_in_8_or_4_bits(trained_run):
    pytest.importorskip("bitsandbytes")
    question, passages = TWO_HOP.text, [p for p in WORLD.passages if p.title == TWO_HOP.hops[0].entity]
    for bits, kind in (("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")):
        reader = build_reader(str(trained_run), max_new_tokens=4, quantization=bits)
        assert any(type(m).__name__ == kind for m in reader.model.modules())
        answers = reader([question, "Who?"], [passages, []])
        assert len(answers) == 2 and reader([question, "Who?"], [passages, []]) == answers


def test_quantizing_the_extractive_reader_is_an_error_naming_the_setting():
    from zoo.errors import ConfigError
    from zoo.modules.qagent import QAgentModule

    with pytest.raises(ConfigError, match="module.reader_quantization holds a model reader"):
        QAgentModule({"arch": "gpt_neox", "vocab_size": 64}, reader_quantization="8bit")


def test_reader_data_answers_the_gold_exactly_when_its_passage_is_shown():
    from zoo.search.rewards import cover_match
    from zoo.tasks.registry import load_problems

    train, _ = load_problems("search_reader", None, None, 200, 10, 0)
    shown_gold = 0
    for problem in train:
        passages = problem.prompt.split("\n\nAnswer the given question")[0]
        has_gold = cover_match(passages, problem.reference)
        shown_gold += has_gold
        assert (problem.solution.strip() == problem.reference) == bool(has_gold) or (
            not has_gold and problem.solution.strip() == problem.reference  # an extractive guess that is right
        )
    assert 0.4 < shown_gold / len(train) < 0.8


def test_questions_of_your_own_with_several_answers(tmp_path):
    import json

    from zoo.search.task import golds_of
    from zoo.tasks.registry import TASKS, load_problems

    rows = [{"question": "Who wrote Hamlet", "golden_answers": ["Shakespeare", "William Shakespeare"]},
            {"question": "Capital of France?", "answer": "Paris"}]  # fmt: skip
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train, val = load_problems("search", str(path), str(path), 10, 10, 0)
    assert len(train) == 2 and question_of(train[0].prompt) == "Who wrote Hamlet?"
    assert golds_of(train[0].reference) == ["Shakespeare", "William Shakespeare"] and train[1].reference == "Paris"
    reward = TASKS["search"].reward
    assert reward(train[0].prompt, "<answer>william shakespeare</answer>", train[0].reference) == 1.0
    assert reward(train[0].prompt, "<answer>Marlowe</answer>", train[0].reference) == 0.0
    path.write_text(json.dumps({"question": "q", "answers": [1, 2]}) + "\n")
    with pytest.raises(DataError, match=r"qa.jsonl:1: a question needs"):
        load_problems("search", str(path), None, 1, 0, 0)


@pytest.mark.parametrize(
    "row, named",
    [
        ({"question": "Who?", "answer": ""}, "the answer '' is nothing once normalised"),
        ({"question": "Who?", "answer": "The"}, "the answer 'The' is nothing once normalised"),
        ({"question": "Who?", "answers": ["Paris", " a. "]}, "the answer ' a. ' is nothing"),
        ({"question": "  ", "answer": "Paris"}, "the question is empty"),
    ],
)
def test_an_answer_no_completion_could_miss_is_a_data_error(tmp_path, row, named):
    """An empty <answer></answer> would score 1.0 against a gold that normalises to nothing."""
    import json

    from zoo.tasks.registry import load_problems

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"qa.jsonl:2: {re.escape(named)}"):
        load_problems("search", str(path), None, 2, 0, 0)
