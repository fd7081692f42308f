"""Training under torchrun: 2 processes of 1 thread each on the CPU (gloo), a tiny GRU on
the built-in ``reverse`` task, against one process; resume, a killed rank, restarts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq.api import Seq2Seq
from seq2seq.checkpoint import load_checkpoint
from seq2seq.devices import pick_device
from seq2seq.errors import ConfigError
from seq2seq.training.distributed import SINGLE, process_group

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
TIMEOUT = 240  # seconds for one torchrun job; a hang fails the test instead of the suite

# gradients are averaged over 2 ranks in fp32: the sum of two halves may differ from
# the one-process sum by a rounding step, which 8 Adam updates can carry to ~1e-6
TOLERANCE = 1e-5


def _sections(dropout: float = 0.0, **train) -> dict:
    return {
        "data": {"task": "reverse", "task_size": 240, "tokenizer": "char"},
        "model": {"emb_dim": 8, "hidden_dim": 16, "dropout": dropout},
        "train": {
            "seed": 3,
            "batch_tokens": 300,
            "max_steps": 8,
            "valid_every": 4,
            "log_every": 2,
            "valid_bleu": False,
            "device": "cpu",
            "threads": 1,
            "dist_timeout": 60,  # a rank that hangs fails the job within a minute
            **train,
        },
        "decode": {"max_len_a": 1.0, "max_len_b": 4},
    }


def _config(path: Path, **kw) -> Path:
    path.write_text(yaml.safe_dump(_sections(**kw)), encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(config: Path, out: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [*TORCHRUN, f"--nproc_per_node={nproc}", "-m", "seq2seq", "train", str(config)]
    return subprocess.run(
        [*command, "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
    )


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / f"{name}.safetensors").prefixed("model.")


def test_two_ranks_equal_one_process_accumulating_two(tmp_path: Path) -> None:
    _ok(_torchrun(_config(tmp_path / "c.yaml"), tmp_path / "ddp"))
    one = Seq2Seq(**_sections(accumulate=2))
    one.fit(out=tmp_path / "one")
    ddp, single = _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    assert ddp.keys() == single.keys()  # no "module." prefixes
    for name in ddp:
        assert torch.allclose(ddp[name], single[name], rtol=0, atol=TOLERANCE), name
    progress = load_checkpoint(tmp_path / "ddp" / "last.safetensors").trainer["progress"]
    assert progress["step"] == 8
    assert progress["tgt_tokens"] == one.progress.tgt_tokens  # both ranks' tokens counted
    # the 2-rank checkpoints decode in one process
    ddp_model = Seq2Seq.load(tmp_path / "ddp", device="cpu")
    assert ddp_model.predict(["a b c"]) == Seq2Seq.load(tmp_path / "one", device="cpu").predict(
        ["a b c"]
    )
    # only rank 0 writes the run: one log, one set of checkpoints
    text = (tmp_path / "ddp" / "train.log").read_text(encoding="utf-8")
    assert text.count("stopping: reached train.max_steps=8") == 1
    assert "distributed training: 2 processes, backend gloo" in text


def test_resume_under_torchrun_is_bitwise_identical(tmp_path: Path) -> None:
    # dropout: each rank's own random state must come back on resume
    config = _config(tmp_path / "c.yaml", dropout=0.3)
    _ok(_torchrun(config, tmp_path / "a"))
    _ok(_torchrun(config, tmp_path / "b", "train.max_steps=4"))
    resumed = _torchrun(config, tmp_path / "b", "--resume")
    _ok(resumed)
    assert "resumed from" in resumed.stderr
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[n], b[n]) for n in a)


def _rank_of(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"LOCAL_RANK=")).split(b"=")[1])


def _start(config: Path, out: Path, *args: str) -> subprocess.Popen:
    command = [*TORCHRUN, *args, "--nproc_per_node=2", "-m", "seq2seq", "train", str(config)]
    return subprocess.Popen(
        [*command, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )


def _kill_rank_1_once_saved(job: subprocess.Popen, out: Path) -> str:
    """SIGKILL rank 1 once ``last`` exists; the job's output when it ends."""
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "last.safetensors").is_file():
            assert job.poll() is None and time.monotonic() < deadline, "training never saved"
            time.sleep(0.2)
        found = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True)
        workers = {_rank_of(int(pid)): int(pid) for pid in found.stdout.split()}
        os.kill(workers[1], 9)
        return job.communicate(timeout=TIMEOUT)[0]  # no hang: the job ends
    finally:
        if job.poll() is None:
            job.terminate()  # torchrun passes SIGTERM on to its workers
            job.wait(10)


def test_a_killed_rank_ends_the_job_with_its_error_and_resume_continues(tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", max_steps=100000, max_time=600, valid_every=5)
    out = tmp_path / "run"
    output = _kill_rank_1_once_saved(_start(config, out), out)
    assert "local_rank: 1" in output and "SIGKILL" in output, output
    step = load_checkpoint(out / "last.safetensors").trainer["progress"]["step"]
    resumed = _torchrun(config, out, "--resume", f"train.max_steps={step + 5}")
    _ok(resumed)
    assert f"resumed from {out / 'last.safetensors'} at step {step}" in resumed.stderr
    assert load_checkpoint(out / "last.safetensors").trainer["progress"]["step"] == step + 5


def test_a_restarted_job_resumes_by_itself(tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", max_steps=100000, max_time=15, valid_every=5)
    out = tmp_path / "run"
    job = _start(config, out, "--max-restarts=1")
    output = _kill_rank_1_once_saved(job, out)
    assert job.returncode == 0, output
    assert "torchrun restarted the job: resuming from" in output, output
    assert "reached the time budget train.max_time=15s" in output


def test_a_restart_never_takes_over_another_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Seq2Seq(**_sections(max_steps=4)).fit(out=tmp_path)  # not saved by this torchrun job
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "another-job")
    with pytest.raises(ConfigError, match="already holds a training run"):
        Seq2Seq(**_sections(max_steps=8)).fit(out=tmp_path)


def test_ctrl_c_stops_every_rank_after_the_same_step_and_saves(tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", max_steps=100000, max_time=600, valid_every=5)
    out = tmp_path / "run"
    job = _start(config, out)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "last.safetensors").is_file():
            assert job.poll() is None and time.monotonic() < deadline, "training never saved"
            time.sleep(0.2)
        job.send_signal(signal.SIGINT)  # as Ctrl-C in the terminal
        output = job.communicate(timeout=TIMEOUT)[0]
    finally:
        if job.poll() is None:
            job.kill()
    assert "interrupted: the last checkpoint is saved" in output, output
    saved = load_checkpoint(out / "last.safetensors").trainer
    assert saved["progress"]["stopped"] == "interrupted"
    assert len(saved["rank_rng"]) == 2  # both ranks stopped together and were gathered


def test_one_process_joins_no_group_and_its_collectives_are_identities(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with process_group("cpu", 60) as ranks:
        assert ranks is SINGLE and ranks.main and ranks.world == 1
        assert ranks.sum([1.5, 2.0]) == [1.5, 2.0]
        assert ranks.broadcast({"a": 1}) == {"a": 1} and ranks.gather(3) == [3]
        assert not torch.distributed.is_initialized()


def test_a_rank_past_the_gpus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda", index=1) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="GPU 2 was asked for.*has 2"):
        pick_device("cuda", index=2)
    assert pick_device("cpu", index=5) == torch.device("cpu")  # the index is for GPUs
