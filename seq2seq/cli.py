"""The ``seq2seq`` command: each subcommand is one library call.

User errors (bad config, bad data, foreign checkpoint) are printed as one clear
message, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from seq2seq import metrics as metrics_lib
from seq2seq.errors import ConfigError, DataError, guarded

PRECISIONS = ("fp32", "bf16", "auto")
PRECISION_HELP = "inference arithmetic (auto: bf16 where the device computes it natively)"


def cmd_train(args: argparse.Namespace) -> int | None:
    from seq2seq.config import load_config
    from seq2seq.rundir import RunDir
    from seq2seq.training import distributed, driver

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    progress = driver.train(cfg, RunDir(out), resume=args.resume)
    if distributed.env_rank():  # under torchrun, rank 0 speaks for the job
        return 130 if progress.stopped == "interrupted" else None
    if progress.stopped == "interrupted":
        print(
            f"interrupted: the last checkpoint is saved; continue with --resume --out {out}",
            file=sys.stderr,
        )
        return 130
    print(f"run directory: {out}")
    if progress.history:
        print(
            "last validation: "
            + ", ".join(
                f"{k}={v:.4g}" for k, v in progress.history[-1].items() if isinstance(v, float)
            )
        )


def _read_input(path: str | None) -> list[str]:
    from seq2seq.data.corpus import read_lines, read_stream

    return read_stream(sys.stdin.buffer) if path is None else read_lines(path)


def _check_writable(path: str | None) -> None:
    """Fail before the work, not after it, when an output file cannot be written."""
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir() or Path(path).is_dir():
        raise DataError(
            f"cannot write {path}: no such directory {parent}"
            if not parent.is_dir()
            else f"cannot write {path}: it is a directory"
        )


def _write_lines(path: str, lines: list[str]) -> None:
    try:
        Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot write {path}: {err.strerror or err}") from None


def _translator(args: argparse.Namespace):
    """The Translator (or CTranslate2 translator) the decoding options ask for."""
    decode = _decode_overrides(args)
    if args.engine == "ctranslate2":
        from seq2seq.inference.ct2 import CTranslate2Translator

        if args.checkpoint:
            raise ConfigError(
                "--engine ctranslate2 decodes the one model of an export: drop --checkpoint"
            )
        return CTranslate2Translator.from_export(args.run_dir, decode, device=args.device)
    from seq2seq.inference import Translator

    return Translator.from_run(args.run_dir, args.checkpoint or "best", args.device, decode)


def _decode_overrides(args: argparse.Namespace) -> dict:
    """Decode settings from the command line: shortcuts first, then ``--decode k=v``."""
    import yaml

    decode: dict = {}
    if args.beam is not None:
        decode.update(method="beam", beam_size=args.beam)
    if args.nbest is not None:
        decode.update(method="beam", n_best=args.nbest)  # n_best <= beam_size is checked
    if args.sample:
        if args.beam is not None or args.nbest is not None:
            raise ConfigError("--sample draws one output: it excludes --beam and --nbest")
        decode["method"] = "sample"
    for name in ("seed", "quantize", "precision"):
        if getattr(args, name) is not None:
            decode[name] = getattr(args, name)
    for item in args.decode:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--decode '{item}' is not of the form key=value")
        try:
            decode[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--decode '{item}': cannot parse the value ({err})") from None
    return decode


def cmd_translate(args: argparse.Namespace) -> None:
    _check_writable(args.output)
    translator = _translator(args)
    if args.attention and not translator.has_attention:
        raise ConfigError(
            f"{args.run_dir}: this model has no attention to plot (model.attention: none)"
        )
    texts = _read_input(args.input)
    results = translator.translate(
        texts,
        attention=bool(args.attention),
        progress=args.input is not None,
        tgt_lang=args.tgt_lang,
        task=args.task,
        constraints=_constraints(args, texts),
    )
    if translator.decode.n_best > 1:  # n-best lines: index ||| text ||| score
        lines = [
            f"{i} ||| {text} ||| {score:.4f}"
            for i, r in enumerate(results)
            for text, score in (r.nbest or [(r.text, r.score)])
        ]
    else:
        lines = [r.text for r in results]
    if args.output:
        _write_lines(args.output, lines)
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))
    if args.attention:
        _plot_attention(results, Path(args.attention))


def _constraints(args: argparse.Namespace, texts: list[str]) -> list[list[str]] | None:
    """Each text's phrases: the ``--constraint`` ones, then its line of ``--constraints``.

    Raises:
        DataError: a constraints file whose lines do not match the input's.
    """
    if not args.constraint and args.constraints is None:
        return None
    per_line = [[] for _ in texts]
    if args.constraints is not None:
        from seq2seq.data.corpus import read_lines

        lines = read_lines(args.constraints)
        if len(lines) != len(texts):
            raise DataError(
                f"--constraints {args.constraints}: {len(lines)} lines, but the input has "
                f"{len(texts)}; give one line of tab-separated phrases per input line"
            )
        per_line = [[p for p in line.split("\t") if p.strip()] for line in lines]
    return [[*args.constraint, *mine] for mine in per_line]


def _plot_attention(results, directory: Path) -> None:
    from seq2seq.viz import plot_attention

    for i, r in enumerate(results):
        if r.attention is None:  # an empty input line: nothing was decoded
            continue
        plot_attention(
            r.attention, r.src_tokens, r.out_tokens, directory / f"{i:05d}.png", title=r.text
        )


def cmd_score(args: argparse.Namespace) -> None:
    from seq2seq.data.corpus import read_lines
    from seq2seq.inference import Translator
    from seq2seq.inference.evaluate import check_aligned

    srcs, tgts = read_lines(args.src), read_lines(args.tgt)
    check_aligned(srcs, tgts, args.src, args.tgt)
    _check_writable(args.output)
    translator = Translator.from_run(
        args.run_dir, args.checkpoint or "best", args.device, _decode_overrides(args)
    )
    srcs = translator.render(srcs, tgt_lang=args.tgt_lang, task=args.task)
    lines = [
        f"{value:.4f}\t{count}\t{value / count if count else float('nan'):.4f}"
        for value, count in translator.score(srcs, tgts)
    ]
    if args.output:
        _write_lines(args.output, lines)
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))


def cmd_export(args: argparse.Namespace) -> None:
    from seq2seq.inference.ct2 import export_ctranslate2

    if len(args.checkpoint or []) > 1:
        raise ConfigError("export takes one --checkpoint")
    out = export_ctranslate2(args.run_dir, args.out, (args.checkpoint or ["best"])[0])
    print(f"exported {args.run_dir} to {out}; decode it with:")
    print(f"  seq2seq translate {out} --engine ctranslate2 [--quantize int8]")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from seq2seq.data.corpus import read_lines
    from seq2seq.inference.evaluate import check_aligned, check_metrics, evaluate

    names = check_metrics(args.metrics.split(","))
    if args.data is not None:
        if args.src or args.ref:
            raise ConfigError("--data holds sources and references: drop --src and --ref")
        text = _run_corpus(args)
        srcs, refs, rendered = text.src, [text.tgt], True
    else:
        if not args.src or not args.ref:
            raise ConfigError("give --src and --ref (or --data, a corpus in any data.train form)")
        srcs, refs = read_lines(args.src), [read_lines(path) for path in args.ref]
        for path, stream in zip(args.ref, refs, strict=True):
            check_aligned(srcs, stream, args.src, path)
        rendered = False
    _check_writable(args.hyp_out)
    result = evaluate(
        _translator(args),
        srcs,
        refs,
        names,
        progress=True,
        tgt_lang=args.tgt_lang,
        task=args.task,
        rendered=rendered,
    )
    if args.hyp_out:
        _write_lines(args.hyp_out, result.hypotheses)
    scores = result.scores
    print(json.dumps(scores, indent=2) if args.json else metrics_lib.format_table(scores))


def _run_corpus(args: argparse.Namespace):
    """``--data``: a corpus read and rendered the way the run's own data was."""
    from seq2seq.data.corpus import read_parallel
    from seq2seq.data.records import Rendering
    from seq2seq.inference.engine import check_symbols
    from seq2seq.rundir import RunDir

    data = RunDir(args.run_dir).config().data
    text = read_parallel(
        args.data,
        data.src_lang,
        args.tgt_lang or data.tgt_lang,
        name="--data",
        rendering=Rendering.of(data),
        task=args.task,
        dialogue_eou=data.dialogue_eou,
    )
    check_symbols(text.symbols, data.symbols, f"--data {args.data}")
    return text


def cmd_chat(args: argparse.Namespace) -> None:
    from seq2seq.data.corpus import decode_line
    from seq2seq.inference.chat import Conversation

    conversation = Conversation(
        _translator(args), args.context_turns, tgt_lang=args.tgt_lang, task=args.task
    )
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            "Type a message and press Enter; /reset starts a new conversation, "
            "Ctrl-D (or an empty line) ends.",
            file=sys.stderr,
        )
    for number, raw in enumerate(_prompted_lines(interactive), start=1):
        text = decode_line("<stdin>", number, raw).strip()
        if not text:
            if interactive:
                break
            continue
        if text == "/reset":
            conversation.reset()
            continue
        print(conversation.reply(text), flush=True)


def _prompted_lines(interactive: bool):
    """Raw lines of stdin, each after a "> " prompt on a terminal."""
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        raw = sys.stdin.buffer.readline()
        if not raw:
            return
        yield raw


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from seq2seq.serve.app import Limits, create_app
        from seq2seq.serve.registry import load_served
    except ImportError as err:
        raise ConfigError(
            f"seq2seq serve needs FastAPI, uvicorn and prometheus-client ({err}): "
            'pip install -e ".[serve]"'
        ) from None
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    models = load_served(
        args.runs, args.engine, args.device, _decode_overrides(args), threads=args.threads or 0
    )
    limits = Limits(
        max_body=args.max_body,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_beam=args.max_beam,
        max_output=args.max_output_len,
        timeout=args.timeout,
        max_queue=args.max_queue,
        max_wait_ms=args.max_wait_ms,
        max_batch=args.max_batch,
        decoders=args.decoders,
    )
    for served in models.values():
        info = served.describe()
        print(f"serving {info['name']}: {info['family']}, {info['engine']} engine", file=sys.stderr)
    print(
        f"page: http://{args.host}:{args.port}/  API docs: http://{args.host}:{args.port}/docs",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal under the
    # handler that was in place before it: make that one a no-op so the exit is 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        create_app(models, limits),
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=args.access_log,
        timeout_graceful_shutdown=int(args.timeout) + 5,  # in-flight requests finish
    )


def cmd_average(args: argparse.Namespace) -> None:
    from seq2seq.checkpoint import average_checkpoints
    from seq2seq.rundir import RunDir

    run = RunDir(args.run_dir)
    found = run.step_checkpoints()
    if len(found) < args.last:
        raise DataError(
            f"{args.run_dir}: asked to average the last {args.last} checkpoints "
            f"but it holds {len(found)} (train.keep_checkpoints keeps them)"
        )
    out = Path(args.out) if args.out else run.averaged
    average_checkpoints(found[-args.last :], out)
    print(f"averaged {', '.join(p.name for p in found[-args.last :])} -> {out}")


def cmd_prune(args: argparse.Namespace) -> int | None:
    from seq2seq.training.compress import Pruning, prune_run

    pruning = Pruning(
        args.method,
        args.sparsity,
        args.scope,
        args.heads,
        args.ff_dim,
        args.finetune_steps,
        args.output_dim,
        args.dec_layers,
    )
    progress = prune_run(args.run_dir, args.out, pruning, args.checkpoint, args.overrides)
    if progress is not None and progress.stopped == "interrupted":
        print(
            f"interrupted: continue with seq2seq train {args.out}/config.yaml "
            f"--resume --out {args.out}",
            file=sys.stderr,
        )
        return 130
    print(f"pruned run directory: {args.out}")
    return None


def cmd_distill(args: argparse.Namespace) -> int | None:
    from seq2seq.config import load_config
    from seq2seq.training.compress import distill

    cfg = load_config(args.config, args.overrides)
    progress = distill(args.teacher, cfg, args.out, beam=args.beam, resume=args.resume)
    if progress.stopped == "interrupted":
        print("interrupted: continue with the same command and --resume", file=sys.stderr)
        return 130
    print(f"student run directory: {args.out}")
    return None


def cmd_demo(args: argparse.Namespace) -> None:
    from seq2seq.demo import run_demo

    run_demo(Path(args.out), max_time=args.max_time)


def _add_model_args(p: argparse.ArgumentParser, ensembles: bool = True, device: bool = True):
    p.add_argument("run_dir", help="a run directory written by 'seq2seq train'")
    p.add_argument(
        "--checkpoint",
        action="append",
        help="best (default), last, averaged, or a path to a .safetensors checkpoint"
        + ("; repeat it for an ensemble (a run directory adds its best)" if ensembles else ""),
    )
    if device:
        p.add_argument(
            "--device",
            default="auto",
            choices=("auto", "cpu", "cuda"),
            help="auto (default), cpu or cuda",
        )


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (overrides the run's decode settings)")
    g.add_argument("--beam", type=at_least(1), metavar="K", help="beam search with K hypotheses")
    g.add_argument(
        "--nbest", type=at_least(1), metavar="N", help="print N hypotheses a sentence (beam)"
    )
    g.add_argument("--sample", action="store_true", help="sample instead of searching")
    g.add_argument("--seed", type=int, help="random seed of --sample (reproducible output)")
    g.add_argument("--quantize", choices=("none", "int8"), help="int8: quantized linears (CPU)")
    g.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        help="inference arithmetic (auto: bf16 where native)",
    )
    g.add_argument(
        "--engine",
        choices=("native", "ctranslate2"),
        default="native",
        help="ctranslate2: decode a 'seq2seq export' directory with CTranslate2",
    )
    g.add_argument(
        "-d",
        "--decode",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any decode setting, e.g. -d length_penalty=0.6 -d top_p=0.9 -d min_len=3",
    )


def _add_tag_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tags (runs trained with data.lang_tags / data.task_tags)")
    g.add_argument("--tgt-lang", metavar="LANG", help="output language, e.g. de (adds <2de>)")
    g.add_argument("--task", metavar="NAME", help="task, e.g. summarize (adds <task:NAME>)")


def at_least(low: float):
    """An argparse type: a number (int when ``low`` is one) no smaller than ``low``."""
    kind = type(low)

    def parse(text: str):
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seq2seq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(sub)
    _add_decoding_commands(sub)
    return parser


def _add_training_commands(sub) -> None:
    """``train``, ``average``, ``prune``, ``distill`` and ``demo``."""
    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config file (see examples/)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.lr=1e-3 data.task=dates",
    )
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("average", help="average the weights of the last N checkpoints")
    p.add_argument("run_dir", help="a run directory written by 'seq2seq train'")
    p.add_argument("--last", type=at_least(1), default=5, help="how many checkpoints (default: 5)")
    p.add_argument(
        "--out",
        help="output file (default: the run's averaged checkpoint, used "
        "by translate/evaluate --checkpoint averaged)",
    )
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("prune", help="prune a trained run into a smaller one (then fine-tune)")
    p.add_argument("run_dir", help="a run directory written by 'seq2seq train'")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="train.* and decode.* changes to the pruned run's config, e.g. train.lr=2e-4",
    )
    p.add_argument("--out", required=True, help="the new run directory for the pruned model")
    p.add_argument(
        "--method",
        choices=["magnitude", "structured"],
        default="magnitude",
        help="magnitude: zero the smallest weights (the file stores them sparsely); "
        "structured: remove attention heads and feed-forward neurons (Transformer) or "
        "units of the attentional layer (RNN)",
    )
    p.add_argument("--sparsity", type=float, help="magnitude: share of weights zeroed (0.5)")
    p.add_argument(
        "--scope",
        choices=["global", "layer"],
        help="magnitude: rank all weights together (global) or each matrix alike (layer)",
    )
    p.add_argument("--heads", type=at_least(1), help="structured: heads kept per layer (half)")
    p.add_argument(
        "--ff-dim", type=at_least(1), help="structured: feed-forward neurons kept per layer (half)"
    )
    p.add_argument(
        "--output-dim",
        type=at_least(1),
        help="structured RNN: units of the attentional layer h~ kept (half)",
    )
    p.add_argument(
        "--dec-layers",
        type=at_least(1),
        help="structured Transformer: decoder layers kept (all), dropping one at a time "
        "the layer whose removal raises the validation loss least",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=0,
        help="then train this many updates, continuing the run's data order and schedule",
    )
    p.add_argument("--checkpoint", default="best", help="best (default), last, averaged or a file")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "distill", help="train a student config on a teacher run's translations (sequence-level KD)"
    )
    p.add_argument("teacher", help="the teacher's run directory")
    p.add_argument("config", help="the student's YAML config (its data.train is translated)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--out", required=True, help="the student's run directory")
    p.add_argument("--beam", type=at_least(1), default=5, help="the teacher's beam size (5)")
    p.add_argument("--resume", action="store_true", help="continue the student's training")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("demo", help="train the built-in date task and show what it learned")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument(
        "--max-time",
        type=float,
        default=240.0,
        help="cap on training time in seconds (default: 240; 1000 steps take ~90 s on 2 cores)",
    )
    p.set_defaults(func=cmd_demo)


def _add_decoding_commands(sub) -> None:
    """``translate``, ``chat``, ``evaluate``, ``score`` and ``export``."""
    p = sub.add_parser("translate", help="translate text with a trained run (stdin -> stdout)")
    _add_model_args(p)
    p.add_argument("-i", "--input", help="input file, one sentence a line (default: stdin)")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument("--attention", metavar="DIR", help="write one attention heatmap per sentence")
    g = p.add_argument_group("lexical constraints (beam search: every output contains them)")
    g.add_argument(
        "--constraint",
        action="append",
        default=[],
        metavar="PHRASE",
        help="a phrase every output must contain (repeat it for several)",
    )
    g.add_argument(
        "--constraints",
        metavar="FILE",
        help="each input line's own phrases: one line per input line, tab-separated",
    )
    _add_tag_args(p)
    _add_decode_args(p)
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser(
        "chat", help="talk with a dialogue run: each reply sees the conversation so far"
    )
    _add_model_args(p)
    p.add_argument(
        "--context-turns",
        type=at_least(1),
        metavar="N",
        help="turns the model sees, yours included (default: the run's data.context_turns)",
    )
    _add_tag_args(p)
    _add_decode_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("evaluate", help="translate a test set and score it")
    _add_model_args(p)
    p.add_argument("--src", help="source sentences, one a line")
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="instead of --src/--ref: a corpus (prefix, .tsv, .jsonl, dialogues) read "
        "and rendered as the run's training data was",
    )
    p.add_argument(
        "--ref",
        action="append",
        help="reference translations, line-aligned; repeat it for several references "
        "(multi-reference BLEU/chrF, ROUGE takes the best reference)",
    )
    p.add_argument(
        "--metrics",
        default="bleu,chrf",
        help=f"comma-separated, from {','.join(metrics_lib.METRICS)}",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--hyp-out", help="also write the system outputs to this file")
    _add_tag_args(p)
    _add_decode_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "score", help="log-likelihood of each (source, target) pair (forced decoding)"
    )
    _add_model_args(p)
    p.add_argument("--src", required=True, help="source sentences, one a line")
    p.add_argument("--tgt", required=True, help="target sentences, line-aligned")
    p.add_argument(
        "-o", "--output", help="output file (default: stdout): log-prob, tokens, per token"
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        help="inference arithmetic (auto: bf16 where native)",
    )
    p.add_argument("--quantize", choices=("none", "int8"), help="int8: quantized linears (CPU)")
    _add_tag_args(p)
    p.set_defaults(func=cmd_score, beam=None, nbest=None, sample=False, seed=None, decode=[])

    _add_serve_command(sub)

    p = sub.add_parser("export", help="export a Transformer run to another inference engine")
    _add_model_args(p, ensembles=False, device=False)
    p.add_argument("out", help="output directory (must not exist)")
    p.set_defaults(func=cmd_export)


def _add_serve_command(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve runs over HTTP: a REST API with dynamic batching, and a page"
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="run directories (or exports), each NAME=DIR or DIR"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto, cpu or cuda"
    )
    p.add_argument("--threads", type=at_least(1), help="CPU threads per decoding (default: all)")
    p.add_argument(
        "--decoders", type=at_least(1), default=1, help="batches decoded at once (default: 1)"
    )
    g = p.add_argument_group("batching and limits")
    g.add_argument(
        "--max-wait-ms",
        type=at_least(0.0),
        default=5.0,
        help="how long a request waits for others to share its batch (default: 5)",
    )
    g.add_argument(
        "--max-batch",
        type=at_least(0),
        default=0,
        help="most sentences decoded together (default 0: decode.batch_tokens alone)",
    )
    g.add_argument(
        "--max-queue", type=at_least(1), default=1024, help="waiting requests before 503s"
    )
    g.add_argument("--max-texts", type=at_least(1), default=64, help="texts per request")
    g.add_argument("--max-chars", type=at_least(1), default=2000, help="characters per text")
    g.add_argument("--max-body", type=at_least(1), default=1_000_000, help="bytes per request body")
    g.add_argument("--max-beam", type=at_least(1), default=16, help="beam size a request may ask")
    g.add_argument(
        "--max-output-len",
        type=at_least(1),
        default=512,
        help="output tokens a request's decode settings may allow beyond the run's (default: 512)",
    )
    g.add_argument(
        "--timeout",
        type=at_least(0.001),
        default=60.0,
        help="seconds a request may take (default: 60)",
    )
    g.add_argument("--access-log", action="store_true", help="log every request")
    _add_decode_args(p)
    p.set_defaults(func=cmd_serve, checkpoint=None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options (train CONFIG --out DIR key=value): collect the rest.
    args, extra = parser.parse_known_args(argv)
    if extra and (
        args.command not in ("train", "distill", "prune") or any(e.startswith("-") for e in extra)
    ):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[console])
    return guarded(f"seq2seq {args.command}", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
