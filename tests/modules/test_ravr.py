"""RAVR in a Lightning Trainer: the batch holds prior paths, posterior paths and the posterior paths after the
question-only prompt, weighted and advantaged from utilities measured on the policy; the distillation term alone
teaches the prior what the answer-conditioned sampler finds; it runs from the command line, on zoo's models and
on a Hugging Face policy, and bad settings are one line."""

import json

import pytest
import torch

from zoo.datamodules.prompts import PromptDataModule
from zoo.datamodules.sft import SFTDataModule
from zoo.modules.ravr import DISTILLED, POSTERIOR, PRIOR, RAVRModule
from zoo.modules.sft import SFTModule
from zoo.rl.methods import ravr as ravr_objective
from zoo.rl.methods.ravr_answer_utility import answer_utility
from zoo.rollout.callback import RolloutCallback

POLICY = dict(arch="gpt_neox", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=64)  # fmt: skip
TEMPLATE = "answer {answer}: {prompt}"
SFT_STEPS, RAVR_STEPS = 450, 60


class _Recorded(RAVRModule):
    """RAVR that keeps each step's prompts and batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches, self.problems = [], []

    def training_batch(self, problems):
        self.problems.append(problems)
        return super().training_batch(problems)

    def update(self, batch):
        self.batches.append(batch)
        super().update(batch)


def _data(**options):
    return PromptDataModule(task="methods", options={"methods": 2, "keywords": 4, **options}, train_size=400,
                            val_size=16, batch_size=4, vocab_size=64, posterior_prompt=TEMPLATE)  # fmt: skip


def test_the_batch_is_prior_posterior_and_distilled_rows_built_from_the_policys_utilities(cpu_trainer, monkeypatch):
    torch.manual_seed(0)
    measured = []

    def recording(model, contexts, answers, cue=(), **split):
        s = answer_utility(model, contexts, answers, cue, **split)
        measured.append(s)
        return s

    monkeypatch.setattr("zoo.modules.ravr.answer_utility", recording)
    data = _data()
    data.prepare_data()
    module = _Recorded({**POLICY, "vocab_size": len(data.tokenizer)}, rollout=dict(n=3, max_new_tokens=6))
    trainer = cpu_trainer(max_steps=2, limit_val_batches=0, callbacks=[RolloutCallback()])
    trainer.fit(module, datamodule=data)
    batch, s = module.batches[0], measured[0].view(2, 4, 3)
    kind, half = batch.extras["kind"], 4 * 3
    assert kind.tolist() == [PRIOR] * half + [POSTERIOR] * half + [DISTILLED] * half
    posterior, distilled = batch.select(kind == POSTERIOR), batch.select(kind == DISTILLED)
    for row in range(half):
        path = posterior.input_ids[row, 1:][posterior.response_mask[row].bool()]
        path_text = data.tokenizer.decode(path, skip_special_tokens=True)
        assert data.tokenizer.decode(posterior.input_ids[row]).startswith("answer ")  # the posterior's prompt
        assert path_text.count("#") <= 1 and (path_text.endswith("#") or "#" not in path_text)  # up to the cue
        prompt = distilled.input_ids[row, : int(distilled.response_mask[row].nonzero()[0]) + 1]
        taught = distilled.input_ids[row, 1:][distilled.response_mask[row].bool()]
        problem = module.problems[0][row // 3]
        assert data.tokenizer.decode(prompt) == problem["prompt"]  # the question-only prompt
        path_only = path_text.split("#")[0]
        assert data.tokenizer.decode(taught, skip_special_tokens=True) == f"{path_only}#{problem['reference']}"
    weights = batch.extras["weight"][kind == DISTILLED]
    torch.testing.assert_close(weights, ravr_objective.distillation_weights(s[0], s[1]).flatten() / 4)
    advantage = batch.advantages[kind == POSTERIOR].sum(1) / posterior.response_mask.sum(1)
    torch.testing.assert_close(advantage, ravr_objective.posterior_advantages(s[0], s[1]).flatten())
    assert torch.equal(batch.advantages[kind == DISTILLED], torch.zeros_like(batch.advantages[kind == DISTILLED]))
    assert trainer.callback_metrics["train/rollouts"] == 2 * 2 * 4 * 3  # two steps of 4 prompts x (3 + 3)
    for name in ("ravr/mu", "ravr/posterior_utility", "ravr/bayes_posterior_utility", "ravr/kl", "ravr/distilled"):
        assert torch.isfinite(trainer.callback_metrics[name]), name


def test_distillation_alone_teaches_the_prior_what_the_posterior_finds(cpu_trainer, tmp_path):
    """A policy SFT-taught the two methods and to name the one an answer shows, never the keyword's: with the
    posterior gradient and the prior's own reward off, only the utility-weighted cross-entropy on posterior paths
    can raise the prior's greedy accuracy on the hidden rule."""
    torch.manual_seed(0)
    sft_data = SFTDataModule(task="methods", options={"methods": 2, "keywords": 4, "assignment": "random"},
                             train_size=2000, val_size=16, batch_size=16, seq_len=64, vocab_size=64,
                             posterior_prompt=TEMPLATE)  # fmt: skip
    sft_data.prepare_data()
    sft_data.tokenizer.save_pretrained(tmp_path / "tokenizer")
    policy = {**POLICY, "vocab_size": len(sft_data.tokenizer)}
    sft = SFTModule(policy, optim=dict(lr=3e-3, warmup_steps=10))
    cpu_trainer(max_steps=SFT_STEPS, limit_val_batches=0).fit(sft, datamodule=sft_data)
    data = PromptDataModule(task="methods", options={"methods": 2, "keywords": 4}, train_size=400, val_size=64,
                            batch_size=8, tokenizer=str(tmp_path / "tokenizer"), posterior_prompt=TEMPLATE)  # fmt: skip
    ravr = dict(posterior_weight=0.0, prior_weight=0.0, distill_weight=1.0)
    module = RAVRModule(policy, optim=dict(lr=1e-3, warmup_steps=0), rollout=dict(n=4, max_new_tokens=12),
                        evaluation=dict(max_new_tokens=12), ravr=ravr)  # fmt: skip
    module.model = sft.model
    trainer = cpu_trainer(max_steps=RAVR_STEPS, limit_val_batches=1.0, callbacks=[RolloutCallback()])
    before = trainer.validate(module, datamodule=data, verbose=False)[0]["val/pass@1"]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]["val/pass@1"]
    assert 0.2 < before < 0.8  # about 1/2: the prior does not know the rule
    assert after > 0.9 and after > before + 0.2


def test_ravr_from_the_command_line_on_zoos_model_and_on_a_hugging_face_policy(run_zoo, tmp_path, hf_models):
    common = ["data.train_size=40", "data.val_size=2", "data.batch_size=2", "module.rollout.n=2",
              "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false"]  # fmt: skip
    run_zoo("fit", "method=ravr", "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
            "model.intermediate_size=64", *common, "name=ravr_zoo")  # fmt: skip
    run_zoo("fit", "method=ravr", f"model.init_from={hf_models['qwen2']}", "model.impl=hf", *common, "name=ravr_hf",
            "data.posterior_prompt='{prompt} (The answer is {answer}; reason towards it.)'")  # fmt: skip
    for name, engine in (("ravr_zoo", "native"), ("ravr_hf", "hf")):
        (run,) = [p.parent for p in (tmp_path / "runs" / name).rglob("metrics.json")]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["train/rollouts"] == 2 * 2 * 2 * 2 and "val/pass@1" in metrics and "ravr/kl" in metrics
        assert f"rollout: {engine} engine" in (run / "cli.log").read_text()


@pytest.mark.parametrize(
    "override, named",
    [("data.posterior_prompt=null", "data.posterior_prompt"), ("module.ravr.distill_weight=-1", "distill_weight"),
     ("data.posterior_prompt='{question}'", "data.posterior_prompt"), ("module.ravr.cue=x", "module.ravr.cue"),
     ("module.credit=global", "module.credit"), ("module.algorithm.advantage=reinforce_pp", "advantage")],
)  # fmt: skip
def test_bad_ravr_settings_are_one_line(run_zoo, override, named):
    process = run_zoo("fit", "method=ravr", override, "trainer.max_steps=1", "data.train_size=40", "data.val_size=2",
                      check=False)  # fmt: skip
    assert process.returncode != 0
    assert named in process.stderr.strip().splitlines()[-1]
