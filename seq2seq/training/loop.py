"""The training loop: explicit and linear, one comment per phase.

The trainer knows nothing about the model family or the tokenizers: it gets a model
implementing the contract, encoded examples, and an optional ``score_fn`` that
decodes the validation set and returns a score (BLEU) for early stopping.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from seq2seq.checkpoint import (
    load_checkpoint,
    restore_model,
    restore_optimizer,
    save_checkpoint,
)
from seq2seq.config import Config, dump_config
from seq2seq.data.batching import Batch, Examples, collate
from seq2seq.data.vocab import PAD
from seq2seq.errors import ConfigError
from seq2seq.models.contract import Seq2SeqModel
from seq2seq.models.prune import zero_masks
from seq2seq.rundir import RunDir
from seq2seq.training.distributed import SINGLE, Ranks, job_id
from seq2seq.training.loss import batch_loss, mean_loss
from seq2seq.training.optim import Schedule, build_optimizer
from seq2seq.training.order import StreamOrder, batch_order
from seq2seq.training.precision import autocast, grad_scaler, limit_kernel_cache, resolve

log = logging.getLogger("seq2seq")
_READ = {"stream": "as a stream", "memory": "into memory"}  # the two kinds of batch order
# Per-step lines go to the run's train.log only, never to the console.
step_log = logging.getLogger("seq2seq.steps")
step_log.propagate = False


@dataclass
class Progress:
    """Everything besides weights and optimizer needed to resume exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already consumed
    elapsed: float = 0.0  # training wall time so far, seconds (``train.max_time``)
    tgt_tokens: int = 0  # target tokens trained on so far
    best: float | None = None
    bad_validations: int = 0
    stopped: str = ""
    history: list[dict] = field(default_factory=list)


@dataclass
class StepResult:
    """What one update did: summed loss and real target tokens (of all ranks), this
    rank's real source tokens and padded positions, the learning rate."""

    loss: float
    tgt_tokens: int
    src_tokens: int
    padded_positions: int  # source + target positions including padding
    lr: float


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (0 where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KB


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


class Trainer:
    """Trains one model in one run directory.

    Args:
        cfg: the resolved config (``train`` and ``decode`` sections are used).
        model: any model implementing the contract, already on ``device``.
        train: encoded training pairs.
        valid: encoded validation pairs (loss and perplexity), or None.
        run_dir: where checkpoints and TensorBoard events go.
        device: where batches are sent.
        score_fn: decodes the validation set with the current model, returns its scores
            (``{"valid_bleu": ..., ...}``; see ``driver.prepare``).
        ranks: this process's place among several training processes (torchrun).
            Each update takes ``train.accumulate`` batches per rank from the one batch
            order, so N ranks equal one process accumulating N times as many; only
            rank 0 validates (``valid`` and ``score_fn`` are for it) and writes, and
            the others receive its results.
    """

    def __init__(
        self,
        cfg: Config,
        model: Seq2SeqModel,
        train: Examples,
        valid: Examples | None,
        run_dir: RunDir | Path,
        device: torch.device,
        score_fn: Callable[[], dict[str, float]] | None = None,
        ranks: Ranks = SINGLE,
    ):
        self.cfg, self.tc, self.ranks = cfg, cfg.train, ranks
        self.model, self.train_data, self.valid_data = model, train, valid
        # The module trained through: DDP averages the ranks' gradients during backward.
        self.net: torch.nn.Module = model
        if ranks.grouped:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids)
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.device, self.score_fn = device, score_fn
        self.optimizer = build_optimizer(self.tc, model.parameters())
        self.schedule = Schedule(self.tc)
        self.progress = Progress()
        self._writer = None
        weights = tuple(t.weight for t in cfg.data.tasks)
        self.order = batch_order(
            train, self.tc.batch_tokens, self.tc.pool_batches, self.tc.seed, weights
        )
        self._since_valid = [0.0, 0]  # summed training loss and target tokens
        self._masks: list = []  # a magnitude-pruned model's zeros, kept zero (see _train)
        # Under torchrun a signal only asks to stop; the ranks agree on it at the next
        # step (``_asked``: this rank was signalled, ``_agreed``: some rank was).
        self._asked = self._agreed = False
        self.precision = resolve(device, self.tc.precision)
        limit_kernel_cache(device, self.precision)
        self.scaler = grad_scaler(device, self.precision)
        log.info("training precision: %s (train.precision=%s)", self.precision, self.tc.precision)

    def _next_batches(self) -> tuple[list[Batch], int, tuple[int, int]]:
        """This rank's batches of one update, the target tokens of all ranks' batches,
        and the position after them.

        An update takes ``train.accumulate`` batches per rank from the one order; rank
        ``r`` of ``N`` trains on every ``N``-th of them, starting at ``r``. The position
        is committed only once the update is done, so an interrupted step is repeated
        on resume, not skipped.
        """
        p, ranks = self.progress, self.ranks
        indices, after = self.order.take(
            (p.epoch, p.batch_in_epoch), self.tc.accumulate * ranks.world
        )
        n_tokens = sum(self.train_data.tgt_tokens(index) for index in indices)
        mine = indices[ranks.rank :: ranks.world]
        return [collate(self.train_data, index) for index in mine], n_tokens, after

    # ------------------------------------------------------------------ one step

    def _train_step(self, batches: list[Batch], n_tokens: int) -> float:
        """Forward, loss, backward (per batch), clip, update; returns this rank's loss sum.

        Gradients of all batches accumulate; the loss is normalised by the total number
        of target tokens of the update (``n_tokens``, all ranks' batches), so
        accumulating N batches equals one N times larger, and N ranks one process
        accumulating N batches. DDP averages the ranks' gradients, hence the ``world``
        in the divisor; it synchronises them on the update's last batch only.
        """
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        per_token = n_tokens / self.ranks.world
        for k, batch in enumerate(batches):
            batch = batch.to(self.device)
            later = self.ranks.grouped and k < len(batches) - 1
            with self.net.no_sync() if later else contextlib.nullcontext():
                with autocast(self.device, self.precision):
                    loss = batch_loss(
                        self.net,
                        batch.src,
                        batch.tgt_in,
                        batch.tgt_out,
                        PAD,
                        self.tc.label_smoothing,
                        self.tc.coverage_loss,
                    )
                self.scaler.scale(loss / per_token).backward()
            total += loss.item()
        self.scaler.unscale_(self.optimizer)
        if self.tc.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            for param, mask in self._masks:  # pruned weights stay pruned
                param.mul_(mask)
        return total

    def step(self) -> StepResult:
        """One update: learning rate, the next batch(es), forward/backward, optimizer step.

        With several ranks, the loss is summed over them and the step's time averaged,
        so that every rank holds the same progress and takes the same decisions
        (``train.max_time`` included, and a stop asked by Ctrl-C on any rank).
        """
        p = self.progress
        started = time.perf_counter()
        lr = self.schedule.apply(self.optimizer, p.step + 1)
        batches, n_tokens, after = self._next_batches()
        loss = self._train_step(batches, n_tokens)
        seconds = time.perf_counter() - started
        if self.ranks.grouped:
            loss, seconds, asked = self.ranks.sum([loss, seconds, float(self._asked)])
            seconds /= self.ranks.world
            self._agreed = asked > 0
        p.step, (p.epoch, p.batch_in_epoch) = p.step + 1, after
        p.elapsed += seconds
        p.tgt_tokens += n_tokens
        self._since_valid[0] += loss
        self._since_valid[1] += n_tokens
        src_tokens = sum(int(b.src.ne(PAD).sum()) for b in batches)
        padded = sum(b.src.numel() + b.tgt_out.numel() for b in batches)
        return StepResult(loss, n_tokens, src_tokens, padded, lr)

    # ------------------------------------------------------------------ validation

    def valid_loss(self) -> float:
        """Mean per-token cross-entropy (no smoothing) on the validation pairs."""
        return mean_loss(
            self.model, self.valid_data, self.cfg.decode.batch_tokens, self.device, self.precision
        )

    def _validate(self) -> dict:
        """Validation loss, perplexity and (optionally) BLEU; updates best/early stopping.

        Rank 0 validates; the other ranks receive its record and decide as it does.
        """
        p = self.progress
        record: dict = {"step": p.step, "epoch": p.epoch}
        if self._since_valid[1]:  # mean (smoothed) training loss since the last validation
            record["train_loss"] = self._since_valid[0] / self._since_valid[1]
        self._since_valid = [0.0, 0]
        if self.ranks.main:
            if self.valid_data is not None and len(self.valid_data):
                loss = self.valid_loss()
                record.update(valid_loss=loss, valid_ppl=math.exp(min(loss, 50.0)))
            if self.score_fn is not None and self.tc.valid_bleu:
                self.model.eval()
                record.update(self.score_fn())
                self.model.train()
        record = self.ranks.broadcast(record)
        if "valid_loss" in record:
            self.schedule.on_validation(record["valid_loss"])
        p.history.append(record)
        self._note_best(record)
        self._save_step_checkpoint()
        log.info("validation %s", " ".join(f"{k}={v:.4g}" for k, v in record.items()))
        for key, value in record.items():
            if key.startswith("valid_"):  # training loss goes to TensorBoard every log step
                self._tb(f"valid/{key[6:]}", value)
        return record

    def _note_best(self, record: dict) -> None:
        p = self.progress
        metric = self.tc.early_stop_metric
        key = f"valid_{metric}"
        if key not in record:
            key = "valid_loss" if "valid_loss" in record else None
        if key is None:
            self._save(self.run.best)
            return
        # Higher scores are better; lower loss is better: compare on a "higher is better" scale.
        value = -record[key] if key == "valid_loss" else record[key]
        if p.best is None or value > p.best:
            p.best, p.bad_validations = value, 0
            self._save(self.run.best)
            record["best"] = True
        else:
            p.bad_validations += 1

    # ------------------------------------------------------------------ checkpoints

    def _save(self, path: Path, **state) -> None:
        """Rank 0 writes the model's weights (never a DDP wrapper's) to ``path``."""
        if self.ranks.main:
            save_checkpoint(path, self.model, dump_config(self.cfg), **state)

    def _save_step_checkpoint(self) -> None:
        """Keep the weights of the last ``train.keep_checkpoints`` validations (for averaging)."""
        keep = self.tc.keep_checkpoints
        if not keep or not self.ranks.main:
            return
        self._save(self.run.step_checkpoint(self.progress.step))
        for old in self.run.step_checkpoints()[:-keep]:
            old.unlink()

    def save_last(self) -> None:
        """Write ``last``: weights, optimizer, progress, schedule and random states.

        With several ranks every rank's random state is gathered into it (each draws
        its own dropout), with the torchrun job that wrote it (a restart of that job
        resumes by itself).
        """
        rng = _rng_state()
        trainer = {
            "progress": asdict(self.progress),
            "schedule": self.schedule.state_dict(),
            "rng": rng,
            "order": self._order_kind(),
        }
        if self.ranks.grouped:
            every = self.ranks.gather(rng)
            trainer.update(world=self.ranks.world, rank_rng=every, job=job_id())
        self._save(self.run.last, optimizer=self.optimizer, trainer=trainer)

    def resume(self) -> None:
        """Restore model, optimizer, schedule, data position and RNG from ``last``.

        Under torchrun each rank takes its own random state back when the run was saved
        by as many ranks; with another number the data order still continues where it
        stopped, but the dropout draws differ from an uninterrupted run (rank 0 takes the
        saved state, the others a seed of their rank and the step).
        """
        ckpt = load_checkpoint(self.run.last)
        mine = self._order_kind()
        saved = ckpt.trainer.get("order", mine)
        if saved != mine:
            raise ConfigError(
                f"{ckpt.path} was trained on a corpus read {_READ[saved]}, but this config "
                f"reads it {_READ[mine]}: the saved data position would stand for other "
                f"batches; resume with data.stream: {'true' if saved == 'stream' else 'false'}"
            )
        restore_model(self.model, ckpt)
        restore_optimizer(self.optimizer, ckpt)
        for group in self.optimizer.param_groups:  # the config given now wins on resume
            group.update(betas=self.tc.betas, weight_decay=self.tc.weight_decay)
        self.progress = Progress(**ckpt.trainer["progress"])
        self.schedule.load_state_dict(ckpt.trainer["schedule"])
        state = ckpt.trainer
        saved_world = state.get("world", 1)
        if saved_world == self.ranks.world and "rank_rng" in state:
            _set_rng_state(state["rank_rng"][self.ranks.rank])
        else:
            _set_rng_state(state["rng"])
            if self.ranks.rank:
                rank, step = self.ranks.rank, self.progress.step
                torch.manual_seed(self.tc.seed + 1000003 * rank + 7919 * step)
            if saved_world != self.ranks.world and self.ranks.main:
                log.warning(
                    "%s was saved by %d training processes and resumes in %d: the data "
                    "order continues, but dropout draws differ from an uninterrupted run",
                    ckpt.path,
                    saved_world,
                    self.ranks.world,
                )
        log.info("resumed from %s at step %d", ckpt.path, self.progress.step)

    def _order_kind(self) -> str:
        """How the training data is ordered, which decides what a saved position means."""
        return "stream" if isinstance(self.order, StreamOrder) else "memory"

    # ------------------------------------------------------------------ the loop

    def _should_stop(self) -> str:
        p, tc = self.progress, self.tc
        if self._agreed:
            return "interrupted"
        if p.step >= tc.max_steps:
            return f"reached train.max_steps={tc.max_steps}"
        if p.epoch >= tc.max_epochs:
            return f"reached train.max_epochs={tc.max_epochs}"
        if tc.max_time is not None and p.elapsed >= tc.max_time:
            return f"reached the time budget train.max_time={tc.max_time:g}s"
        if tc.patience and p.bad_validations >= tc.patience:
            return f"early stopping: no improvement in {tc.patience} validations"
        return ""

    def train(self) -> Progress:
        """Run until a stop condition; save ``last`` (also on Ctrl-C) and ``best``.

        Under torchrun, Ctrl-C (which torchrun forwards to every rank) stops all ranks
        after the same step, and ``last`` is saved as at any other stop. SIGTERM, which
        torchrun sends to the others when a rank failed, ends a rank at once.
        """
        with self._stop_requests():
            return self._train()

    @contextlib.contextmanager
    def _stop_requests(self) -> Iterator[None]:
        """Under torchrun, turn SIGINT into a request to stop (see ``step``)."""
        if not self.ranks.grouped or threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask(signum, frame) -> None:
            self._asked = True

        old = signal.signal(signal.SIGINT, ask)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)

    def _train(self) -> Progress:
        self.model.train()
        if self.cfg.prune.method == "magnitude":  # fine-tuning a pruned model
            self._masks = zero_masks(self.model)
        bar = tqdm(
            total=self.tc.max_steps,
            initial=self.progress.step,
            unit="step",
            dynamic_ncols=True,
            disable=None if self.ranks.main else True,
        )
        window_tokens, window_start = 0, time.perf_counter()
        try:
            while not (reason := self._should_stop()):
                p = self.progress
                # 1. one update on the next batch(es)
                result = self.step()
                window_tokens += result.tgt_tokens
                # 2. progress bar, log and TensorBoard
                bar.update(1)
                if p.step % self.tc.log_every == 0 or p.step == 1:
                    rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    self._report(result.loss / result.tgt_tokens, result.lr, rate, bar)
                    window_tokens, window_start = 0, time.perf_counter()
                # 3. validation, best checkpoint, last checkpoint
                if p.step % self.tc.valid_every == 0:
                    self._validate()
                    self.save_last()
        except KeyboardInterrupt:
            reason = "interrupted"
            log.warning("interrupted at step %d: saving %s", self.progress.step, self.run.last.name)
        finally:
            bar.close()
        self._finish(reason)
        return self.progress

    def _finish(self, reason: str) -> None:
        p = self.progress
        p.stopped = reason
        log.info("stopping: %s", reason)
        log.info(
            "trained %d steps in %.0f s: %.0f target tokens/s; peak RSS %.0f MB",
            p.step,
            p.elapsed,
            p.tgt_tokens / max(p.elapsed, 1e-9),
            peak_rss_mb(),
        )
        self.save_last()  # before the final validation: a Ctrl-C there loses nothing
        if reason != "interrupted" and (not p.history or p.history[-1]["step"] != p.step):
            self._validate()
            self.save_last()
        if self._writer is not None:
            self._writer.close()

    def _report(self, loss: float, lr: float, tok_per_s: float, bar) -> None:
        postfix = {"loss": f"{loss:.3f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_per_s:,.0f}"}
        if self.tc.max_time is not None:
            # The bar's own ETA counts steps; with a time budget the budget decides.
            left = max(0.0, self.tc.max_time - self.progress.elapsed)
            postfix["budget_left"] = time.strftime("%H:%M:%S", time.gmtime(left))
        bar.set_postfix(postfix)
        step_log.info(
            "step %d loss %.4f lr %.3e tgt_tok/s %.0f", self.progress.step, loss, lr, tok_per_s
        )
        self._tb("train/loss", loss)
        self._tb("train/lr", lr)
        self._tb("train/tgt_tok_per_s", tok_per_s)

    def _tb(self, tag: str, value: float) -> None:
        if not self.ranks.main:
            return
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.run.tensorboard))
        self._writer.add_scalar(tag, value, self.progress.step)
