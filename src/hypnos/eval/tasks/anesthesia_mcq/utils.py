"""Prompt hooks for the sample anesthesiology MCQ task (lm-eval ``!function utils.doc_to_text`` style)."""


def doc_to_text(doc: dict) -> str:
    """Question, lettered options, then ``答案：`` so the next token is the answer letter."""
    options = "\n".join(f"{k}. {v}" for k, v in doc["options"].items())
    return f"以下是麻醉学单项选择题，请直接给出正确答案的选项。\n\n{doc['question'].strip()}\n{options}\n答案："


def doc_to_choice(doc: dict) -> list[str]:
    """The option letters of this question (A..E)."""
    return list(doc["options"])
