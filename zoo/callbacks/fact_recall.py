"""Fact recall during training: after every validation, the share of general facts the model still knows
(``recall/general``, retention) and of infused domain facts it has learnt (``recall/domain``, acquisition),
for a data module with ``recall_sets()`` (:class:`zoo.datamodules.infusion.InfusionDataModule`).

Recall is multiple choice over the relation's values: after the fact's question (``"Q: Where was X born?
A:"``) the model scores every value the relation can take by the summed log-probability of its tokens; the
fact counts as known when the true value scores highest.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torchmetrics.aggregation import MeanMetric

from zoo.infusion.knowledge import Fact


@torch.no_grad()
def recall_accuracy(model: torch.nn.Module, tokenizer, facts: Sequence[Fact], batch_size: int = 512) -> float:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sequences, spans, truth = [], [], []
    for fact in facts:
        prompt = tokenizer(fact.question(), add_special_tokens=False)["input_ids"]
        for value in fact.relation.values:
            answer = tokenizer(" " + value, add_special_tokens=False)["input_ids"]
            sequences.append(prompt + answer)
            spans.append((len(prompt), len(prompt) + len(answer)))
        truth.append(fact.relation.values.index(fact.value))
    scores = torch.empty(len(sequences))
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, sequence in enumerate(chunk):
            ids[row, : len(sequence)] = torch.tensor(sequence)
        logprobs = torch.log_softmax(model(ids.to(device)).float(), -1)
        for row, (begin, end) in enumerate(spans[start : start + batch_size]):
            targets = ids[row, begin:end].to(device)
            scores[start + row] = logprobs[row, begin - 1 : end - 1].gather(1, targets[:, None]).sum()
    model.train(was_training)
    metric = MeanMetric()
    per_fact = scores.split([len(f.relation.values) for f in facts])  # each fact's candidates, in value order
    metric.update(torch.tensor([float(s.argmax() == t) for s, t in zip(per_fact, truth, strict=True)]))
    return float(metric.compute())


class FactRecall(L.Callback):
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        if trainer.sanity_checking or not hasattr(data, "recall_sets"):
            return
        for name, facts in data.recall_sets().items():
            pl_module.log(f"recall/{name}", recall_accuracy(pl_module.model, data.tokenizer, facts))
        pl_module.log_dict(data.stats)
