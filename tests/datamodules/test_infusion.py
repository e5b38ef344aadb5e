"""The knowledge world, the infusion mixture and fact recall (knowledge-infusion pretraining, issue 6)."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from zoo.callbacks.fact_recall import recall_accuracy
from zoo.datamodules.infusion import InfusionDataModule
from zoo.errors import DataError
from zoo.hub.store import load_model
from zoo.infusion.knowledge import build_world
from zoo.models import GPTNeoX, GPTNeoXConfig


def test_the_world_is_deterministic_and_general_and_domain_share_nothing():
    world = build_world(50, 40, seed=3)
    assert world == build_world(50, 40, seed=3) and world != build_world(50, 40, seed=4)
    assert len(world.general) == 150 and len(world.domain) == 120
    general_words = {f.entity for f in world.general} | {f.value for f in world.general}
    domain_words = {f.entity for f in world.domain} | {f.value for f in world.domain}
    assert not general_words & domain_words
    assert len({f.entity for f in world.general}) == 50  # full names are unique
    fact = world.general[0]
    statements = fact.statements()
    assert len(statements) == 4 and all(fact.entity in s and fact.value in s for s in statements)
    assert statements[-1] == f"{fact.question()} {fact.value}."


def test_a_world_larger_than_three_syllable_names_allow_still_has_unique_names():
    world = build_world(2000, 8000, seed=0)  # the GPU sweep's world: 10,000 entities
    assert len({f.entity for f in world.general}) == 2000 and len({f.entity for f in world.domain}) == 8000


def _data(**settings):
    defaults = dict(general_entities=40, domain_entities=40, train_tokens=60_000, vocab_size=512, seq_len=64)
    data = InfusionDataModule(**{**defaults, **settings})
    data.setup()
    return data


def _decoded_stream(data):
    return data.tokenizer.decode(torch.cat([data.train_set[i][:-1] for i in range(len(data.train_set))]).tolist())


def test_the_stream_holds_the_infused_facts_and_nothing_more():
    data = _data(domain_facts=30, general_repeats=4, domain_repeats=3)
    text = _decoded_stream(data)
    infused, left_out = data.world.domain[:30], data.world.domain[30:]
    for fact in infused:
        assert text.count(f"{fact.question()} {fact.value}.") == 3
    assert all(fact.entity not in text for fact in left_out)
    assert data.stats["infusion/domain_facts"] == 30 and 0 < data.stats["infusion/domain_share"] < 1
    assert len(data.train_set) * 64 <= 60_000 < (len(data.train_set) + 2) * 64  # the token budget
    assert _decoded_stream(_data(domain_facts=30, general_repeats=4, domain_repeats=3)) == text  # deterministic


def test_the_infusion_displaces_the_general_corpus_text_and_facts_alike():
    plain, infused = _data(domain_facts=0, general_repeats=4), _data(domain_facts=30, general_repeats=4)
    plain_text, infused_text = _decoded_stream(plain), _decoded_stream(infused)
    keep = 1 - infused.stats["infusion/domain_share"]
    assert 0.3 < keep < 0.9
    assert infused.stats["infusion/general_tokens"] == pytest.approx(
        keep * plain.stats["infusion/general_tokens"], rel=0.02
    )
    for fact in plain.world.general:
        question = f"{fact.question()} {fact.value}."
        assert plain_text.count(question) == 4
        assert infused_text.count(question) in (int(4 * keep), int(4 * keep) + 1)  # every fact loses about the same
    text_share = lambda data: (
        1 - (data.stats["infusion/general_tokens"] + data.stats["infusion/domain_tokens"]) / 60_000
    )  # noqa: E731
    assert text_share(infused) == pytest.approx(keep * text_share(plain), rel=0.02)  # the text shrinks as much


def test_bad_amounts_are_one_line_errors():
    with pytest.raises(DataError, match=r"data.domain_facts=500 must lie in \[0, 120\]"):
        InfusionDataModule(general_entities=40, domain_entities=40, domain_facts=500)
    with pytest.raises(DataError, match="smaller than the knowledge alone"):
        _data(train_tokens=1_000, domain_facts=10)


def test_recall_is_multiple_choice_over_the_relation_values():
    data = _data(domain_facts=0, general_repeats=2)
    facts = data.recall_sets()["general"][:20]
    assert "domain" not in data.recall_sets()  # nothing infused, nothing to ask

    class Oracle(torch.nn.Module):
        """Puts all its mass on the tokens of the true answer after each question."""

        def __init__(self, answers):
            super().__init__()
            self.answers, self.anchor = answers, torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            logits = torch.full((*ids.shape, len(data.tokenizer)), -10.0)
            for row, sequence in enumerate(ids.tolist()):
                for prompt, answer in self.answers:
                    if sequence[: len(prompt)] == prompt:
                        for i, token in enumerate(answer):
                            logits[row, len(prompt) - 1 + i, token] = 10.0
            return logits

    tokenize = lambda text: data.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    oracle = Oracle([(tokenize(f.question()), tokenize(" " + f.value)) for f in facts])
    assert recall_accuracy(oracle, data.tokenizer, facts) == 1.0
    torch.manual_seed(0)
    untrained = GPTNeoX(
        GPTNeoXConfig(
            vocab_size=len(data.tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    assert recall_accuracy(untrained, data.tokenizer, facts) < 0.5  # about chance (1/10 to 1/24)


def test_an_infusion_run_logs_retention_acquisition_and_the_amount(run_zoo, tiny, tmp_path):
    run_zoo(
        "fit",
        "data=infusion",
        *tiny,
        "data.general_entities=20",
        "data.domain_entities=20",
        "data.domain_facts=12",
        "data.general_repeats=2",
        "data.domain_repeats=2",
        "data.train_tokens=40000",
        "data.recall_facts=10",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "probes.every_n_steps=0",
        "name=infusion",
    )
    (metrics,) = list((tmp_path / "runs" / "infusion").rglob("metrics.json"))
    values = json.loads(metrics.read_text())
    # the logged recall is that of the run's final model on the run's own facts, recomputed here
    run = metrics.parent
    data = InfusionDataModule(general_entities=20, domain_entities=20, domain_facts=12, recall_facts=10)
    model, tokenizer = load_model(run).model, AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    sets = data.recall_sets()
    assert len(sets["general"]) == len(sets["domain"]) == 10
    for name, facts in sets.items():
        assert values[f"recall/{name}"] == pytest.approx(recall_accuracy(model, tokenizer, facts), abs=1e-6)
    assert values["infusion/domain_facts"] == 12 and 0 < values["infusion/domain_share"] < 1
