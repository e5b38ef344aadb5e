"""Loop probes: the three diagnostics of the MeSH paper (arXiv:2510.07739, §2) on a model's hidden states.

For a batch of sequences, each state is a (seq × hidden) matrix per sequence; every probe is computed per
sequence and then averaged (the paper averages over 500 Pile samples).

- **Relative update** of a stage f (prelude, each core loop, coda; or each block of a plain model) on its input
  h: ``2·||f(h) − h||_F / (||f(h)||_F + ||h||_F)``, reported as mean and std over sequences.
- **CKA with an RBF kernel** (Kornblith et al., 2019) between every pair of states (h_emb, h^(0) … h^(K),
  h_out): Gram matrices ``K_ij = exp(−||x_i − x_j||² / (2σ²))`` over the tokens of a sequence, σ² = median
  squared distance, then ``HSIC(K, L) / sqrt(HSIC(K, K)·HSIC(L, L))`` with centred Grams.
- **Normalised spectrum**: the top-50 singular values of each state, divided by the largest (fast decay means
  low effective rank: the paper's loop representational collapse).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOP_SINGULAR_VALUES = 50


def relative_update(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per sequence (B,): ``2·||after − before||_F / (||after||_F + ||before||_F)`` over (T, D)."""
    difference = (after - before).flatten(1).norm(dim=1)
    return 2 * difference / (after.flatten(1).norm(dim=1) + before.flatten(1).norm(dim=1))


def rbf_gram(x: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """RBF Gram matrix (n, n) of the rows of ``x`` (n, p), bandwidth from the median squared distance."""
    squared = torch.cdist(x, x).pow(2)
    sigma_squared = threshold**2 * squared.median()
    return torch.exp(-squared / (2 * sigma_squared.clamp(min=torch.finfo(x.dtype).tiny)))


def _centred(gram: torch.Tensor) -> torch.Tensor:
    return gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()


def cka_rbf(x: torch.Tensor, y: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """Centred kernel alignment of two representations of the same n points (rows), RBF kernels."""
    gram_x, gram_y = _centred(rbf_gram(x, threshold)), _centred(rbf_gram(y, threshold))
    return (gram_x * gram_y).sum() / ((gram_x * gram_x).sum() * (gram_y * gram_y).sum()).sqrt()


def normalized_spectrum(x: torch.Tensor, top: int = TOP_SINGULAR_VALUES) -> torch.Tensor:
    """The largest ``top`` singular values of ``x`` (T, D) divided by the largest."""
    singular = torch.linalg.svdvals(x)[:top]
    return singular / singular[0]


@dataclass
class ProbeReport:
    stages: list[str]
    update_mean: torch.Tensor  # (stages,)
    update_std: torch.Tensor
    states: list[str]
    cka: torch.Tensor  # (states, states), averaged over sequences
    spectra: torch.Tensor  # (states, top), averaged over sequences

    def scalars(self) -> dict[str, float]:
        """What goes to TensorBoard: updates per stage, CKA of consecutive states, spectrum decay per state."""
        out = {f"probe/update/{s}": m.item() for s, m in zip(self.stages, self.update_mean, strict=True)}
        for i in range(len(self.states) - 1):
            out[f"probe/cka/{self.states[i]}-{self.states[i + 1]}"] = self.cka[i, i + 1].item()
        last = self.spectra.shape[1] - 1
        for name, spectrum in zip(self.states, self.spectra, strict=True):
            out[f"probe/sigma{last + 1}_over_sigma1/{name}"] = spectrum[last].item()
        return out


@torch.no_grad()
def loop_probes(model: torch.nn.Module, input_ids: torch.Tensor) -> ProbeReport:
    """Trace ``model`` on ``input_ids`` (B, T) and compute the three probes in fp32 on the CPU."""
    trace = model.trace(input_ids)
    states = {name: h.float().cpu() for name, h in trace.states.items()}
    updates = {name: relative_update(a.float().cpu(), b.float().cpu()) for name, (a, b) in trace.updates.items()}
    names = list(states)
    batch = input_ids.shape[0]
    cka = torch.zeros(len(names), len(names))
    for i, a in enumerate(names):
        for j in range(i, len(names)):
            value = sum(cka_rbf(states[a][s], states[names[j]][s]) for s in range(batch)) / batch
            cka[i, j] = cka[j, i] = value
    top = min(TOP_SINGULAR_VALUES, *states[names[0]].shape[1:])
    spectra = torch.stack(
        [torch.stack([normalized_spectrum(states[n][s], top) for s in range(batch)]).mean(0) for n in names]
    )
    stacked = torch.stack(list(updates.values()))
    return ProbeReport(list(updates), stacked.mean(1), stacked.std(1), names, cka, spectra)


def figures(report: ProbeReport) -> dict:
    """Matplotlib figures: relative updates per stage, the CKA matrix, the normalised spectra (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    update, ax = plt.subplots(figsize=(5, 3))
    ax.bar(report.stages, report.update_mean.numpy(), yerr=report.update_std.numpy(), capsize=3)
    ax.set_ylabel("relative update")
    update.tight_layout()

    cka, ax = plt.subplots(figsize=(4.5, 4))
    image = ax.imshow(report.cka.numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(report.states)), report.states, rotation=45)
    ax.set_yticks(range(len(report.states)), report.states)
    cka.colorbar(image, ax=ax)
    ax.set_title("RBF CKA")
    cka.tight_layout()

    spectrum, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in zip(report.states, report.spectra, strict=True):
        ax.plot(range(1, len(values) + 1), values.numpy(), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("σ_i / σ_1")
    ax.legend(fontsize=7)
    spectrum.tight_layout()
    return {"probe/relative_update": update, "probe/cka": cka, "probe/spectrum": spectrum}
