"""seq2seq: sequence-to-sequence models on PyTorch, from ``train`` to ``translate``."""

from seq2seq.api import Seq2Seq
from seq2seq.config import Config, load_config
from seq2seq.inference import Translator

__all__ = ["Config", "Seq2Seq", "Translator", "load_config"]
__version__ = "0.1.0"
