"""Decoding algorithms, written once against the model contract.

Nothing here knows which model family it drives: searches call ``encode``,
``init_state``, ``step`` and ``reorder`` only, so greedy search, sampling and beam
search serve the GRU and Transformer models, and ensembles of them, alike.
"""

from seq2seq.search.beam import beam_search, length_penalty
from seq2seq.search.common import Hypothesis, Rules
from seq2seq.search.constrained import constrained_beam_search
from seq2seq.search.ensemble import Ensemble, score
from seq2seq.search.greedy import greedy, sample

__all__ = [
    "Ensemble",
    "Hypothesis",
    "Rules",
    "beam_search",
    "constrained_beam_search",
    "greedy",
    "length_penalty",
    "sample",
    "score",
]
