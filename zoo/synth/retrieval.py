"""Coarse ranking (DESIGNER, notes §3.3): for each source segment, the top-k design logics by cosine similarity
s(t, d) = cos(e(t), e(d)), within the segment's discipline when asked.

Each segment's scores are its own row (float64, rounded to 12 decimals so that a BLAS blocking difference cannot
reorder near-ties) and ties go to the lower logic index, so a segment's top-k never depends on which other
segments share its batch or in what order they come.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def top_k(
    segments: torch.Tensor,
    logics: torch.Tensor,
    k: int = 5,
    segment_groups: Sequence[str] | None = None,
    logic_groups: Sequence[str] | None = None,
    chunk: int = 1024,
) -> list[list[tuple[int, float]]]:
    """For each segment, up to ``k`` ``(logic index, cosine)`` pairs, best first. With groups, a segment sees only
    the logics of its own group (a segment whose group has no logic sees all of them)."""
    unit_s = torch.nn.functional.normalize(segments.double(), dim=1)
    unit_l = torch.nn.functional.normalize(logics.double(), dim=1)
    if segment_groups is not None and logic_groups is not None:
        names = {g: i for i, g in enumerate(sorted(set(logic_groups)))}
        logic_code = torch.tensor([names[g] for g in logic_groups])
        segment_code = torch.tensor([names.get(g, -1) for g in segment_groups])
    results: list[list[tuple[int, float]]] = []
    for start in range(0, len(unit_s), chunk):
        scores = torch.round(unit_s[start : start + chunk] @ unit_l.T, decimals=12)
        if segment_groups is not None and logic_groups is not None:
            codes = segment_code[start : start + chunk, None]
            allowed = (logic_code[None, :] == codes) | (codes == -1)
            scores = scores.masked_fill(~allowed, -torch.inf)
        order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]  # stable: ties keep the lower index
        for row, indices in enumerate(order.tolist()):
            results.append([(i, float(scores[row, i])) for i in indices if scores[row, i] > -torch.inf])
    return results
