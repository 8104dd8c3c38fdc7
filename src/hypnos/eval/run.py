"""The ``eval`` stage: several models side by side on the same tasks.

Run: ``hypnos eval run --model smol=smollm2-135m-instruct --task anesthesia_mcq --limit 20`` or in a recipe::

    - name: eval
      kind: eval
      models: {base: smollm2-135m-instruct, sft: "@sft_general", teacher: teacher}  # label -> ref or endpoint
      tasks: [anesthesia_mcq, anesthesia_openqa, anesthesia_cases]
      limit: 20
      judge: teacher                  # an endpoint of the recipe
      pairs: [[sft, base]]

A model is a recipe endpoint name (called through the stage's cached client), an ``"@stage"`` reference,
a local dir, or a built-in/hub model, loaded in this process one after another. Each (task, model) writes
``scores/<task>/<label>.json`` (and ``predictions/<task>/<label>.jsonl`` unless the task is private) as
soon as it is done; a killed stage resumes from there, and judge calls resume from the client's cache.
Outputs: ``results`` (results.json: every score with its CI, judge verdicts, contamination) and
``predictions``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hypnos.common.io import read_jsonl, write_jsonl
from hypnos.common.stage import StageConfig, StageContext, StageResult, is_ref
from hypnos.eval.tasks import Task, TaskError, get_tasks
from hypnos.train.common import Precision

log = logging.getLogger("hypnos")
PER_ITEM = ("rougeL_items",)  # per-item lists dropped from the scores of private tasks


class HeldoutSpec(BaseModel):
    """Held-out sets scored in bits/char by every local model of the stage (endpoints have no logits here)."""

    model_config = ConfigDict(extra="forbid")
    sets: dict[str, str | list[str]] = Field(min_length=1)
    """Set name -> file or files pooled into one set (path or ``"@stage.output"``): QA/text records or plain text,
    one text per line."""
    extra_models: dict[str, str] = Field(default_factory=dict)
    """Models scored on the held-out sets only (e.g. ``extended: "@tokenizer"``, the model before any SFT)."""
    pairs: list[list[str]] = Field(default_factory=list)
    """``[a, b]``: a's bits/char minus b's on the same texts, paired bootstrap 95% CI (negative: a reads better)."""
    mode: Literal["text", "answer"] = "answer"
    """``answer``: score the answer given the question; ``text``: score question and answer."""
    max_texts: int = Field(200, ge=1)
    max_chars: int = Field(300, ge=1)
    precision: Precision = "auto"
    """``auto``: bf16 autocast where the hardware multiplies bf16 (2-3x faster; bits/char within 0.001 of fp32 on
    the demo's texts), else fp32. ``fp32`` for exact figures."""


class Config(StageConfig):
    """Evaluation of several models on the same tasks."""

    models: dict[str, str] = Field(min_length=1)
    """Row label -> model: a recipe endpoint name, ``"@stage"``, a local dir, or a built-in/hub model."""
    tasks: list[str] = Field(min_length=1)
    """Task names (``hypnos eval list-tasks``)."""
    include_paths: list[str] = Field(default_factory=list)
    """Extra folders scanned for task YAMLs."""
    limit: int | None = Field(None, ge=1)
    """First N items of every task (None: all)."""
    task_limits: dict[str, int] = Field(default_factory=dict)
    """Per-task ``limit`` (task name -> first N items), e.g. fewer judged cases where each costs a judge call."""
    judge: str | None = None
    """Endpoint that judges answer pairs of ``judge`` tasks."""
    pairs: list[list[str]] = Field(default_factory=list)
    """Model label pairs ``[a, b]`` the judge compares (a's win rate is reported)."""
    batch_size: int = Field(8, ge=1)
    """Prompts per forward/generate call for local models."""
    max_new_tokens: int = Field(128, ge=1)
    """Greedy generation length for open answers (a task's ``generation_kwargs.max_gen_toks`` wins)."""
    repetition_penalty: float = Field(1.0, ge=1.0)
    """Greedy decoding of local models with HF's repetition penalty (1.0: off); the same for every model, and
    stated in the report, since it changes Distinct-n and the overlap metrics."""
    no_repeat_ngram_size: int = Field(0, ge=0)
    """Local models never repeat a token n-gram of this size in an answer (0: off); same for every model."""
    precision: Precision = "auto"
    """Open answers of local models generated under bf16 autocast (``auto``: where the hardware multiplies bf16,
    2-3x faster on such a CPU) or in fp32; multiple-choice log-likelihoods are always fp32. Stated in the report."""
    tokenization: Literal["char", "zh", "jieba"] = "char"
    """Tokens for BLEU/ROUGE/GLEU/Distinct."""
    chat_template: bool = True
    """Wrap prompts of local models in their chat template (when they have one)."""
    contamination: bool = True
    """Check every training set of the run (and ``train_files``) against every benchmark."""
    train_files: list[str] = Field(default_factory=list)
    """More training files for the contamination check."""
    num_fewshot: int | None = Field(None, ge=0)
    """Solved examples before each multiple-choice question (None: each task's own ``num_fewshot``)."""
    circular: bool = False
    """Multiple choice: also ask every rotation of the options (CircularEval), reported beside accuracy."""
    heldout: HeldoutSpec | None = None
    """Bits/char of the local models on held-out text none of them trained on (``heldout.py``), with paired CIs."""

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, v: list[list[str]]) -> list[list[str]]:
        for p in v:
            if len(p) != 2 or p[0] == p[1]:
                raise ValueError(f"a pair is two different model labels, got {p}")
        return v

    def input_files(self, ctx: StageContext) -> list[Path]:
        """Every file a task reads: data, YAML (and included YAMLs), hooks, prompt templates, few-shot data.

        Editing any of them re-runs the evaluation instead of reusing stale scores.
        """
        try:
            return [f for t in get_tasks(self.tasks, self.include_paths) for f in [*t.data_files(), *t.source_files()]]
        except TaskError:
            return []  # `check` reports it

    def check(self, ctx: StageContext) -> list[str]:
        """Tasks exist, pair labels are models, the judge is an endpoint, stage references are earlier."""
        problems = []
        try:
            tasks = get_tasks(self.tasks, self.include_paths)
        except TaskError as e:
            problems.append(f"stage {ctx.name!r}: {e}")
            tasks = []
        for t in tasks:
            if self.num_fewshot and t.output_type == "multiple_choice" and not (t.fewshot_path or t.fewshot_split):
                problems.append(f"stage {ctx.name!r}: num_fewshot {self.num_fewshot} but task {t.task} has no "
                                "few-shot data (fewshot_path or fewshot_split in its YAML)")
        for p in self.pairs:
            problems += [f"stage {ctx.name!r}: pair label {x!r} is not in models" for x in p if x not in self.models]
        problems += [f"stage {ctx.name!r}: task_limits names {t!r}, not one of the stage's tasks"
                     for t in self.task_limits if t not in self.tasks]
        problems += [f"stage {ctx.name!r}: task_limits[{t!r}] must be >= 1, got {n}"
                     for t, n in self.task_limits.items() if n < 1]
        if self.pairs and not self.judge:
            problems.append(f"stage {ctx.name!r}: pairs given but no judge endpoint")
        if self.judge and self.judge not in ctx.recipe.endpoints:
            problems.append(f"stage {ctx.name!r}: judge {self.judge!r} is not an endpoint of the recipe")
        for ref in self.models.values():
            if is_ref(ref):
                problems += ctx.check_ref(ref, "model")
        if self.heldout:
            problems += _check_heldout(self.heldout, self.models, ctx)
        return problems


def _files(files: str | list[str]) -> list[str]:
    """A held-out set's files: one path or several pooled."""
    return [files] if isinstance(files, str) else files


def _check_heldout(spec: HeldoutSpec, models: dict[str, str], ctx: StageContext) -> list[str]:
    """Held-out files exist (or name earlier stages), models are local, pair labels are known."""
    problems = []
    for files in spec.sets.values():
        for path in _files(files):
            problems += ctx.check_ref(path, "heldout")
    for ref in spec.extra_models.values():
        if is_ref(ref):
            problems += ctx.check_ref(ref, "model")
    local = _heldout_models(spec, models, ctx)
    for p in spec.pairs:
        if len(p) != 2 or p[0] == p[1]:
            problems.append(f"stage {ctx.name!r}: heldout pair is two different model labels, got {p}")
        problems += [f"stage {ctx.name!r}: heldout pair label {x!r} is not a local model of the stage "
                     f"({', '.join(local)})" for x in p if x not in local]
    return problems


def _heldout_models(spec: HeldoutSpec, models: dict[str, str], ctx: StageContext) -> dict[str, str]:
    """Label -> model of every model with logits here: the stage's local models, then ``extra_models``."""
    return {k: v for k, v in {**models, **spec.extra_models}.items() if v not in ctx.recipe.endpoints}


def _run_heldout(spec: HeldoutSpec, models: dict[str, str], ctx: StageContext) -> dict:
    """``{set: heldout.evaluate(...)}``, each written to ``heldout/<set>.json`` (a resumed stage reuses it)."""
    from hypnos.eval import heldout

    refs = {k: str(ctx.resolve_model(v)) for k, v in _heldout_models(spec, models, ctx).items()}
    out = {}
    for name, path in spec.sets.items():
        dest = ctx.out_dir / "heldout" / f"{name}.json"
        if not dest.exists():
            log.info("[eval] held-out bits/char on %s (%s)", name, path)
            res = heldout.evaluate(refs, [ctx.resolve(p) for p in _files(path)], spec.mode, spec.max_texts, spec.max_chars,
                                   [tuple(p) for p in spec.pairs], ctx.seed, spec.precision)
            res["settings"]["files"] = _files(path)  # as the recipe names them: no machine path in the report
            heldout.write_result(res, dest)
        out[name] = json.loads(dest.read_text(encoding="utf-8"))
        out[name].pop("per_text", None)  # stays in heldout/<set>.json; results.json keeps the summaries
    return out


def _load_model(cfg: Config, ctx: StageContext, label: str):
    from hypnos.eval.backends import EndpointLM, LocalLM

    ref = cfg.models[label]
    if ref in ctx.recipe.endpoints:
        return EndpointLM(ctx.client(ref), ref)
    log.info("[eval] loading %s = %s", label, ref)
    return LocalLM(ctx.resolve_model(ref), batch_size=cfg.batch_size, chat_template=cfg.chat_template,
                   repetition_penalty=cfg.repetition_penalty, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                   bf16_generate=_bf16(cfg))


def _bf16(cfg: Config) -> bool:
    from hypnos.train.common import autocast_bf16

    return autocast_bf16(cfg.precision)


def _evaluate(cfg: Config, ctx: StageContext, task: Task, docs: list[dict], model) -> tuple[dict, list[dict]]:
    from hypnos.eval import bias, mcq, ner, openqa

    if task.output_type == "multiple_choice":
        return mcq.evaluate(task, docs, model, seed=ctx.seed, num_fewshot=cfg.num_fewshot, circular=cfg.circular)
    if task.output_type in ("generate_until", "judge"):
        return openqa.evaluate(task, docs, model, cfg.max_new_tokens, cfg.tokenization, ctx.seed)
    if task.output_type == "ner":
        return ner.evaluate(task, docs, model, cfg.max_new_tokens, ctx.seed)
    if task.output_type == "dialogue":
        from hypnos.eval import dialogue

        return dialogue.evaluate(task, docs, model, cfg.max_new_tokens, cfg.tokenization, ctx.seed)
    return bias.evaluate(task, docs, model)


def _load_docs(cfg: Config, ctx: StageContext, tasks: list[Task]) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    from hypnos.eval import bias

    docs, info = {}, {}
    for t in tasks:
        if t.output_type == "likert":
            docs[t.task], rejected = bias.load_scale(t.data_files()[0])["items"], {}
        else:
            docs[t.task], report = t.load(cfg.task_limits.get(t.task, cfg.limit),
                                          quarantine_dir=ctx.out_dir / "quarantine")
            rejected = report.reasons
        info[t.task] = {"output_type": t.output_type, "n": len(docs[t.task]), "private": t.private,
                        "rejected_rows": rejected, "description": t.description,
                        "data": [str(f) for f in t.data_files()]}
    return docs, info


def _paths(ctx: StageContext, task: str, label: str) -> tuple[Path, Path]:
    return (ctx.out_dir / "scores" / task / f"{label}.json", ctx.out_dir / "predictions" / task / f"{label}.jsonl")


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Evaluate every model on every task, judge the pairs, check contamination; write results.json."""
    tasks = get_tasks(cfg.tasks, cfg.include_paths)
    docs, info = _load_docs(cfg, ctx, tasks)
    scores: dict[str, dict[str, dict]] = {t.task: {} for t in tasks}
    for label in cfg.models:
        todo = [t for t in tasks if not _paths(ctx, t.task, label)[0].exists()]
        model = _load_model(cfg, ctx, label) if todo else None
        for t in todo:
            log.info("[eval] %s on %s (%d items)", label, t.task, len(docs[t.task]))
            s, rows = _evaluate(cfg, ctx, t, docs[t.task], model)
            score_path, pred_path = _paths(ctx, t.task, label)
            if t.private:
                s = {k: v for k, v in s.items() if k not in PER_ITEM}
            else:
                write_jsonl(pred_path, rows)
            score_path.parent.mkdir(parents=True, exist_ok=True)
            score_path.write_text(json.dumps(s, ensure_ascii=False, indent=1), encoding="utf-8")
        if model is not None:
            model.close()
        for t in tasks:
            scores[t.task][label] = json.loads(_paths(ctx, t.task, label)[0].read_text(encoding="utf-8"))

    results = {"models": {k: v for k, v in cfg.models.items()}, "tasks": info, "scores": scores,
               "settings": {"limit": cfg.limit, "task_limits": cfg.task_limits, "max_new_tokens": cfg.max_new_tokens,
                            "decoding": _decoding(cfg),
                            "tokenization": cfg.tokenization, "judge": cfg.judge, "chat_template": cfg.chat_template,
                            "num_fewshot": cfg.num_fewshot, "circular": cfg.circular,
                            "seed": ctx.seed, "ci": "95% percentile bootstrap over items, 1000 resamples",
                            "paired": "difference of the first minus the second model over the same items: paired "
                                      "bootstrap 95% CI; McNemar exact p for accuracy"}}
    results["methods"] = {t.task: {m: s.get("method") for m, s in scores[t.task].items()} for t in tasks}
    results["paired"] = _paired(cfg, ctx, tasks, ctx.seed)
    results["judge"] = _judge(cfg, ctx, tasks)
    if cfg.heldout:
        results["heldout"] = _run_heldout(cfg.heldout, cfg.models, ctx)
    if cfg.contamination:
        from hypnos.eval.contamination import check

        results["contamination"] = check(ctx, cfg.train_files, tasks, docs)
    (ctx.out_dir / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=1, default=str),
                                              encoding="utf-8")
    return StageResult(outputs={"results": "results.json", "predictions": "predictions"},
                       counts={"models": len(cfg.models), "tasks": len(tasks),
                               "items": sum(len(v) for v in docs.values())},
                       metrics=_headline(tasks, scores), usage=ctx.usage())


def _judge(cfg: Config, ctx: StageContext, tasks: list[Task]) -> dict:
    from hypnos.eval import judge

    out: dict = {}
    if not cfg.judge:
        return out
    for t in tasks:
        if t.output_type != "judge":
            continue
        if t.private:
            log.warning("[eval] %s is private: its answers are not kept, so it cannot be judged", t.task)
            continue
        rows = {label: read_jsonl(_paths(ctx, t.task, label)[1]) for label in cfg.models}
        out[t.task] = {f"{a} vs {b}": judge.compare(t, rows[a], rows[b], ctx.client(cfg.judge), ctx.seed)
                       for a, b in cfg.pairs}
    return out


def _decoding(cfg: Config) -> str:
    """How answers were decoded, as the report states it."""
    from hypnos.eval.backends import decoding_kwargs

    extra = [f"{k} {v:g}" for k, v in decoding_kwargs(cfg.repetition_penalty, cfg.no_repeat_ngram_size).items()]
    extra += ["bf16 autocast"] if _bf16(cfg) else []
    return "greedy" + (f" ({', '.join(extra)}; every local model alike)" if extra else "")


def _paired(cfg: Config, ctx: StageContext, tasks: list[Task], seed: int) -> dict:
    """Every model-vs-model difference on every task, paired over the same items (see ``stats.paired``)."""
    from hypnos.eval.stats import paired

    labels = list(cfg.models)
    out: dict = {}
    for t in tasks:
        if t.output_type == "likert":
            continue  # an attitude score has no better direction to compare
        if t.private:
            out[t.task] = {"note": "private task: per-item scores are not kept, so no paired comparison"}
            continue
        rows = {m: read_jsonl(_paths(ctx, t.task, m)[1]) for m in labels}
        out[t.task] = {f"{a} vs {b}": paired(t.output_type, rows[a], rows[b], seed)
                       for i, a in enumerate(labels) for b in labels[i + 1:]}
    return out


def _headline(tasks: list[Task], scores: dict) -> dict:
    """One number per (task, model) for the manifest: accuracy, ROUGE-L, F1 or the scale mean."""
    key = {"multiple_choice": "accuracy", "generate_until": "rougeL", "judge": "rougeL", "ner": "f1",
           "likert": "total", "dialogue": "rougeL"}
    return {f"{t.task}/{label}": round(s.get(key[t.output_type], float("nan")), 4)
            for t in tasks for label, s in scores[t.task].items()}
