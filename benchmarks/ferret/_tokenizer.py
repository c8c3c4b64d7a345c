"""The tokenizer both ferret children (child.py, faithfulness_child.py) rebuild in ferret's venv.

The tokenizer.json that transformers 5 saved names, in its tokenizer_config, a class that
transformers 4 (ferret's) does not have, so the fast tokenizer is built from the file itself.
"""

from transformers import PreTrainedTokenizerFast


def ferret_tokenizer(in_dir: str) -> PreTrainedTokenizerFast:
    """The BERT-style word tokenizer written under ``in_dir/tokenizer``."""
    return PreTrainedTokenizerFast(
        tokenizer_file=f"{in_dir}/tokenizer/tokenizer.json", pad_token="[PAD]",
        unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
