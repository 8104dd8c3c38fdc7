"""lm-evaluation-harness compatibility: read its task YAMLs that use local data files, export ours.

Read (through ``hypnos.eval.tasks.load_task``): a YAML without Hypnos' ``dataset_format`` that uses lm-eval
keys (``include``, ``dataset_path: json|csv`` with ``dataset_kwargs.data_files``, ``test_split``,
``fewshot_split``, ``doc_to_text``/``doc_to_target``/``doc_to_choice``, ``target_delimiter``,
``fewshot_delimiter``, ``num_fewshot``, ``description``, ``generation_kwargs.until``/``max_gen_toks``,
``metric_list``) is translated into a Hypnos task. Any other key, a hub dataset, or a metric we do not
compute is refused with an error naming it: a key we ignored would silently change the numbers.
Relative ``data_files`` are resolved against the YAML's folder (lm-eval resolves them against the CWD).

Export: ``hypnos eval export-lm-eval TASK DIR`` writes ``DIR/TASK/TASK.yaml`` and ``DIR/TASK/TASK.jsonl``
(each item's rendered prompt, choices and gold index), so ``lm_eval --include_path DIR --tasks TASK`` asks
the same questions with the same targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hypnos.eval.tasks import Task, TaskError

# lm-eval keys we honour; everything else is refused by name.
SUPPORTED = {"task", "include", "dataset_path", "dataset_kwargs", "dataset_name", "test_split", "validation_split",
             "training_split", "fewshot_split", "output_type", "doc_to_text", "doc_to_target", "doc_to_choice",
             "target_delimiter", "fewshot_delimiter", "num_fewshot", "generation_kwargs", "metric_list", "metadata",
             "tag", "description"}
LM_EVAL_ONLY = {"include", "dataset_kwargs", "dataset_name", "validation_split", "training_split",
                "metadata"}
METRICS = {"multiple_choice": {"acc"}, "generate_until": {"exact_match", "bleu", "rouge"}}


def is_lm_eval(data: dict) -> bool:
    """True for an lm-eval-harness task mapping (not a Hypnos one): lm-eval-only keys or a json/csv builder."""
    if "dataset_format" in data:
        return False
    return bool(LM_EVAL_ONLY & set(data)) or data.get("dataset_path") in ("json", "csv")


def to_native(data: dict, where: str) -> dict:
    """The Hypnos task fields of an lm-eval task mapping.

    Raises:
        TaskError: naming ``where`` and the key (or value) that is not supported.
    """
    unsupported = sorted(set(data) - SUPPORTED)
    if unsupported:
        raise TaskError(f"{where}: unsupported lm-eval key(s) {unsupported} (supported: {sorted(SUPPORTED)})")
    if not isinstance(data.get("task"), str):
        raise TaskError(f"{where}: task: a group of tasks (a list) is not supported; write one YAML per task")
    if data.get("dataset_path") not in ("json", "csv"):
        raise TaskError(f"{where}: dataset_path: {data.get('dataset_path')!r} is a hub dataset; only local files "
                        "(dataset_path: json or csv, with dataset_kwargs.data_files) are supported")
    if data.get("dataset_name") is not None:
        raise TaskError(f"{where}: dataset_name: not supported with local data files")
    kwargs = data.get("dataset_kwargs") or {}
    if set(kwargs) != {"data_files"}:
        raise TaskError(f"{where}: dataset_kwargs: only data_files is supported, got {sorted(kwargs)}")
    files = kwargs["data_files"]
    files = files if isinstance(files, dict) else {"train": files}
    output_type = data.get("output_type", "generate_until")
    if output_type not in METRICS:
        raise TaskError(f"{where}: output_type: {output_type!r} is not supported (multiple_choice, generate_until)")
    for m in data.get("metric_list") or []:
        extra = set(m) - {"metric", "aggregation", "higher_is_better"}
        if m.get("metric") not in METRICS[output_type] or extra or m.get("aggregation", "mean") != "mean":
            raise TaskError(f"{where}: metric_list: {m} is not supported for {output_type} "
                            f"(metrics {sorted(METRICS[output_type])}, aggregation mean)")
    test = _split_file(files, data.get("test_split") or data.get("validation_split"), "test_split", where)
    shots = data.get("fewshot_split") or data.get("training_split") or data.get("validation_split")
    out = {"task": data["task"], "output_type": output_type, "dataset_path": test,
           "dataset_format": data["dataset_path"], "metric_list": data.get("metric_list") or [],
           "tag": [data["tag"]] if isinstance(data.get("tag"), str) else data.get("tag") or [],
           "prompt_description": data.get("description", "")}
    if shots and shots != (data.get("test_split") or data.get("validation_split")):
        out["fewshot_path"] = _split_file(files, shots, "fewshot_split", where)
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter", "fewshot_delimiter",
                "num_fewshot", "generation_kwargs"):
        if key in data:
            out[key] = data[key]
    return out


def _split_file(files: dict, split: str | None, key: str, where: str) -> str:
    if split is None:
        raise TaskError(f"{where}: {key}: missing (data_files has splits {sorted(files)})")
    if split not in files:
        raise TaskError(f"{where}: {key}: split {split!r} is not in data_files ({sorted(files)})")
    f = files[split]
    if isinstance(f, list):
        if len(f) != 1:
            raise TaskError(f"{where}: data_files.{split}: one file per split is supported, got {len(f)}")
        f = f[0]
    return str(f)


# ---- export ------------------------------------------------------------------------------------

def export(task: Task, out_dir: str | Path, limit: int | None = None) -> Path:
    """Write ``out_dir/<task>/<task>.yaml`` + ``.jsonl`` that lm-eval runs with the same prompts and targets.

    Raises:
        TaskError: private tasks (their items must not leave the machine's eval stage) and output types
            lm-eval cannot score the same way (ner, judge, likert).
    """
    from hypnos.eval import mcq, openqa

    if task.private:
        raise TaskError(f"task {task.task} is private: its items are not exported")
    if task.output_type not in ("multiple_choice", "generate_until"):
        raise TaskError(f"task {task.task}: output_type {task.output_type} has no lm-eval equivalent "
                        "(multiple_choice and generate_until are exported)")
    if task.num_fewshot:
        raise TaskError(f"task {task.task}: few-shot tasks are not exported (shots are chosen per item)")
    docs, _ = task.load(limit)
    folder = Path(out_dir) / task.task
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{task.task}.jsonl"
    rows = []
    for d in docs:
        if task.output_type == "multiple_choice":
            ch = mcq.choices_of(task, d)
            prompt = task.prompt_description + (task.hook("doc_to_text") or mcq.default_text)(d)
            rows.append({"id": d["id"], "query": prompt, "choices": ch, "gold": ch.index(mcq.gold_of(task, d, ch))})
        else:
            prompt = task.prompt_description + (task.hook("doc_to_text") or openqa.default_text)(d)
            target = (task.hook("doc_to_target") or (lambda x: x["output"]))(d)
            rows.append({"id": d["id"], "query": prompt, "target": target})
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = {"task": task.task, "dataset_path": "json",
           # absolute: lm-eval (datasets) resolves data_files against the current directory
           "dataset_kwargs": {"data_files": {"test": str(data.resolve())}}, "test_split": "test",
           "output_type": task.output_type, "doc_to_text": "{{query}}", "metadata": {"version": 1.0}}
    if task.output_type == "multiple_choice":
        cfg.update({"doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
                    "target_delimiter": task.target_delimiter, "metric_list": [{"metric": "acc"}]})
    else:
        cfg.update({"doc_to_target": "{{target}}", "metric_list": [{"metric": "exact_match"}],
                    "generation_kwargs": {"until": task.generation_kwargs.get("until", ["\n\n"]),
                                          "max_gen_toks": task.generation_kwargs.get("max_gen_toks", 128),
                                          "do_sample": False}})
    path = folder / f"{task.task}.yaml"
    path.write_text(f"# Exported by `hypnos eval export-lm-eval {task.task}`; run: lm_eval --include_path "
                    f"{Path(out_dir).resolve()} --tasks {task.task}\n"
                    + yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
