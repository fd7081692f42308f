"""The training loop: explicit and linear, one comment per phase.

The trainer knows nothing about the model family or the tokenizers: it gets a model
implementing the contract, encoded examples, and an optional ``score_fn`` that
decodes the validation set and returns a score (BLEU) for early stopping.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from seq2seq.checkpoint import (
    load_checkpoint,
    restore_model,
    restore_optimizer,
    save_checkpoint,
)
from seq2seq.config import Config, dump_config
from seq2seq.data.batching import Batch, Examples, collate, token_batches
from seq2seq.data.vocab import PAD
from seq2seq.models.contract import Seq2SeqModel
from seq2seq.rundir import RunDir
from seq2seq.training.loss import batch_loss
from seq2seq.training.optim import Schedule, build_optimizer
from seq2seq.training.order import BatchOrder
from seq2seq.training.precision import autocast, grad_scaler, limit_kernel_cache, resolve

log = logging.getLogger("seq2seq")
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
    """What one update did: summed loss, real target/source tokens, padded positions, lr."""

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
    ):
        self.cfg, self.tc = cfg, cfg.train
        self.model, self.train_data, self.valid_data = model, train, valid
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.device, self.score_fn = device, score_fn
        self.optimizer = build_optimizer(self.tc, model.parameters())
        self.schedule = Schedule(self.tc)
        self.progress = Progress()
        self._writer = None
        weights = tuple(t.weight for t in cfg.data.tasks)
        self.order = BatchOrder(
            train, self.tc.batch_tokens, self.tc.pool_batches, self.tc.seed, weights
        )
        self._since_valid = [0.0, 0]  # summed training loss and target tokens
        self.precision = resolve(device, self.tc.precision)
        limit_kernel_cache(device, self.precision)
        self.scaler = grad_scaler(device, self.precision)
        log.info("training precision: %s (train.precision=%s)", self.precision, self.tc.precision)

    def _next_batches(self) -> tuple[list[Batch], tuple[int, int]]:
        """One update's batches (``train.accumulate`` of them) and the position after them.

        The position is committed only once the update is done, so an interrupted
        step is repeated on resume, not skipped.
        """
        p = self.progress
        indices, after = self.order.take((p.epoch, p.batch_in_epoch), self.tc.accumulate)
        return [collate(self.train_data, index) for index in indices], after

    # ------------------------------------------------------------------ one step

    def _train_step(self, batches: list[Batch]) -> tuple[float, int]:
        """Forward, loss, backward (per batch), clip, update; returns (loss sum, target tokens).

        Gradients of all batches accumulate; the loss is normalised by their total
        number of target tokens, so accumulating N batches equals one N times larger.
        """
        n_tokens = sum(b.n_tgt_tokens for b in batches)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            batch = batch.to(self.device)
            with autocast(self.device, self.precision):
                loss = batch_loss(
                    self.model,
                    batch.src,
                    batch.tgt_in,
                    batch.tgt_out,
                    PAD,
                    self.tc.label_smoothing,
                    self.tc.coverage_loss,
                )
            self.scaler.scale(loss / n_tokens).backward()
            total += loss.item()
        self.scaler.unscale_(self.optimizer)
        if self.tc.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total, n_tokens

    def step(self) -> StepResult:
        """One update: learning rate, the next batch(es), forward/backward, optimizer step."""
        p = self.progress
        started = time.perf_counter()
        lr = self.schedule.apply(self.optimizer, p.step + 1)
        batches, after = self._next_batches()
        loss, n_tokens = self._train_step(batches)
        p.step, (p.epoch, p.batch_in_epoch) = p.step + 1, after
        p.elapsed += time.perf_counter() - started
        p.tgt_tokens += n_tokens
        self._since_valid[0] += loss
        self._since_valid[1] += n_tokens
        src_tokens = sum(int(b.src.ne(PAD).sum()) for b in batches)
        padded = sum(b.src.numel() + b.tgt_out.numel() for b in batches)
        return StepResult(loss, n_tokens, src_tokens, padded, lr)

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def valid_loss(self) -> float:
        """Mean per-token cross-entropy (no smoothing) on the validation pairs."""
        self.model.eval()
        total, tokens = 0.0, 0
        for index in token_batches(self.valid_data, self.cfg.decode.batch_tokens):
            batch = collate(self.valid_data, index).to(self.device)
            with autocast(self.device, self.precision):
                total += batch_loss(self.model, batch.src, batch.tgt_in, batch.tgt_out, PAD).item()
            tokens += batch.n_tgt_tokens
        self.model.train()
        return total / max(tokens, 1)

    def _validate(self) -> dict:
        """Validation loss, perplexity and (optionally) BLEU; updates best/early stopping."""
        p = self.progress
        record: dict = {"step": p.step, "epoch": p.epoch}
        if self._since_valid[1]:  # mean (smoothed) training loss since the last validation
            record["train_loss"] = self._since_valid[0] / self._since_valid[1]
        self._since_valid = [0.0, 0]
        if self.valid_data is not None and len(self.valid_data):
            loss = self.valid_loss()
            record.update(valid_loss=loss, valid_ppl=math.exp(min(loss, 50.0)))
            self.schedule.on_validation(loss)
        if self.score_fn is not None and self.tc.valid_bleu:
            self.model.eval()
            record.update(self.score_fn())
            self.model.train()
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
            save_checkpoint(self.run.best, self.model, dump_config(self.cfg))
            return
        # Higher scores are better; lower loss is better: compare on a "higher is better" scale.
        value = -record[key] if key == "valid_loss" else record[key]
        if p.best is None or value > p.best:
            p.best, p.bad_validations = value, 0
            save_checkpoint(self.run.best, self.model, dump_config(self.cfg))
            record["best"] = True
        else:
            p.bad_validations += 1

    # ------------------------------------------------------------------ checkpoints

    def _save_step_checkpoint(self) -> None:
        """Keep the weights of the last ``train.keep_checkpoints`` validations (for averaging)."""
        keep = self.tc.keep_checkpoints
        if not keep:
            return
        path = self.run.step_checkpoint(self.progress.step)
        save_checkpoint(path, self.model, dump_config(self.cfg))
        for old in self.run.step_checkpoints()[:-keep]:
            old.unlink()

    def save_last(self) -> None:
        trainer = {
            "progress": asdict(self.progress),
            "schedule": self.schedule.state_dict(),
            "rng": _rng_state(),
        }
        save_checkpoint(
            self.run.last,
            self.model,
            dump_config(self.cfg),
            optimizer=self.optimizer,
            trainer=trainer,
        )

    def resume(self) -> None:
        """Restore model, optimizer, schedule, data position and RNG from ``last``."""
        ckpt = load_checkpoint(self.run.last)
        restore_model(self.model, ckpt)
        restore_optimizer(self.optimizer, ckpt)
        for group in self.optimizer.param_groups:  # the config given now wins on resume
            group.update(betas=self.tc.betas, weight_decay=self.tc.weight_decay)
        self.progress = Progress(**ckpt.trainer["progress"])
        self.schedule.load_state_dict(ckpt.trainer["schedule"])
        _set_rng_state(ckpt.trainer["rng"])
        log.info("resumed from %s at step %d", ckpt.path, self.progress.step)

    # ------------------------------------------------------------------ the loop

    def _should_stop(self) -> str:
        p, tc = self.progress, self.tc
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
        """Run until a stop condition; save ``last`` (also on Ctrl-C) and ``best``."""
        self.model.train()
        bar = tqdm(
            total=self.tc.max_steps,
            initial=self.progress.step,
            unit="step",
            dynamic_ncols=True,
            disable=None,
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
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.run.tensorboard))
        self._writer.add_scalar(tag, value, self.progress.step)
