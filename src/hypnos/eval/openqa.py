"""Open QA: greedy answers scored against references with BLEU, ROUGE, GLEU and Distinct on Chinese.

Every metric comes from its reference library on the same tokens:

- **BLEU-1..4**: ``sacrebleu.BLEU(max_ngram_order=n)``, *corpus* level, cumulative (geometric mean of
  1..n-gram precisions with brevity penalty), sacrebleu's default ``exp`` smoothing, scale 0-100.
- **ROUGE-1/2/L**: ``rouge_score.RougeScorer`` F1 with our tokenizer, *sentence* level, averaged over items
  (0-1); ROUGE-L also gets a bootstrap CI and its per-item values (for the report's distributions).
- **GLEU**: ``nltk.translate.gleu_score.corpus_gleu`` (1..4-grams), *corpus* level (0-1).
- **Distinct-1/2**: distinct n-grams / all n-grams over every prediction, *corpus* level (0-1).

Tokens: ``char`` (default: each non-space character, so Latin words and numbers split into letters too),
``zh`` (sacrebleu's zh tokenizer: Chinese characters split, Latin/number runs kept whole) or ``jieba`` words.
"""

from __future__ import annotations

from typing import Literal

from hypnos.eval.stats import mean_ci
from hypnos.eval.tasks import Task

Tokenization = Literal["char", "zh", "jieba"]


def tokenize(text: str, how: Tokenization = "char") -> list[str]:
    """Split Chinese text into scoring tokens."""
    if how == "char":
        return [c for c in text if not c.isspace()]
    if how == "jieba":
        import jieba

        return [w for w in jieba.lcut(text) if w.strip()]
    if how == "zh":
        from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

        return TokenizerZh()(text).split()
    raise ValueError(f"unknown tokenization {how!r} (char, zh, jieba)")


class _RougeTokenizer:
    """rouge-score's tokenizer interface (``tokenize(text) -> list[str]``); its default drops all Chinese."""

    def __init__(self, how: Tokenization):
        self.how = how

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.how)


def distinct(predictions: list[str], n: int, how: Tokenization = "char") -> float:
    """Distinct-n: unique n-grams / total n-grams over all predictions (0 when there are none)."""
    grams = []
    for p in predictions:
        toks = tokenize(p, how)
        grams += [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def text_metrics(predictions: list[str], references: list[str], how: Tokenization = "char", seed: int = 0) -> dict:
    """BLEU-1..4, ROUGE-1/2/L, GLEU, Distinct-1/2 of predictions against one reference each.

    Returns:
        The values plus ``settings`` stating level, smoothing and tokenization of each, and
        ``rougeL_items`` (per-item ROUGE-L F1).
    """
    from nltk.translate.gleu_score import corpus_gleu
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import BLEU

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    hyp_tok = [tokenize(p, how) for p in predictions]
    ref_tok = [tokenize(r, how) for r in references]
    # pre-tokenised, space-joined, so sacrebleu scores exactly our tokens
    hyp_s, ref_s = [" ".join(t) for t in hyp_tok], [" ".join(t) for t in ref_tok]
    out: dict = {}
    for n in range(1, 5):
        out[f"bleu{n}"] = BLEU(tokenize="none", max_ngram_order=n).corpus_score(hyp_s, [ref_s]).score
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_RougeTokenizer(how))
    per = [scorer.score(r, p) for p, r in zip(predictions, references)]
    for k in ("rouge1", "rouge2", "rougeL"):
        out[k] = sum(s[k].fmeasure for s in per) / len(per) if per else 0.0
    out["rougeL_items"] = [round(s["rougeL"].fmeasure, 4) for s in per]
    out["rougeL_ci"] = mean_ci(out["rougeL_items"], seed)["ci"]
    out["gleu"] = corpus_gleu([[r] for r in ref_tok], hyp_tok, min_len=1, max_len=4) if hyp_tok else 0.0
    out["distinct1"] = distinct(predictions, 1, how)
    out["distinct2"] = distinct(predictions, 2, how)
    out["settings"] = {
        "tokenization": how,
        "bleu": "sacrebleu corpus BLEU, cumulative n-gram order 1..4, smooth_method=exp, tokenize=none on "
                "pre-tokenised text, 0-100",
        "rouge": "rouge-score F1 per sentence, averaged (0-1)",
        "gleu": "nltk corpus_gleu, min_len=1, max_len=4 (0-1)",
        "distinct": "unique/total n-grams over all predictions (corpus, 0-1)",
    }
    return out


def default_text(doc: dict) -> str:
    """The user turn of a QA record: the vignette (if any) then the question."""
    return f"{doc['input']}\n{doc['instruction']}" if doc.get("input") else doc["instruction"]


def truncate(text: str, until: list[str] | None) -> str:
    """The text up to the first stop string (lm-eval ``generation_kwargs.until``); greedy decoding makes
    cutting afterwards the same as stopping there."""
    for stop in until or []:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()


def answer(task: Task, docs: list[dict], model, max_new_tokens: int) -> list[str]:
    """Greedy answers of a model to QA docs (the task's ``max_gen_toks`` wins over the stage's)."""
    to_text = task.hook("doc_to_text") or default_text
    max_new = task.generation_kwargs.get("max_gen_toks", max_new_tokens)
    out = model.generate([task.prompt_description + to_text(d) for d in docs], max_new, desc=task.task)
    return [truncate(a, task.generation_kwargs.get("until")) for a in out]


def evaluate(task: Task, docs: list[dict], model, max_new_tokens: int = 128, how: Tokenization = "char",
             seed: int = 0) -> tuple[dict, list[dict]]:
    """Answer QA docs and score the answers against their ``output`` references.

    Returns:
        (scores, predictions) with one prediction row per doc (id, category, prediction, reference).
    """
    preds = answer(task, docs, model, max_new_tokens)
    scores, rows = score_answers(task, docs, dict(zip([d["id"] for d in docs], preds)), how, seed)
    scores["max_new_tokens"] = task.generation_kwargs.get("max_gen_toks", max_new_tokens)
    scores["method"] = "generation"
    return scores, rows


def score_answers(task: Task, docs: list[dict], answers: dict[str, str | None], how: Tokenization = "char",
                  seed: int = 0) -> tuple[dict, list[dict]]:
    """Score answers (item id -> text) against the docs' references; a missing answer scores as empty."""
    to_target = task.hook("doc_to_target") or (lambda d: d["output"])
    preds = [answers.get(d["id"]) or "" for d in docs]
    refs = [str(to_target(d)) for d in docs]
    scores = text_metrics(preds, refs, how, seed)
    scores["exact_match"] = sum(p.strip() == r.strip() for p, r in zip(preds, refs)) / len(docs) if docs else 0.0
    scores["n"] = len(docs)
    scores["empty_answers"] = sum(not p for p in preds)
    scores["missing"] = sum(d["id"] not in answers for d in docs)
    rows = [{"id": d["id"], "category": d.get(task.category_field, ""), "prediction": p, "reference": r,
             "rougeL": s} for d, p, r, s in zip(docs, preds, refs, scores["rougeL_items"])]
    return scores, rows

