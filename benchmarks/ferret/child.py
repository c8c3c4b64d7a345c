"""Runs inside ferret's own virtual environment (numpy<2, transformers<5): never imports xprune.

Usage: python child.py IN_DIR OUT_JSON. IN_DIR holds `inputs.json` (texts, per-token scores and
rationales, both over [CLS] words [SEP]) and `tokenizer/` (saved with save_pretrained). Writes
ferret 0.4.2's plausibility scores for every sentence, with its own defaults and variants.
"""

import json
import sys
import time

import numpy as np
from _tokenizer import ferret_tokenizer  # this folder: on sys.path when run as a script
from ferret.evaluators.plausibility_measures import (
    AUPRC_PlausibilityEvaluation,
    Tokenf1_PlausibilityEvaluation,
    TokenIOU_PlausibilityEvaluation,
)
from ferret.explainers.explanation import ExplanationWithRationale


def main(in_dir: str, out_json: str) -> None:
    with open(f"{in_dir}/inputs.json") as f:
        data = json.load(f)
    tokenizer = ferret_tokenizer(in_dir)
    evaluators = {"auprc": AUPRC_PlausibilityEvaluation(object(), tokenizer),
                  "token_f1": Tokenf1_PlausibilityEvaluation(object(), tokenizer),
                  "token_iou": TokenIOU_PlausibilityEvaluation(object(), tokenizer)}
    variants = [{"only_pos": only_pos, "top_k_rationale": k}
                for only_pos in (True, False) for k in data["top_k"]]
    out = {"versions": {"ferret": "0.4.2", "numpy": np.__version__}, "scores": {}}
    start = time.perf_counter()
    for name, evaluator in evaluators.items():
        for args in variants:
            if name == "auprc" and args["top_k_rationale"] != data["top_k"][0]:
                continue  # AUPRC has no k
            key = f"{name}|only_pos={args['only_pos']}|k={args['top_k_rationale']}"
            values = []
            try:
                rows = zip(data["texts"], data["tokens"], data["scores"], data["rationale"],
                           strict=True)
                for text, tokens, scores, rationale in rows:
                    explanation = ExplanationWithRationale(
                        text, tokens, np.array(scores), "given", 1, np.array(rationale))
                    values.append(float(evaluator.compute_evaluation(
                        explanation, 1, remove_first_last=True, **args).score))
            except Exception as err:  # ferret's own failure, recorded rather than hidden
                out.setdefault("errors", {})[key] = f"{type(err).__name__}: {err}"
                continue
            out["scores"][key] = values
    out["seconds"] = time.perf_counter() - start
    with open(out_json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
