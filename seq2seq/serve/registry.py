"""The models a server holds: each a loaded engine, its run's settings, and the engines
configured for each request's decode settings.

A request's decode settings (``beam``, ``nbest``, ``sample`` and ``decode``) become one
engine per distinct set, made with ``configure`` (the same weights) and kept for the
next request that asks alike, so the batcher can pool requests by engine. Settings that
change the arithmetic (``precision``, ``quantize``) or the batch budget belong to the
server's command line, not to requests.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seq2seq.config import Config, to_dict
from seq2seq.data.records import lang_tag, task_tag
from seq2seq.errors import ConfigError
from seq2seq.inference import Engine
from seq2seq.inference.engine import known_tags
from seq2seq.rundir import RunDir

SERVER_SETTINGS = ("batch_tokens", "precision", "quantize")  # per server, never per request
CONFIGURED = 64  # engines kept per model for distinct request settings (least recent go)


@dataclass
class ServedModel:
    """One model behind the server.

    Args:
        name: what requests call it (``"model"``).
        engine: the engine with the server's decode settings.
        config: the run's config (family, languages, defaults).
        kind: ``native`` or ``ctranslate2``.
    """

    name: str
    engine: Engine
    config: Config
    kind: str
    _configured: OrderedDict = field(default_factory=OrderedDict, repr=False)  # by request
    _alike: dict = field(default_factory=dict, repr=False)  # by decode settings
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def engine_for(self, settings: dict[str, Any]) -> Engine:
        """The engine decoding with ``settings`` changed.

        Requests whose settings come to the same decode configuration share one engine
        (and so one batch). Seeded sampling gets a fresh engine each time: its samples
        then depend on the seed and the request alone, as with ``seq2seq translate``.

        Raises:
            ConfigError: a setting that is the server's, unknown or invalid.
        """
        for name in SERVER_SETTINGS:
            if name in settings:
                raise ConfigError(
                    f"decode.{name} is set for the whole server (seq2seq serve "
                    f"--{name.replace('_', '-')} or -d {name}=...), not per request"
                )
        key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
        with self._lock:
            engine = self._configured.get(key)
            if engine is not None:
                self._configured.move_to_end(key)
        if engine is None:
            engine = self.engine.configure(**settings)
            with self._lock:
                engine = self._alike.setdefault(repr(engine.decode), engine)
                self._configured[key] = engine
                while len(self._configured) > CONFIGURED:
                    self._configured.popitem(last=False)
                if len(self._alike) > CONFIGURED:  # keep those some request key names
                    live = {id(e) for e in self._configured.values()}
                    self._alike = {k: e for k, e in self._alike.items() if id(e) in live}
        d = engine.decode
        if d.method == "sample" and d.seed is not None:
            return self.engine.configure(**{**settings, "seed": d.seed})
        return engine

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` tells of this model."""
        data, model = self.config.data, self.config.model
        codec = self.engine.src_codec
        return {
            "name": self.name,
            "family": model.cell if model.arch == "rnn" else model.arch,  # gru, lstm, transformer
            "engine": self.kind,
            "src_lang": data.src_lang,
            "tgt_lang": data.tgt_lang,
            "target_languages": known_tags(codec, lang_tag) if data.lang_tags else [],
            "tasks": known_tags(codec, task_tag) if data.task_tags else [],
            "attention": self.engine.has_attention,
            "decode": to_dict(Config(decode=self.engine.decode))["decode"],
        }


def load_served(
    specs: list[str],
    kind: str = "native",
    device: str = "auto",
    decode: dict | None = None,
    threads: int = 0,
) -> dict[str, ServedModel]:
    """Load the runs (or CTranslate2 exports) named on the command line.

    Args:
        specs: run directories, each optionally ``NAME=DIR`` (else the directory's name).
        kind: ``native`` or ``ctranslate2``.
        device: ``auto``, ``cpu`` or ``cuda``.
        decode: decode overrides for every model (the server's settings).
        threads: CTranslate2's threads per translation (0: its choice).

    Raises:
        ConfigError: two models with one name.
        CheckpointError: a directory that is not a usable run or export.
    """
    served: dict[str, ServedModel] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).resolve().name, spec
        if name in served:
            raise ConfigError(
                f"two models are called {name!r}: name them with NAME=RUN_DIR, e.g. {name}2={path}"
            )
        engine = _load_engine(path, kind, device, decode, threads)
        served[name] = ServedModel(name, engine, RunDir(path).config(), kind)
    return served


def _load_engine(path: str, kind: str, device: str, decode: dict | None, threads: int) -> Engine:
    if kind == "ctranslate2":
        from seq2seq.inference.ct2 import CTranslate2Translator

        return CTranslate2Translator.from_export(path, decode, device=device, threads=threads)
    from seq2seq.inference import Translator

    return Translator.from_run(path, "best", device, decode)
