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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hypnos.common.io import DataError, ReadReport

TASKS_DIR = Path(__file__).parent / "tasks"
REPO_ROOT = Path(__file__).resolve().parents[3]
OutputType = Literal["multiple_choice", "generate_until", "judge", "ner", "likert"]


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
    """e.g. ``{max_gen_toks: 128}``; overrides the stage's max_new_tokens for this task."""
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
            return lambda doc: doc[value]
        return lambda doc: value

    def data_files(self) -> list[Path]:
        """The task's data files after variable expansion and globbing (sorted)."""
        path = expand(self.dataset_path, self.folder)
        files = sorted(Path(p) for p in glob.glob(str(path))) if glob.has_magic(str(path)) else [path]
        return files

    def load(self, limit: int | None = None, quarantine_dir: Path | None = None) -> tuple[list[dict], ReadReport]:
        """The task's records as dicts (split filtered, first ``limit``), and a report of rejected rows.

        Rows an importer rejects (e.g. CMExam multi-answer questions) go to ``quarantine_dir`` and are
        counted in the report, so a skipped row is never silent.

        Raises:
            DataError: a data file is missing (naming the path and the task's YAML).
        """
        from hypnos.common.records import read_records
        from hypnos.data.importers import IMPORTERS, import_file

        files = self.data_files()
        if not files or not all(f.exists() for f in files):
            missing = next((f for f in files if not f.exists()), self.dataset_path)
            raise DataError(missing, None, f"data of task {self.task!r} not found (set HYPNOS_DATA or edit "
                                           f"{self.folder / (self.task + '.yaml')})")
        report, docs = ReadReport(), []
        for f in files:
            if self.dataset_format == "records":
                recs = read_records(f, on_error="quarantine" if quarantine_dir else "raise",
                                    quarantine_dir=quarantine_dir, report=report)
            elif self.dataset_format in IMPORTERS:
                recs, rep = import_file(self.dataset_format, f, on_error="quarantine" if quarantine_dir else "raise",
                                        quarantine_dir=quarantine_dir)
                report.read += rep.read
                report.rejected += rep.rejected
            else:
                raise TaskError(f"{self.folder}: task {self.task}: unknown dataset_format {self.dataset_format!r}")
            docs += [r.to_dict() for r in recs]
        if self.test_split is not None:
            docs = [d for d in docs if d.get("split", self.test_split) == self.test_split]
        return (docs[:limit] if limit else docs), report


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


def load_task(path: str | Path) -> Task:
    """Parse one task YAML; every problem names the file (and line where there is one)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.load(text, Loader=_loader(path))
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict) or "task" not in data:
        raise TaskError(f"{path}: a task YAML is a mapping with at least `task`")
    try:
        return Task.model_validate({**data, "folder": path.parent})
    except ValidationError as e:
        lines = {k.value: k.start_mark.line + 1 for k, _ in yaml.compose(text).value}
        msgs = []
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            where = f"{path}:{lines[key]}" if key in lines else str(path)
            msgs.append(f"{where}: {key}: {'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}")
        raise TaskError("\n".join(msgs)) from None


def discover(include_paths: list[str | Path] | None = None) -> dict[str, Task]:
    """Every task under the built-in folder and the include paths, by name (later paths override)."""
    tasks: dict[str, Task] = {}
    for root in [TASKS_DIR, *(Path(p) for p in include_paths or [])]:
        if not Path(root).is_dir():
            raise TaskError(f"{root}: task include path is not a folder")
        for yml in sorted(Path(root).rglob("*.yaml")):
            if yml.name.startswith("_") or not re.search(r"^task:", yml.read_text(encoding="utf-8"), re.MULTILINE):
                continue  # lm-eval style shared templates, and data files such as questionnaires
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
