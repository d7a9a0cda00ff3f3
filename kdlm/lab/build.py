"""A whole lab in one directory: corpus splits, the tokenizer trained on them, and seeded models.

The same three steps the workflow runs as `kdlm lab corpus|tokenizer|model`, in one call, for code that
needs a lab of its own (the benchmarks, the tests). A lab built twice from the same arguments is the
same lab, file for file: the corpus is drawn from `corpus.seed`, the tokenizer training is deterministic
and every model's weights come from its `seed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kdlm.data.templates import DEFAULT_TEMPLATE
from kdlm.lab.corpus import CorpusConfig, build_corpus, training_texts, write_corpus
from kdlm.lab.models import LabModelConfig, build_model
from kdlm.lab.tokenizer import train_tokenizer

RESERVED = frozenset({"root", "corpus", "tokenizer", "train_json", "validation_json", "test_json"})


def build_lab(
    out_dir: Path,
    corpus: CorpusConfig,
    models: Mapping[str, LabModelConfig],
    vocab_size: int,
    template: str = DEFAULT_TEMPLATE,
) -> dict[str, Path]:
    """Build a lab in `out_dir` and return its paths.

    `out_dir/corpus/{test,validation,train}.json` are `corpus`'s splits; `out_dir/tokenizer` is a BPE of
    `vocab_size` tokens trained on the train split as the models see it (prompt through `template`, then
    the response); `out_dir/<name>` is each of `models`, built over that tokenizer (in `models`' order).

    Returns:
        `root`, `corpus`, `tokenizer`, `train_json`, `validation_json`, `test_json` and one entry per
        model name, each a path under `out_dir`.

    Raises:
        ValueError: for a model name that is one of the other keys or not a plain directory name.
    """
    out_dir = Path(out_dir)
    bad = sorted(name for name in models if name in RESERVED or not name or Path(name).name != name)
    if bad:
        raise ValueError(f"lab model names must be plain directory names other than {sorted(RESERVED)}, got {bad}")
    paths = {"root": out_dir, "corpus": out_dir / "corpus", "tokenizer": out_dir / "tokenizer"}
    for split in write_corpus(build_corpus(corpus), paths["corpus"]):
        paths[f"{split.stem}_json"] = split
    train_tokenizer(training_texts([paths["train_json"]], template), vocab_size, paths["tokenizer"])
    for name, cfg in models.items():
        paths[name] = out_dir / name
        build_model(cfg, paths["tokenizer"], paths[name])
    return paths
