"""The copy (pointer-generator) head of See et al. (2017), shared by both model families.

A gate ``p_gen = sigmoid(w . [decoder output; decoder input])`` mixes the vocabulary
distribution with the attention distribution scattered onto the source token ids:

    p(w) = p_gen * softmax(logits)[w] + (1 - p_gen) * sum_{i: src_i = w} a_i

It needs one vocabulary for both sides (``data.joint_vocab``), so that a source id is
the target id of the same piece. The head returns log-probabilities; the training loss
takes them as logits (their log-sum-exp is 0), and decoding uses them as ``step``
returns them.
"""

from __future__ import annotations

import torch
from torch import nn

_FLOOR = 1e-12  # keeps log() finite where both distributions give a token nothing


class CopyHead(nn.Module):
    """Mixes generating from the vocabulary with copying from the source.

    Args:
        gate_dim: size of the gate's input (decoder output and input embedding, joined).
    """

    def __init__(self, gate_dim: int):
        super().__init__()
        self.gate = nn.Linear(gate_dim, 1)

    def forward(
        self,
        logits: torch.Tensor,
        attention: torch.Tensor,
        src: torch.Tensor,
        gate_input: torch.Tensor,
    ) -> torch.Tensor:
        """Log-probabilities of the mixed distribution.

        Args:
            logits: vocabulary logits ``[rows, vocab]``.
            attention: weights over the source ``[rows, src_len]`` (zero at padding).
            src: the source id of each attended position ``[rows, src_len]``.
            gate_input: ``[rows, gate_dim]``.

        Returns:
            ``[rows, vocab]`` log-probabilities (in fp32).
        """
        p_gen = torch.sigmoid(self.gate(gate_input).float())  # [rows, 1]
        generate = logits.float().softmax(-1) * p_gen  # [rows, vocab]
        copied = attention.float() * (1.0 - p_gen)  # [rows, src_len]
        return generate.scatter_add(1, src, copied).clamp_min(_FLOOR).log()

    def teacher_forced(
        self,
        project,
        states: torch.Tensor,
        attention: torch.Tensor,
        src: torch.Tensor,
        gate_input: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor:
        """The mixed log-probabilities of a teacher-forced pass, at the ``keep`` positions.

        Args:
            project: the output layer, features -> vocabulary logits.
            states, attention, gate_input: ``[batch, tgt_len, ...]`` decoder outputs,
                weights over the source and gate inputs.
            src: source ids ``[batch, src_len]``.
            keep: True where output is wanted (``[batch, tgt_len]``); None: everywhere.

        Returns:
            ``[kept, vocab]``, or ``[batch, tgt_len, vocab]`` without ``keep``; the output
            layer runs on the kept positions only.
        """
        rows = keep if keep is not None else torch.ones(states.shape[:2], dtype=torch.bool)
        rows = rows.to(states.device)
        ids = src.unsqueeze(1).expand(-1, states.size(1), -1)  # [batch, tgt_len, src_len]
        out = self(project(states[rows]), attention[rows], ids[rows], gate_input[rows])
        return out if keep is not None else out.view(*states.shape[:2], -1)
