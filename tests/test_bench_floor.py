"""The float32 floor that `bench/throughput.py` prints: matrix-product FLOPs counted over the tokens the
embedder's batches carry, padding included."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import throughput  # noqa: E402

from ontosearch.constants import DEFAULT_EMBEDDER  # noqa: E402
from ontosearch.embedders import minilm_dir, onnx_embedder  # noqa: E402

# all-MiniLM-L6-v2 as its model card describes it: 6 layers, hidden size 384, feed-forward size 1,536.
LAYERS, HIDDEN, INNER = 6, 384, 1536


def _flops(texts: int, width: int) -> int:
    per_token_layer = 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * INNER + 2 * width * HIDDEN)
    return texts * width * LAYERS * per_token_layer


def test_the_floor_counts_the_padded_tokens_of_one_batch_and_each_token_sequence_once() -> None:
    embedder = onnx_embedder(DEFAULT_EMBEDDER, minilm_dir(), "mean", 128)
    short, long = "hepatocyte", "CD4-positive, alpha-beta memory T cell of the lung"
    widths = [len(ids) for ids in embedder.tokenizer.encode([short, long])]
    assert widths[0] < widths[1]
    config = json.loads((embedder.model_dir / "config.json").read_text())
    flops, tokens = throughput.matmul_flops(embedder, [short, long, short.upper()], config)
    # "HEPATOCYTE" is "hepatocyte" to the uncased tokenizer: two sequences, fewer than a batch's
    # minimum, so both ride in one batch as wide as the longer.
    assert tokens == 2 * widths[1]
    assert flops == _flops(2, widths[1])
