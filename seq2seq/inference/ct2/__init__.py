"""CTranslate2: export a Transformer run, and decode the export as an inference engine.

``ctranslate2`` is an optional dependency (``pip install -e ".[ctranslate2]"``),
imported only when used.
"""

from seq2seq.inference.ct2.engine import CTranslate2Translator, compute_type_for
from seq2seq.inference.ct2.export import export_ctranslate2, require_ctranslate2

__all__ = ["CTranslate2Translator", "compute_type_for", "export_ctranslate2", "require_ctranslate2"]
