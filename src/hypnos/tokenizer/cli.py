"""`hypnos tokenizer train|extend|analyze`: the steps of the ``tokenizer`` stage, one at a time.

    hypnos tokenizer train corpus.jsonl notes.txt --out runs/spm --vocab-size 8000 [--jieba]
    hypnos tokenizer extend smollm2-135m-instruct runs/spm/spm.model --out runs/tok --max-new 4000 \\
        [--init mean]                       # also writes the resized, initialised model into --out
    hypnos tokenizer analyze heldout.jsonl --tokenizer base=smollm2-135m-instruct --tokenizer ext=runs/tok \\
        [--bits] --out runs/analysis        # -> analysis.md / .json / .png
    hypnos tokenizer warmup runs/tok corpus.jsonl --out runs/warm --steps 40 \\
        [--distill 1 --teacher smollm2-135m-instruct]   # train only the new rows
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)  # an error naming file:line stays on one line


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}", highlight=False)
    raise typer.Exit(1)


def _errors():
    from hypnos.common.io import DataError
    from hypnos.common.models import ModelNotFoundError
    from hypnos.tokenizer.extend import TokenizerFamilyError

    return DataError, ModelNotFoundError, TokenizerFamilyError


@app.command()
def train(
    corpus: list[Path],
    out: Annotated[Path, typer.Option(help="output dir (spm.model, corpus.txt)")],
    vocab_size: Annotated[int, typer.Option(help="target SentencePiece vocabulary size")] = 8000,
    jieba: Annotated[bool, typer.Option(help="segment into jieba words first")] = False,
) -> None:
    """Train a SentencePiece BPE model on record files (text/QA/dialogue) or plain text."""
    from hypnos.tokenizer.train_spm import spm_pieces, train_spm

    try:
        model = train_spm(corpus, out, vocab_size, jieba)
    except _errors() as e:
        _fail(str(e))
    console.print(f"{model}: {len(spm_pieces(model))} pieces", highlight=False)


@app.command()
def extend(
    base: Annotated[str, typer.Argument(help="base model ref, tokenizer dir or SentencePiece .model file")],
    pieces: Annotated[Path, typer.Argument(help="trained spm.model, or a text file with one piece per line")],
    out: Annotated[Path, typer.Option(help="output dir for the extended tokenizer (and model)")],
    max_new: Annotated[int | None, typer.Option(help="most tokens to add")] = None,
    init: Annotated[str | None, typer.Option(help="also resize the model: fused|mean|random")] = None,
) -> None:
    """Add new pieces to a base tokenizer (ids of existing tokens never change); optionally resize the model."""
    from hypnos.common.io import read_text
    from hypnos.common.models import resolve_model
    from hypnos.tokenizer.extend import extend_tokenizer
    from hypnos.tokenizer.train_spm import spm_pieces

    try:
        base_path = Path(base) if Path(base).exists() else resolve_model(base)
        if not pieces.is_file():
            _fail(f"{pieces}: file not found")
        cands = spm_pieces(pieces) if pieces.suffix == ".model" else read_text(pieces).split()
        summary = extend_tokenizer(base_path, cands, out, max_new)
    except _errors() as e:
        _fail(str(e))
    console.print(summary, highlight=False)
    if init:
        from hypnos.tokenizer.stage import build_model

        if base_path.is_file():
            _fail("--init needs a model dir as BASE, not a .model file")
        tmp = out.with_name(out.name + ".model")
        build_model(base_path, out, tmp, init)
        for f in tmp.iterdir():
            f.replace(out / f.name)
        tmp.rmdir()
        console.print(f"{out}: model resized and initialised ({init})", highlight=False)


@app.command()
def analyze(
    heldout: list[Path],
    tokenizer: Annotated[list[str], typer.Option(help="NAME=MODEL_OR_TOKENIZER_DIR (repeatable)")],
    out: Annotated[Path, typer.Option(help="report prefix: writes .md, .json and .png")] = Path("analysis"),
    bits: Annotated[bool, typer.Option(help="also bits/char of each model (the dirs must hold models)")] = False,
    max_texts: Annotated[int, typer.Option(help="held-out texts read (each cut to 300 chars)")] = 200,
) -> None:
    """Tokens/char, coverage, round-trips (and bits/char) of tokenizers on held-out text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypnos.common.models import resolve_model
    from hypnos.tokenizer.analyze import bits_per_char, load_texts, tokenizer_stats, write_report

    rows = []
    try:
        texts = load_texts(heldout, max_texts)
        for spec in tokenizer:
            name, _, ref = spec.partition("=")
            if not ref:
                _fail(f"--tokenizer {spec!r} is not NAME=DIR")
            d = resolve_model(ref)
            tok = AutoTokenizer.from_pretrained(d)
            row = {"name": name, **tokenizer_stats(tok, texts)}
            if bits:
                row["bits_per_char"] = bits_per_char(AutoModelForCausalLM.from_pretrained(d), tok, texts)
            rows.append(row)
    except _errors() as e:
        _fail(str(e))
    paths = write_report(rows, out)
    console.print(paths["md"].read_text(encoding="utf-8"), highlight=False)
    console.print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}", highlight=False)


@app.command()
def warmup(
    model: Annotated[Path, typer.Argument(help="extended model dir (from `extend --init` or the tokenizer stage)")],
    corpus: Annotated[list[Path], typer.Argument(help="record or plain-text files to train the new rows on")],
    out: Annotated[Path, typer.Option(help="output dir for the warmed-up model")],
    steps: Annotated[int, typer.Option(help="optimizer steps training only the new rows")] = 16,
    lr: Annotated[float, typer.Option(help="learning rate of the new rows")] = 3e-3,
    lora_steps: Annotated[int, typer.Option(help="then steps training the rows + a LoRA adapter (merged); 0: off")] = 64,
    lora_lr: Annotated[float, typer.Option(help="learning rate of the rows + LoRA phase")] = 1e-3,
    distill: Annotated[float, typer.Option(help="weight of the KL to the base model (0: LM loss only)")] = 0.0,
    teacher: Annotated[str | None, typer.Option(help="base model (needed with --distill)")] = None,
    seed: Annotated[int, typer.Option(help="data-order seed")] = 0,
) -> None:
    """Train the new embedding rows of an extended model on a corpus, then (--lora-steps) them and a merged LoRA
    adapter; existing embedding rows never change."""
    from hypnos.common.models import resolve_model
    from hypnos.tokenizer.extend import NEW_PIECES_FILE
    from hypnos.tokenizer.warmup import WarmupConfig, warmup_model_dir

    if not (model / NEW_PIECES_FILE).is_file():
        _fail(f"{model}: no {NEW_PIECES_FILE}; pass an extended model dir")
    if distill > 0 and not teacher:
        _fail("--distill needs --teacher (the base model)")
    try:
        cfg = WarmupConfig(steps=steps, learning_rate=lr, distill=distill, seed=seed, lora_steps=lora_steps,
                           lora_learning_rate=lora_lr)
        stats = warmup_model_dir(model, corpus, out, cfg, resolve_model(teacher) if teacher else None)
    except _errors() as e:
        _fail(str(e))
    console.print(f"{out}: {stats['rows']} new rows trained {stats['steps']} + {stats.get('lora_steps', 0)} (LoRA) steps, loss {stats['first_loss']:.3f} -> "
                  f"{stats['last_loss']:.3f} in {stats['seconds']:.0f} s", highlight=False)
