from __future__ import annotations

import torch

from automerge.zoo import card


def test_task_arithmetic():
    b = {"w": torch.zeros(2)}
    x = {"w": torch.tensor([1.0, 0.0])}
    y = {"w": torch.tensor([0.0, 2.0])}
    out = card.task_arithmetic(b, [x, y], [0.5, 0.5])
    assert torch.equal(out["w"], torch.tensor([0.5, 1.0]))


def test_measure_on_test_zoo(test_zoo):
    res = card.measure(test_zoo, max_doc_tokens=64, progress=False)
    labels = ["base", "code", "lang", "tests", "mix"] + [m[0] for m in card.merge_list()]
    assert list(res["rows"]) == labels
    for row in res["rows"].values():
        assert set(row) == set(card.DOMAIN_ORDER)
        assert all(0 < v < 20 for v in row.values())
    res["checks"] = card.checks(res["rows"])
    assert "code@code" in res["checks"]["margins"]
    table = card.render(res)
    assert table.startswith("| model |") and "linear code+lang 0.5/0.5" in table


def test_pair_scoring_counts_target_tokens_only(test_zoo):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(test_zoo / "models" / "base"))
    rows = card.encode_domain(tok, [{"prompt": "def f(x):\n    \"\"\"Doc.\"\"\"", "target": "\n    return x\n"}],
                              eot=0, seq_len=64, max_doc_tokens=64, pairs=True)
    (inp, tgt), = rows
    n_target = len(tok("\n    return x\n", add_special_tokens=False)["input_ids"])
    assert sum(t != -100 for t in tgt) == n_target
    assert inp[0] == 0
