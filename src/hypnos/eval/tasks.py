"""Evaluation tasks as data: one folder per task under ``hypnos/eval/tasks/`` holding ``<task>.yaml``.

Run: ``hypnos eval list-tasks [--include-path DIR]``

The YAML follows lm-evaluation-harness' task format where it can (``task``, ``output_type``, ``test_split``,
``doc_to_text``, ``doc_to_target``, ``doc_to_choice``, ``metric_list``, ``generation_kwargs``), with hooks
written ``doc_to_text: !function utils.doc_to_text`` (a function in the task folder's ``utils.py``).
Hypnos adds where the data is and how it is read:

    task: cmexam_anesthesia
    output_type: multiple_choice        # multiple_choice | generate_until | judge | ner | likert
    dataset_path: ${HYPNOS_DATA}/cmexam/cmexam_val_anesthesia.csv
    dataset_format: cmexam              # an importer of hypnos.data.importers, or `records`
    private: false                      # true: only scores leave the eval stage, never per-item outputs

``${HYPNOS_DATA}`` defaults to ``<repo>/../shared/data`` and ``${HYPNOS_EXAMPLES}`` to ``<repo>/examples``;
any other ``${VAR}`` is read from the environment. A relative path is relative to the task folder; a path
may be a glob (CMMLU: one CSV per subject). Tasks are found by scanning folders, never from a list.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hypnos.common.io import DataError, ReadReport

TASKS_DIR = Path(__file__).parent / "tasks"
PROMPTS = Path(__file__).parent / "prompts"
PROMPT_FILES = {"ner": ("ner_v1.jinja",), "likert": ("likert_v1.jinja",), "judge": ("judge_pairwise_v1.jinja",)}
REPO_ROOT = Path(__file__).resolve().parents[3]
OutputType = Literal["multiple_choice", "generate_until", "judge", "ner", "likert", "dialogue"]
GENERATION_KEYS = {"max_gen_toks", "until", "do_sample", "temperature"}
RAW_FORMATS = ("json", "csv")  # plain rows (lm-eval ``dataset_path: json|csv``), id = `id` field or row index


class TaskError(ValueError):
    """A task definition problem, reported as ``file:line: reason``."""


class Task(BaseModel):
    """One evaluation task, as read from its YAML."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    task: str
    """Unique task name (the table's column)."""
    output_type: OutputType
    """How it is scored: option log-likelihood/extraction, generation metrics, pairwise judge, NER, Likert."""
    dataset_path: str
    """Data file(s): a path or glob; ``${HYPNOS_DATA}``/``${HYPNOS_EXAMPLES}``/``${ENV}`` expanded."""
    dataset_format: str = "records"
    """``records`` (Hypnos JSONL records) or an importer name (cmexam, cmmlu, huatuo, span_ner, ...)."""
    test_split: str | None = None
    """Keep only rows whose ``split`` equals this (MCQ records carry one); None keeps all."""
    doc_to_text: Any = None
    """A jinja template over the record's fields, or ``!function utils.fn`` (record dict -> prompt)."""
    doc_to_target: Any = None
    """Field name, template or function giving the reference (answer letter, reference text)."""
    doc_to_choice: Any = None
    """Choice labels (multiple_choice): a list, or a function of the record; default: its option letters."""
    category_field: str = "category"
    """Record field used for per-category scores."""
    metric_list: list[dict] = Field(default_factory=list)
    """lm-eval style ``[{metric: acc}, ...]``; informational (each output_type has fixed metrics)."""
    generation_kwargs: dict = Field(default_factory=dict)
    """``{max_gen_toks: 128, until: ["\\n\\n"]}``: length (wins over the stage's) and stop strings."""
    target_delimiter: str = " "
    """Between the prompt and a choice / few-shot answer (lm-eval's default, a space)."""
    fewshot_delimiter: str = "\n\n"
    """After each few-shot example."""
    num_fewshot: int = Field(0, ge=0)
    """Solved examples before each question (the stage's ``num_fewshot`` overrides it)."""
    fewshot_path: str | None = None
    """Few-shot examples: a path or glob read like ``dataset_path`` (same format); default: ``dataset_path``
    when ``fewshot_split`` is set."""
    fewshot_split: str | None = None
    """Keep only few-shot rows whose ``split`` equals this (e.g. ``dev`` beside ``test_split: test``)."""
    prompt_description: str = ""
    """Text put once before the few-shot examples (lm-eval's ``description``)."""
    entity_types: dict[str, str] = Field(default_factory=dict)
    """NER: record type -> the Chinese name used in the prompt (e.g. ``disease: 疾病和诊断``)."""
    items_path: str | None = None
    """Likert: the questionnaire file (see docs/eval.md)."""
    private: bool = False
    """Hospital data: per-item inputs/outputs never leave the stage, only aggregate scores."""
    description: str = ""
    tag: list[str] = Field(default_factory=list)
    folder: Path = Path(".")
    """Where the YAML lives (set by the loader)."""
    includes: list[str] = Field(default_factory=list)
    """YAML files merged in through lm-eval ``include`` (set by the loader; part of the cache key)."""

    def hook(self, name: str) -> Callable[[dict], Any] | None:
        """The ``doc_to_*`` field as a callable on a record dict (None when unset)."""
        value = getattr(self, name)
        if value is None:
            return None
        if callable(value):
            return value
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            from jinja2 import Environment, StrictUndefined

            template = Environment(undefined=StrictUndefined, keep_trailing_newline=True).from_string(value)
            return lambda doc: template.render(**doc)
        if isinstance(value, str):
            return lambda doc: _field(doc, value, self.task, name)
        return lambda doc: value

    @field_validator("generation_kwargs")
    @classmethod
    def _generation(cls, v: dict) -> dict:
        bad = set(v) - GENERATION_KEYS
        if bad:
            raise ValueError(f"unsupported generation_kwargs {sorted(bad)} (supported: {sorted(GENERATION_KEYS)})")
        if v.get("do_sample") or v.get("temperature", 0):
            raise ValueError("decoding is greedy: do_sample must be false and temperature 0")
        if isinstance(v.get("until"), str):
            v = {**v, "until": [v["until"]]}
        return v

    def data_files(self) -> list[Path]:
        """The task's data files after variable expansion and globbing (sorted)."""
        return _files(self.dataset_path, self.folder)

    def source_files(self) -> list[Path]:
        """Every file that decides the task's prompts and scoring: its YAML and included YAMLs, the hook
        modules and other files of its folder, the prompt templates of its output type, few-shot data."""
        files = [p for p in sorted(self.folder.iterdir()) if p.is_file() and p.suffix in (".yaml", ".yml", ".py",
                                                                                           ".jinja", ".txt")]
        files += [Path(p) for p in self.includes]
        files += [PROMPTS / name for name in PROMPT_FILES.get(self.output_type, ())]
        if self.fewshot_path:
            files += _files(self.fewshot_path, self.folder)
        return sorted(set(files))

    def load_fewshot(self) -> list[dict]:
        """The few-shot examples (``fewshot_path``), or a TaskError when the task has none."""
        if not self.fewshot_path and not self.fewshot_split:
            raise TaskError(f"task {self.task}: num_fewshot > 0 but the task has no fewshot_path / fewshot_split")
        if self.fewshot_split and self.fewshot_split == self.test_split:
            raise TaskError(f"task {self.task}: fewshot_split equals test_split: shots would be test items")
        docs: list[dict] = []
        with tempfile.TemporaryDirectory() as tmp:  # rejected rows are dropped here as in load()
            for f in _files(self.fewshot_path or self.dataset_path, self.folder):
                docs += self._read(f, Path(tmp), ReadReport())
        if self.fewshot_split:
            docs = [d for d in docs if d.get("split") == self.fewshot_split]
        return docs

    def _read(self, f: Path, quarantine_dir: Path | None, report: ReadReport) -> list[dict]:
        from hypnos.common.records import read_records
        from hypnos.data.importers import IMPORTERS, import_file

        on_error = "quarantine" if quarantine_dir else "raise"
        if self.dataset_format == "records":
            recs = read_records(f, on_error=on_error, quarantine_dir=quarantine_dir, report=report)
        elif self.dataset_format in RAW_FORMATS:
            return _raw_rows(f)
        elif self.dataset_format in IMPORTERS:
            recs, rep = import_file(self.dataset_format, f, on_error=on_error, quarantine_dir=quarantine_dir)
            report.read += rep.read
            report.rejected += rep.rejected
        else:
            raise TaskError(f"{self.folder}: task {self.task}: unknown dataset_format {self.dataset_format!r}")
        return [r.to_dict() for r in recs]

    def load(self, limit: int | None = None, quarantine_dir: Path | None = None) -> tuple[list[dict], ReadReport]:
        """The task's records as dicts (split filtered, first ``limit``), and a report of rejected rows.

        Rows an importer rejects (e.g. CMExam multi-answer questions) go to ``quarantine_dir`` and are
        counted in the report, so a skipped row is never silent.

        Raises:
            DataError: a data file is missing (naming the path and the task's YAML).
        """
        files = self.data_files()
        if not files or not all(f.exists() for f in files):
            missing = next((f for f in files if not f.exists()), self.dataset_path)
            raise DataError(missing, None, f"data of task {self.task!r} not found (set HYPNOS_DATA or edit "
                                           f"{self.folder / (self.task + '.yaml')})")
        report, docs = ReadReport(), []
        for f in files:
            docs += self._read(f, quarantine_dir, report)
        if self.test_split is not None:
            docs = [d for d in docs if d.get("split", self.test_split) == self.test_split]
        return (docs[:limit] if limit else docs), report


def _field(doc: dict, key: str, task: str, hook: str):
    if key not in doc:
        raise TaskError(f"task {task}: {hook}: item {doc.get('id')!r} has no field {key!r} (fields: {sorted(doc)})")
    return doc[key]


def _files(pattern: str, base: Path) -> list[Path]:
    path = expand(pattern, base)
    return sorted(Path(p) for p in glob.glob(str(path))) if glob.has_magic(str(path)) else [path]


def _raw_rows(f: Path) -> list[dict]:
    """Plain JSON/JSONL/CSV rows; a row without ``id`` gets its 0-based index in the file."""
    from hypnos.common.io import iter_rows

    rows = []
    for i, item in enumerate(iter_rows(f)):
        if isinstance(item, DataError):
            raise item
        rows.append({**item.data, "id": str(item.data.get("id", i))})
    return rows


def expand(path: str, base: Path) -> Path:
    """Expand ``${HYPNOS_DATA}``, ``${HYPNOS_EXAMPLES}`` and other ``${VAR}``; relative -> under ``base``."""
    defaults = {"HYPNOS_DATA": str(REPO_ROOT.parent / "shared" / "data"), "HYPNOS_EXAMPLES": str(REPO_ROOT / "examples")}

    def sub(m: re.Match) -> str:
        name = m.group(1)
        value = os.environ.get(name) or defaults.get(name)
        if value is None:
            raise TaskError(f"environment variable {name} (used in {path!r}) is not set")
        return value

    p = Path(re.sub(r"\$\{(\w+)\}", sub, path)).expanduser()
    return p if p.is_absolute() else base / p


# ---- YAML with !function ----------------------------------------------------------------------

def _loader(path: Path) -> type[yaml.SafeLoader]:
    folder = path.parent

    class Loader(yaml.SafeLoader):
        pass

    def function(loader: yaml.SafeLoader, node: yaml.Node) -> Callable:
        module_name, _, fn = loader.construct_scalar(node).rpartition(".")
        file = folder / f"{module_name.replace('.', '/')}.py"
        if not file.is_file():
            raise TaskError(f"{path}:{node.start_mark.line + 1}: !function {module_name}.{fn}: "
                            f"{file} not found")
        spec = importlib.util.spec_from_file_location(f"hypnos_task_{folder.name}_{module_name}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        if not hasattr(module, fn):
            raise TaskError(f"{path}:{node.start_mark.line + 1}: {file} has no function {fn!r}")
        return getattr(module, fn)

    Loader.add_constructor("!function", function)
    return Loader


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader(path))
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise TaskError(f"{path}: a task YAML is a mapping")
    return data


def _with_includes(data: dict, path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, list[str]]:
    """lm-eval ``include``: the included file's keys (relative to this file's folder), overridden by ours."""
    if "include" not in data:
        return data, []
    inc = (path.parent / str(data["include"])).resolve()
    if inc in seen or not inc.is_file():
        raise TaskError(f"{path}: include: {data['include']!r} " + ("includes itself" if inc in seen else "not found"))
    base, more = _with_includes(_read_yaml(inc), inc, (*seen, inc))
    return {**base, **{k: v for k, v in data.items() if k != "include"}}, [str(inc), *more]


def load_task(path: str | Path) -> Task:
    """Parse one task YAML (Hypnos or lm-eval-harness style); every problem names the file and line."""
    from hypnos.eval import lmeval

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = _read_yaml(path)
    if "task" not in data:
        raise TaskError(f"{path}: a task YAML is a mapping with at least `task`")
    lm_style = lmeval.is_lm_eval(data)
    data, includes = _with_includes(data, path)
    if lm_style:
        data = lmeval.to_native(data, str(path))
    try:
        return Task.model_validate({**data, "folder": path.parent, "includes": includes})
    except ValidationError as e:
        lines = {k.value: k.start_mark.line + 1 for k, _ in yaml.compose(text).value}
        msgs = []
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            where = f"{path}:{lines[key]}" if key in lines else str(path)
            msgs.append(f"{where}: {key}: {'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}")
        raise TaskError("\n".join(msgs)) from None


def _is_questionnaire(path: Path) -> bool:
    if re.search(r"^task:", path.read_text(encoding="utf-8"), re.MULTILINE):
        return False
    data = _read_yaml(path)
    if {"scale", "items"} <= set(data):
        return True
    raise TaskError(f"{path}: neither a task (no `task:`) nor a questionnaire (`scale:` + `items:`); "
                    "name shared templates `_*.yaml`")


def discover(include_paths: list[str | Path] | None = None) -> dict[str, Task]:
    """Every task under the built-in folder and the include paths, by name (later paths override).

    Files named ``_*`` are shared templates (lm-eval style) and questionnaires are data; any other YAML must
    be a task: one that is not is an error, never skipped silently.
    """
    tasks: dict[str, Task] = {}
    for root in [TASKS_DIR, *(Path(p) for p in include_paths or [])]:
        if not Path(root).is_dir():
            raise TaskError(f"{root}: task include path is not a folder")
        for yml in sorted([*Path(root).rglob("*.yaml"), *Path(root).rglob("*.yml")]):
            if yml.name.startswith("_") or _is_questionnaire(yml):
                continue
            t = load_task(yml)
            tasks[t.task] = t
    return tasks


def get_tasks(names: list[str], include_paths: list[str | Path] | None = None) -> list[Task]:
    """The named tasks, or a TaskError listing the known ones."""
    known = discover(include_paths)
    missing = [n for n in names if n not in known]
    if missing:
        raise TaskError(f"unknown task(s) {missing}; known: {', '.join(sorted(known))}")
    return [known[n] for n in names]
