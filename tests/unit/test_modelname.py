"""tasks.kit.modelname: names read as Ollama reads them, and the front door's spelling patterns."""

from __future__ import annotations

import re

import pytest

from ollama_fleet.tasks.kit.modelname import canonical, is_cloud, parse, spellings_pattern

SPELLINGS = [
    "tinyllama", "tinyllama:latest", "TinyLlama:Latest", "library/tinyllama",
    "registry.ollama.ai/library/tinyllama:latest", "https://registry.ollama.ai/library/tinyllama",
    "tinyllama:1b", "library/tinyllama:1b", "llama3.2:1b", "LLAMA3.2:1B", "llama3.2",
    "registry.ollama.ai/library/llama3.2:1b", "user/tinyllama", "user/tinyllama:latest",
    "registry.ollama.ai/user/tinyllama", "hf.co/user/tinyllama", "hf.co/user/model:Q4_K_M",
    "HF.CO/user/model:q4_k_m", "http://hf.co/user/model:Q4_K_M", "hf.co/user/model",
    "mirror.local:5000/library/tinyllama", "tinyllamaX", "xtinyllama", "tiny.llama",
    "tinyllama:latest2", "all-minilm", "all-minilm:latest",
]


@pytest.mark.parametrize("model", ["tinyllama", "llama3.2:1b", "user/tinyllama",
                                   "hf.co/user/model:Q4_K_M", "library/all-minilm:latest"])
def test_a_spelling_matches_exactly_when_ollama_reads_it_as_the_same_model(model):
    pattern = re.compile(spellings_pattern(model), re.IGNORECASE)
    for spelling in SPELLINGS:
        same = parse(spelling).key == parse(model).key
        assert bool(pattern.fullmatch(spelling)) == same, (model, spelling)


def test_names_are_listed_in_their_shortest_form():
    assert [canonical(n) for n in ("registry.ollama.ai/library/tinyllama", "user/m",
                                   "hf.co/user/model:Q4")] == \
        ["tinyllama:latest", "user/m:latest", "hf.co/user/model:Q4"]


@pytest.mark.parametrize(("name", "cloud"), [
    ("gpt-oss:120b-cloud", True), ("deepseek-v3.1:671B-CLOUD", True), ("qwen3:cloud", True),
    (" kimi-k2:1t-cloud ", True), ("gpt-oss-cloud", False), ("llama3.2:1b", False),
    ("registry.example:5000/team/model-cloud", False), ("x:local", False),
])
def test_cloud_model_names_as_ollama_reads_them(name, cloud):
    assert is_cloud(name) is cloud
