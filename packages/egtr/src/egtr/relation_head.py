"""EGTR's relation head: pairwise relations from the decoder's self-attention queries and keys.

Each decoder layer ``l`` gives a query ``Q^l`` and key ``K^l`` per object query; the pair source
``S^l[i, j] = [proj_q[l](Q^l_i) ; proj_k[l](K^l_j)]`` (plus one source from the last hidden state) is
gated, summed over sources and fed to two MLPs (predicates, connectivity). :class:`RelationHead`
computes this without building the ``[B, N, N, L+1, 2d]`` pair tensor: the gate and the first MLP
layer are linear in the two halves of each source, so they are evaluated per query and combined per
pair. :func:`literal_relation_logits` is the literal construction, kept for tests and benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PredictionMLP(nn.Module):
    """A plain MLP (``Linear`` layers with ReLU between them), as DETR's prediction heads.

    ``forward(x)`` returns ``[..., output_dim]`` for ``x`` ``[..., input_dim]``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        """The MLP's output, ``[..., output_dim]`` for ``x`` ``[..., input_dim]``."""
        return self.tail(x, start=0)

    def tail(self, x: Tensor, start: int) -> Tensor:
        """Run layers ``start..`` on ``x`` (``x`` is the pre-activation output of layer ``start-1``);
        returns the last layer's output."""
        if start > 0:
            x = F.relu(x)
        last = len(self.layers) - 1
        for index in range(start, len(self.layers)):
            x = self.layers[index](x)
            if index < last:
                x = F.relu(x)
        return x


class RelationHead(nn.Module):
    """Relation and connectivity logits from per-layer queries/keys and the last decoder output.

    Inputs: ``queries`` and ``keys`` ``[B, L, N, d]`` (unscaled ``q_proj``/``k_proj`` outputs of each
    decoder layer's self-attention, heads concatenated), ``last_hidden`` ``[B, N, d]``.
    Outputs: relation logits ``[B, N, N, P]`` (subject = row, object = column) and connectivity
    logits ``[B, N, N]``, before any frequency bias (``forward`` returns both). Inputs of other
    shapes raise ``ValueError``.
    """

    def __init__(self, d_model: int, num_layers: int, num_rel_labels: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.num_layers = num_layers
        self.proj_q = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(num_layers))
        self.proj_k = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(num_layers))
        self.final_sub_proj = nn.Linear(d_model, d_model)
        self.final_obj_proj = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(2 * d_model, 1)
        self.rel_mlp = PredictionMLP(2 * d_model, d_model, num_rel_labels, 3)
        self.connectivity_mlp = PredictionMLP(2 * d_model, d_model, 1, 3)

    def sources(self, queries: Tensor, keys: Tensor, last_hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Subject and object halves of every source, ``[B, L+1, N, d]`` each.

        Raises ``ValueError`` for inputs of the wrong shape.
        """
        self._check(queries, keys, last_hidden)
        subj = [proj(queries[:, layer]) for layer, proj in enumerate(self.proj_q)]
        obj = [proj(keys[:, layer]) for layer, proj in enumerate(self.proj_k)]
        subj.append(self.final_sub_proj(last_hidden))
        obj.append(self.final_obj_proj(last_hidden))
        return torch.stack(subj, dim=1), torch.stack(obj, dim=1)

    def gates(self, subj: Tensor, obj: Tensor) -> Tensor:
        """Gate of every source and pair, ``[B, L+1, N, N]``: ``sigmoid(a_i + b_j)``."""
        d = self.d_model
        weight = self.gate.weight[0]
        a = subj @ weight[:d] + self.gate.bias[0]
        b = obj @ weight[d:]
        return torch.sigmoid(a.unsqueeze(-1) + b.unsqueeze(-2))

    def forward(self, queries: Tensor, keys: Tensor, last_hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``(relation logits [B, N, N, P], connectivity logits [B, N, N])``, no frequency bias.

        ``queries``/``keys`` are ``[B, L, N, d]`` and ``last_hidden`` ``[B, N, d]``; subject =
        row, object = column. Raises ``ValueError`` for inputs of the wrong shape.
        """
        subj, obj = self.sources(queries, keys, last_hidden)
        gates = self.gates(subj, obj)  # [B, S, N(i), N(j)]
        # sources last, batched by subject and by object: small ([B, N, N, S]) contiguous copies
        # that turn both sums over sources into plain batched matmuls
        by_subject = gates.permute(0, 2, 3, 1).contiguous()  # [B, N(i), N(j), S]
        by_object = gates.permute(0, 3, 2, 1).contiguous()  # [B, N(j), N(i), S]
        rel = self._mlp_on_pairs(self.rel_mlp, by_subject, by_object, subj, obj)
        conn = self._mlp_on_pairs(self.connectivity_mlp, by_subject, by_object, subj, obj)
        return rel, conn.squeeze(-1)

    def _mlp_on_pairs(
        self, mlp: PredictionMLP, by_subject: Tensor, by_object: Tensor, subj: Tensor, obj: Tensor
    ) -> Tensor:
        """``mlp(sum_s g_s [subj_i ; obj_j])`` for all pairs, first layer factorised per query."""
        d = self.d_model
        first = mlp.layers[0]
        assert isinstance(first, nn.Linear)
        subj_h = (subj @ first.weight[:, :d].T).transpose(1, 2)  # [B, N(i), S, h]
        obj_h = (obj @ first.weight[:, d:].T).transpose(1, 2)  # [B, N(j), S, h]
        # hidden[b, i, j] = sum_s g[b, s, i, j] * (subj_h[b, i, s] + obj_h[b, j, s]) + bias
        # (batched matmuls with K = S; einsum picked a strided path here, seconds on CPU at N=200)
        hidden = torch.matmul(by_subject, subj_h)  # [B, N(i), N(j), h]
        hidden += torch.matmul(by_object, obj_h).transpose(1, 2)  # [B, N(j), N(i), h] -> (i, j)
        assert first.bias is not None
        hidden += first.bias
        return mlp.tail(hidden, start=1)

    def _check(self, queries: Tensor, keys: Tensor, last_hidden: Tensor) -> None:
        expected = (self.num_layers, self.d_model)
        for name, tensor in (("queries", queries), ("keys", keys)):
            if tensor.dim() != 4 or (tensor.shape[1], tensor.shape[3]) != expected:
                raise ValueError(
                    f"{name} must be [B, {self.num_layers}, N, {self.d_model}], got {tuple(tensor.shape)}"
                )
        if last_hidden.dim() != 3 or last_hidden.shape[-1] != self.d_model:
            raise ValueError(
                f"last_hidden must be [B, N, {self.d_model}], got {tuple(last_hidden.shape)}"
            )


def literal_relation_logits(
    head: RelationHead, queries: Tensor, keys: Tensor, last_hidden: Tensor
) -> tuple[Tensor, Tensor]:
    """The definition, literally: build the ``[B, N, N, L+1, 2d]`` pair tensor, gate, sum, MLPs.

    Returns ``(relation logits [B, N, N, P], connectivity logits [B, N, N])``; raises
    ``ValueError`` as :meth:`RelationHead.sources`. Memory grows as ``N^2 (L+1) 2d``; use
    :class:`RelationHead` itself for real work.
    """
    subj, obj = head.sources(queries, keys, last_hidden)  # [B, S, N, d]
    n = subj.shape[2]
    subj_pairs = subj.permute(0, 2, 1, 3).unsqueeze(2).expand(-1, -1, n, -1, -1)  # [B, N, N, S, d]
    obj_pairs = obj.permute(0, 2, 1, 3).unsqueeze(1).expand(-1, n, -1, -1, -1)
    pairs = torch.cat([subj_pairs, obj_pairs], dim=-1)  # [B, N, N, S, 2d]
    gated = (torch.sigmoid(head.gate(pairs)) * pairs).sum(dim=-2)  # [B, N, N, 2d]
    return head.rel_mlp(gated), head.connectivity_mlp(gated).squeeze(-1)


def build_triplet_dist(counts: Tensor) -> Tensor:
    """Frequency-bias table from training counts ``fg[subject_class, object_class, predicate]``.

    Exactly the reference's construction, ``log(fg + 1e-12 / (fg.sum(-1) + 1e-12))``: by operator
    precedence this is ``log(count + tiny)`` — about ``log(count)`` for seen triplets, about -27.6
    for an unseen predicate of a seen pair and 0 for an unseen pair. Released checkpoints store it.

    Returns a float32 tensor of the same shape; raises ``ValueError`` unless ``counts`` is 3-D.
    """
    if counts.dim() != 3:
        raise ValueError(f"counts must be [C+1, C+1, P], got {tuple(counts.shape)}")
    fg = counts.to(torch.float64)
    eps = 1e-12
    return torch.log((fg + eps / (fg.sum(-1, keepdim=True) + eps)).to(torch.float32))


def build_rel_dist(counts: Tensor) -> Tensor:
    """Predicate marginal ``[P]`` (float32, sums to 1) from the same counts (used by the optional
    logit adjustment)."""
    fg = counts.to(torch.float64)
    eps = 1e-12
    return (fg.sum(dim=(0, 1)) / (fg.sum() + eps)).to(torch.float32)
