"""Code summarisation as a full task: generate the one-line docstring summary of held-out functions
(the zoo's format: code without its docstring, then ``"# Summary:"``) and compare with the real
summary using maintained implementations: sacrebleu's corpus BLEU-4 and chrF, and rouge-score's
ROUGE-L (F1, stemmed). All three are reported on a 0–1 scale (BLEU and chrF divided by 100);
chrF is the primary metric (character n-grams: informative even when BLEU is 0 for tiny models).
"""

from __future__ import annotations

from collections.abc import Sequence

SUMMARY_STOP = ("\n",)


def summary_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    hyps = [h.strip() for h in hypotheses]
    refs = [r.strip() for r in references]
    if not refs:
        return {"bleu4": 0.0, "chrf": 0.0, "rougeL": 0.0}
    bleu = sacrebleu.corpus_bleu(hyps, [refs]).score / 100.0      # BLEU-4, 13a tokenisation, brevity penalty
    chrf = sacrebleu.corpus_chrf(hyps, [refs]).score / 100.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rl = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]
    return {"bleu4": float(bleu), "chrf": float(chrf), "rougeL": float(sum(rl) / len(rl)),
            "empty_frac": float(sum(1 for h in hyps if not h) / len(hyps))}
