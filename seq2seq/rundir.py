"""The run directory: the one module that knows its file names.

A run directory holds everything a trained model needs later::

    config.yaml                   the resolved config
    src.model, tgt.model          SentencePiece models (one joint.model with data.joint_vocab)
    src_vocab.json, tgt_vocab.json
    best.safetensors              the best validation checkpoint
    last.safetensors              the latest one, with optimizer and trainer state
    step-00001000.safetensors     the last few validations' weights (for averaging)
    averaged.safetensors          written by ``seq2seq average``
    teacher/                      a distilled student's teacher translations
    cache/                        tokenized data, reused on resume
    train.log, curves.png, tensorboard/

A CTranslate2 export is laid out the same way without checkpoints, plus CTranslate2's
own ``model.bin``. Every other module asks a :class:`RunDir` for these paths.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from seq2seq.checkpoint import Checkpoint, load_checkpoint
from seq2seq.config import Config, parse_config, save_config
from seq2seq.errors import CheckpointError

CHECKPOINTS = ("best", "last", "averaged")  # the named checkpoints of a run


class RunDir:
    """Paths of one run directory, the "best, else last" rule, and its config.

    Args:
        path: the directory (it need not exist yet).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ files

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def last(self) -> Path:
        return self.path / "last.safetensors"

    @property
    def best(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def averaged(self) -> Path:
        return self.path / "averaged.safetensors"

    @property
    def cache(self) -> Path:
        return self.path / "cache"

    @property
    def log_file(self) -> Path:
        return self.path / "train.log"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def teacher_dir(self) -> Path:
        """A distilled student's teacher translations (``seq2seq distill``)."""
        return self.path / "teacher"

    @property
    def teacher_outputs(self) -> Path:
        return self.teacher_dir / "train.hyp"

    @property
    def teacher_key(self) -> Path:
        """What made ``teacher_outputs``: teacher, checkpoint digest, beam, sources."""
        return self.teacher_dir / "made_by.json"

    @property
    def ct2_model(self) -> Path:
        """CTranslate2's model file in an export directory."""
        return self.path / "model.bin"

    @staticmethod
    def codec_names(joint: bool) -> tuple[str, str]:
        """The source and target tokenizer names (one shared name with a joint vocabulary)."""
        return ("joint", "joint") if joint else ("src", "tgt")

    def tokenizer_file(self, name: str) -> Path:
        """A SentencePiece model (``src``, ``tgt`` or ``joint``)."""
        return self.path / f"{name}.model"

    def vocab_file(self, name: str) -> Path:
        return self.path / f"{name}_vocab.json"

    def step_checkpoint(self, step: int) -> Path:
        return self.path / f"step-{step:08d}.safetensors"

    def step_checkpoints(self) -> list[Path]:
        """The per-validation checkpoints, oldest first."""
        return sorted(self.path.glob("step-*.safetensors"))

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, name: str) -> Path:
        """The file of ``best`` (``last`` until a best exists), ``last``, ``averaged``,
        or ``name`` itself when it is a path.

        Raises:
            CheckpointError: a named checkpoint the run does not hold yet.
        """
        if name not in CHECKPOINTS:
            return Path(name)
        path = self.path / f"{name}.safetensors"
        if name == "best" and not path.is_file():
            path = self.last
        if not path.is_file():
            raise CheckpointError(f"{self.path}: no checkpoint ({name}.safetensors) yet")
        return path

    def load(self, name: str = "best") -> Checkpoint:
        """Read checkpoint ``name`` (see :meth:`checkpoint`) of this run.

        Raises:
            CheckpointError: not a run directory, or the checkpoint is missing or unusable.
        """
        self.require()
        return load_checkpoint(self.checkpoint(name))

    # ------------------------------------------------------------------ config

    def is_run(self) -> bool:
        return self.config_file.is_file()

    def require(self) -> None:
        """Raises CheckpointError unless this directory holds a run (its config)."""
        if not self.is_run():
            raise CheckpointError(
                f"{self.path}: not a run directory (no {self.config_file.name}); train one "
                "with 'seq2seq train CONFIG --out DIR'"
            )

    def config(self) -> Config:
        """The resolved config the run was trained with.

        Raises:
            CheckpointError: not a run directory.
            ConfigError: the stored config is invalid.
        """
        self.require()
        return parse_config(self.config_file.read_text(encoding="utf-8"), str(self.config_file))

    def save_config(self, cfg: Config) -> None:
        save_config(cfg, self.config_file)

    def copy_codecs(self, joint: bool, target: RunDir) -> None:
        """Copy the tokenizer and vocabulary files to another directory."""
        target.path.mkdir(parents=True, exist_ok=True)
        for name in dict.fromkeys(self.codec_names(joint)):
            for path in (self.vocab_file(name), self.tokenizer_file(name)):
                copy = target.path / path.name
                if path.is_file() and path.resolve() != copy.resolve():
                    shutil.copyfile(path, copy)
