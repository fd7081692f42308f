"""Inference: engines that turn raw text into translations, and what they share.

* :mod:`~seq2seq.inference.engine`: the :class:`Engine` interface, :class:`Translation`,
  and the encode -> decode_batch -> finish loop;
* :mod:`~seq2seq.inference.translator`: the native :class:`Translator`;
* :mod:`~seq2seq.inference.loading`: models from run directories (ensembles too);
* :mod:`~seq2seq.inference.compress`: int8 and bf16 inference copies;
* :mod:`~seq2seq.inference.evaluate`: translate and score a test set;
* :mod:`~seq2seq.inference.ct2`: CTranslate2 export and engine (optional dependency).
"""

from seq2seq.inference.engine import Engine, Translation
from seq2seq.inference.evaluate import Evaluation, evaluate
from seq2seq.inference.loading import load_run
from seq2seq.inference.translator import Translator

__all__ = ["Engine", "Evaluation", "Translation", "Translator", "evaluate", "load_run"]
