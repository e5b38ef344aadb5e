"""model.gradient_checkpointing on every zoo model: each block's activations are recomputed in the backward pass
(every block runs twice a training step), and the loss and gradients equal those without it; it carries over
model.init_from, and evaluation does not recompute."""

import torch

from zoo.models import build_model, config_from_dict


def _block_calls(model) -> list[int]:
    calls = []
    for module in model.modules():
        if isinstance(module, model.block_class):
            module.register_forward_pre_hook(lambda *_: calls.append(1))  # a recompute may stop before the end
    return calls


def test_recomputed_blocks_give_the_same_loss_and_gradients(zoo_model_settings):
    input_ids = torch.randint(0, 97, (2, 16))
    results = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(config_from_dict({**zoo_model_settings, "gradient_checkpointing": checkpointing})).train()
        calls = _block_calls(model)
        loss = model(input_ids[:, :-1], targets=input_ids[:, 1:])
        forward_calls = len(calls)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[checkpointing] = loss.detach(), grads, forward_calls, len(calls)
    (loss, grads, forward, total), (loss_ckpt, grads_ckpt, forward_ckpt, total_ckpt) = results[False], results[True]
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert forward_ckpt == forward == total  # without checkpointing no block runs in the backward pass
    assert total_ckpt == 2 * forward  # with it, every block runs again


def test_evaluation_does_not_recompute(zoo_model_settings):
    model = build_model(config_from_dict({**zoo_model_settings, "gradient_checkpointing": True})).eval()
    calls = _block_calls(model)
    model(torch.randint(0, 97, (1, 8))).sum().backward()
    forward = len(calls)
    model.train()
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 8)))
    assert len(calls) == 2 * forward  # eval mode, then no gradients: each block once a forward


def test_the_setting_carries_over_a_starting_point():
    """model.init_from takes the entry's architecture and keeps how the model is to be trained."""
    from types import SimpleNamespace

    from zoo.run import _architecture

    data = SimpleNamespace(vocab_size=64, hparams={})
    values = {"arch": "gpt_neox", "init_from": "hub:pythia-tiny", "gradient_checkpointing": True}
    config = _architecture(dict(values), data)
    assert config["gradient_checkpointing"] is True and config["hidden_size"] != 32  # pythia-tiny's architecture
    assert _architecture({**values, "gradient_checkpointing": False}, data)["gradient_checkpointing"] is False
