"""SamplingParams: defaults, normalization, validation messages and clone."""

from __future__ import annotations

import dataclasses

import pytest

from ferrule_core.errors import ConfigError
from ferrule_engine.sampling_params import SamplingParams


def test_engine_sampling_params_defaults_and_normalization():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.max_tokens, p.min_tokens, p.seed, p.logprobs) == (16, 0, None, None)
    assert p.stop == [] and p.stop_token_ids == [] and p.skip_special_tokens
    assert not p.greedy and not p.has_penalties
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(stop="\n").stop == ["\n"]
    assert SamplingParams(stop=("a", "b"), stop_token_ids=(2, 3)).stop_token_ids == [2, 3]
    assert SamplingParams(top_k=-1, max_tokens=None).top_k == -1
    assert SamplingParams(frequency_penalty=0.1).has_penalties


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"n": 0}, "n=0 must be an integer >= 1"),
        ({"temperature": -0.5}, "temperature=-0.5 must be a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"top_p": 0.0}, "top_p=0.0 must be in (0, 1]"),
        ({"top_p": 1.5}, "e.g. top_p=0.9"),
        ({"top_k": -2}, "top_k=-2 must be an integer >= 1, or 0 or -1 for off"),
        ({"top_k": 2.5}, "top_k=2.5"),
        ({"min_p": 1.1}, "min_p=1.1 must be in [0, 1]"),
        ({"repetition_penalty": 0}, "repetition_penalty=0 must be a finite number > 0"),
        ({"presence_penalty": 2.5}, "presence_penalty=2.5 must be in [-2, 2]"),
        ({"frequency_penalty": -3}, "frequency_penalty=-3 must be in [-2, 2]"),
        ({"seed": 2**64}, "must be None or an integer in [-2**63, 2**64)"),
        ({"seed": "7"}, "seed='7'"),
        ({"max_tokens": 0}, "max_tokens=0 must be None"),
        ({"min_tokens": 20}, "min_tokens=20 must not exceed max_tokens=16"),
        ({"min_tokens": -1}, "min_tokens=-1 must be an integer >= 0"),
        ({"stop": ["ok", ""]}, "every stop string must be a non-empty str"),
        ({"stop": [3]}, "holds [3]"),
        ({"stop_token_ids": [1, -2]}, "token ids are integers >= 0"),
        ({"stop_token_ids": "2"}, "must be a list of token ids"),
        ({"logprobs": -1}, "logprobs=-1 must be None or an integer >= 0"),
        ({"ignore_eos": 1}, "ignore_eos=1 must be True or False"),
    ],
)
def test_engine_sampling_params_rejects_bad_values(changes, needle):
    with pytest.raises(ConfigError) as info:
        SamplingParams(**changes)
    assert isinstance(info.value, ValueError)
    assert needle in str(info.value)
    assert "e.g." in str(info.value) or "True or False" in str(info.value)


def test_engine_sampling_params_lists_every_problem():
    with pytest.raises(ConfigError) as info:
        SamplingParams(n=0, top_p=2.0, logprobs=-3)
    assert len(info.value.problems) == 3


def test_engine_sampling_params_clone_validates_and_is_the_only_way_to_change():
    p = SamplingParams(seed=5, n=3, stop="x")
    child = p.clone(n=1, seed=p.seed + 2)
    assert (child.n, child.seed, child.stop) == (1, 7, ["x"])
    assert (p.n, p.seed) == (3, 5)
    with pytest.raises(ConfigError, match="temperature=-1"):
        p.clone(temperature=-1)
    with pytest.raises(ConfigError, match="no field tempreature; valid fields: "):
        p.clone(tempreature=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 0.5
