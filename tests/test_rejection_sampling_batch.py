"""In-process sampling for rejection sampling goes ``generate_batch_size`` prompts per ``generate`` call (a CPU
pays per call, not per row), answers stay with their own prompt, and the draws do not depend on how whole
calls are split across processes."""

from __future__ import annotations

import transformers

from hypnos.train.rejection_sampling import Config, sample_local

PROMPTS = [[{"role": "user", "content": q}] for q in
           ("全麻醒来后嗓子疼正常吗？", "麻醉前要禁食多久？为什么喝水也不行？", "腰麻", "术后镇痛泵怎么用？", "牙科麻醉")]


def _cfg(batch: int, **kw) -> Config:
    return Config(model="m", reward_model="r", prompts=["p"], k=2, max_new_tokens=6, generate_batch_size=batch, **kw)


def test_one_generate_call_per_batch_of_prompts(tiny_model_dir, monkeypatch):
    calls = []
    real = transformers.GenerationMixin.generate

    def counting(self, *a, **kw):  # the real generate, counted
        calls.append(kw["input_ids"].shape[0])
        return real(self, *a, **kw)

    monkeypatch.setattr(transformers.GenerationMixin, "generate", counting)
    out = sample_local(str(tiny_model_dir), PROMPTS, _cfg(2), seed=0)
    assert calls == [2, 2, 1] and [len(r) for r in out] == [2] * 5


def test_batched_answers_belong_to_their_prompt(tiny_model_dir):
    # top_p this small keeps only the likeliest token: greedy, whatever the seed, so batched rows (left-padded,
    # prompts of different lengths) must give each prompt the answers it gets alone
    alone = sample_local(str(tiny_model_dir), PROMPTS, _cfg(1, top_p=1e-6), seed=0)
    batched = sample_local(str(tiny_model_dir), PROMPTS, _cfg(4, top_p=1e-6), seed=0)
    assert batched == alone and len({r[0][0] for r in alone}) > 1  # and the prompts do get different answers


def test_draws_do_not_depend_on_how_whole_calls_are_sharded(tiny_model_dir):
    cfg = _cfg(2)
    whole = sample_local(str(tiny_model_dir), PROMPTS, cfg, seed=3)
    # a second process holding the calls from prompt 2 on (offset = its first prompt's global index)
    part = sample_local(str(tiny_model_dir), PROMPTS[2:], cfg, seed=3, offset=2)
    assert part == whole[2:] and whole != sample_local(str(tiny_model_dir), PROMPTS, cfg, seed=4)


def test_keep_truncated_lets_cut_answers_compete_and_counts_them():
    from hypnos.train.rejection_sampling import pick_best, select

    p = [[{"role": "user", "content": str(i)}] for i in range(3)]
    answers = [["a", "b"], ["c", "d"], ["", "e"]]
    rewards = [[2.0, 1.0], [5.0, 0.0], [9.0, -1.0]]
    truncated = [[True, True], [True, False], [False, True]]  # prompt 0: every answer cut
    kept, dropped = select(p, answers, rewards, truncated, margin=0, floor=None)
    assert [c[-1]["content"] for c in kept] == ["d"] and dropped == {"all_truncated_or_empty": 2}
    picks, dropped = pick_best(answers, rewards, truncated, margin=0, floor=None, truncated_ok=True)
    assert picks == [(0, 0), (1, 0), (2, 1)] and dropped == {}  # an empty answer still never competes
