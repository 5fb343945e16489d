"""Shared fixtures. Every test runs offline on local files; ../shared/data must exist (a missing file fails)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.setdefault("LINREG_DATA_ROOT", str(REPO.parent / "shared" / "data")))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _require(path: Path) -> Path:
    assert path.exists(), f"missing shared data file {path} (tests need ../shared/data beside the repository)"
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def tinystories_train(shared_data) -> Path:
    return _require(shared_data / "tinystories" / "train.txt")


@pytest.fixture(scope="session")
def tinystories_valid(shared_data) -> Path:
    return _require(shared_data / "tinystories" / "valid.txt")


def read_stories(path: Path, limit: int | None = None) -> list[str]:
    from data.sources import read_txt_documents

    docs = read_txt_documents(path)
    return docs[:limit] if limit else docs


@pytest.fixture(scope="session")
def tiny_tokenizer(tinystories_train):
    """Byte-level BPE (vocab 512) trained on the TinyStories train text."""
    from data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(read_stories(tinystories_train), vocab_size=512, max_bytes=2_000_000)


@pytest.fixture(scope="session")
def tiny_hf_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random-init 2-layer, d64 MistralForCausalLM + tokenizer saved with save_pretrained (an 'HF export')."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    model = MistralForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny_hf_model")
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def saved_figures(monkeypatch) -> dict:
    """file name -> the matplotlib Figure saved under it while the test runs (the file is written as usual), so
    that a test reads the drawn axis labels, legends and lines back from the figure the code saved."""
    from matplotlib.figure import Figure

    saved = {}
    savefig = Figure.savefig

    def recording(self, fname, *args, **kwargs):
        saved[Path(fname).name] = self
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return saved
