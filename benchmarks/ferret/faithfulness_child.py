"""Runs inside ferret's own virtual environment (numpy<2, transformers<5): never imports xprune.

Usage: python faithfulness_child.py IN_DIR OUT_JSON. IN_DIR holds `faithfulness.json` (texts,
per-token scores over [CLS] words [SEP], the BERT config and the thresholds), `model.safetensors`
(the weights xprune's side saved) and `tokenizer/tokenizer.json`. Writes ferret 0.4.2's AOPC
comprehensiveness, AOPC sufficiency and tau-LOO for every sentence, with tokens deleted from the
sequence (ferret's default) and replaced by [MASK], the time they took and the peak memory.
"""

import json
import resource
import sys
import time

import numpy as np
import torch
from _tokenizer import ferret_tokenizer  # this folder: on sys.path when run as a script
from ferret.evaluators.faithfulness_measures import (
    AOPC_Comprehensiveness_Evaluation,
    AOPC_Sufficiency_Evaluation,
    TauLOO_Evaluation,
)
from ferret.explainers.explanation import Explanation
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification


def main(in_dir: str, out_json: str) -> None:
    with open(f"{in_dir}/faithfulness.json") as f:
        data = json.load(f)
    tokenizer = ferret_tokenizer(in_dir)
    model = BertForSequenceClassification(BertConfig(**data["config"]))
    model.load_state_dict(load_file(f"{in_dir}/model.safetensors"), strict=True)
    model = model.double().eval()
    torch.set_num_threads(1)
    evaluators = {"comprehensiveness": AOPC_Comprehensiveness_Evaluation(model, tokenizer),
                  "sufficiency": AOPC_Sufficiency_Evaluation(model, tokenizer),
                  "tau_loo": TauLOO_Evaluation(model, tokenizer)}
    out = {"versions": {"ferret": "0.4.2", "numpy": np.__version__, "torch": torch.__version__},
           "scores": {}, "seconds": {}}
    target = data["target"]
    for name, evaluator in evaluators.items():
        for delete in (True, False):
            if name == "tau_loo" and not delete:
                continue  # ferret's leave-one-out always deletes
            key = f"{name}|{'delete' if delete else 'replace'}"
            args = {"remove_first_last": True, "only_pos": True,
                    "removal_args": {"remove_tokens": delete, "based_on": "perc",
                                     "thresholds": data["thresholds"]}}
            times = []
            for _ in range(data["repeats"]):   # CPU seconds, the least of a few runs
                start = time.process_time()
                values = []
                for text, tokens, scores, t in zip(data["texts"], data["tokens"],
                                                   data["scores"], target, strict=True):
                    explanation = Explanation(text, tokens, np.array(scores), "given", t)
                    values.append(float(evaluator.compute_evaluation(explanation, t,
                                                                     **args).score))
                times.append(time.process_time() - start)
            out["seconds"][key] = min(times)
            out["scores"][key] = values
    out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(out_json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
