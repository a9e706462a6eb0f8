"""The sampler against float64 references: filters, penalties, seeds, frequencies, logprobs."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from ferrule_engine.penalties import apply_penalties_
from ferrule_engine.sampler import (
    Sampler,
    SamplerOutput,
    SamplingRow,
    make_generator,
    processed_probs,
)
from ferrule_engine.sampling_params import SamplingParams


def reference_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The filtered distribution of one row, naively in float64 (ties at a cut are kept)."""
    logits = logits.double()
    if p.greedy:
        return torch.nn.functional.one_hot(logits.argmax(), logits.numel()).double()
    z = logits / p.temperature
    probs = torch.softmax(z, dim=0)
    keep = torch.ones_like(probs, dtype=torch.bool)
    if 0 < p.top_k < z.numel():
        greater = (z.unsqueeze(0) > z.unsqueeze(1)).sum(dim=1)  # tokens above each token
        keep &= greater < p.top_k
    if p.top_p < 1:
        q = torch.where(keep, probs, 0)
        q = q / q.sum()
        above = ((z.unsqueeze(0) > z.unsqueeze(1)) * q.unsqueeze(0)).sum(dim=1)
        keep &= above < p.top_p
    if p.min_p > 0:
        keep &= probs >= p.min_p * probs.max()
    out = torch.where(keep, probs, 0)
    return out / out.sum()


FILTERS = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.5),
    SamplingParams(temperature=1.7, top_k=1),
    SamplingParams(temperature=0.9, top_k=7),
    SamplingParams(temperature=1.2, top_k=300),
    SamplingParams(temperature=0.8, top_p=0.9),
    SamplingParams(temperature=3.0, top_p=0.97),  # a wide nucleus: candidates must grow
    SamplingParams(temperature=1.0, top_p=0.05),
    SamplingParams(temperature=1.0, min_p=0.1),
    SamplingParams(temperature=4.0, min_p=0.01),  # min-p keeps more than the candidates
    SamplingParams(temperature=0.7, top_k=50, top_p=0.8, min_p=0.05),
    SamplingParams(temperature=2.0, top_k=900, top_p=0.99),
]


@pytest.mark.parametrize("vocab", [1000, 3001])
def test_engine_sampler_filters_match_float64_reference(vocab):
    torch.manual_seed(0)
    logits = torch.randn(len(FILTERS), vocab) * 4
    rows = [SamplingRow(p) for p in FILTERS]
    probs = processed_probs(logits, rows)
    for i, p in enumerate(FILTERS):
        ref = reference_probs(logits[i], p)
        assert torch.equal(probs[i] > 0, ref > 0), f"kept set differs for {p}"
        torch.testing.assert_close(probs[i].double(), ref, atol=2e-6, rtol=1e-4)


def test_engine_sampler_filters_keep_ties_at_the_cut():
    torch.manual_seed(1)
    logits = torch.randint(-4, 5, (6, 200)).float()  # many equal logits
    params = [
        SamplingParams(top_k=3),
        SamplingParams(top_k=40),
        SamplingParams(top_p=0.3),
        SamplingParams(top_p=0.75, top_k=20),
        SamplingParams(min_p=0.3),
        SamplingParams(temperature=0.5, top_p=0.5, min_p=0.1),
    ]
    probs = processed_probs(logits, [SamplingRow(p) for p in params])
    for i, p in enumerate(params):
        ref = reference_probs(logits[i], p)
        assert torch.equal(probs[i] > 0, ref > 0), f"kept set differs for {p}"
        torch.testing.assert_close(probs[i].double(), ref, atol=1e-6, rtol=1e-5)


def test_engine_sampler_greedy_is_argmax_and_fast_path_matches():
    torch.manual_seed(2)
    logits = torch.randn(9, 500)
    sampler = Sampler(seed=0)
    fast = sampler.sample(logits, [SamplingRow(SamplingParams(temperature=0))] * 9)
    assert fast.token_ids == logits.argmax(dim=-1).tolist()
    assert fast.logprobs == [None] * 9
    # greedy rows inside a mixed batch (with logprobs, so not the fast path)
    params = [SamplingParams(temperature=0, logprobs=0), SamplingParams()] * 4 + [
        SamplingParams(temperature=0)
    ]
    out = sampler.sample(logits, [SamplingRow(p) for p in params])
    for i in range(0, 9, 2):
        assert out.token_ids[i] == int(logits[i].argmax())


def test_engine_sampler_repetition_penalty_matches_transformers():
    torch.manual_seed(3)
    logits = torch.randn(3, 64) * 3
    histories = [([1, 2, 3, 3, 60], [7, 1, 7]), ([5], []), ([], [0, 63, 63])]
    penalties = [1.3, 0.7, 2.0]
    ours = logits.clone()
    params = [SamplingParams(repetition_penalty=r) for r in penalties]
    apply_penalties_(ours, params, histories)
    for i, ((prompt, output), r) in enumerate(zip(histories, penalties, strict=True)):
        ids = torch.tensor([prompt + output])
        expected = RepetitionPenaltyLogitsProcessor(r)(ids, logits[i : i + 1].clone())
        torch.testing.assert_close(ours[i : i + 1], expected, rtol=0, atol=0)
    assert not torch.equal(ours, logits)


def test_engine_sampler_presence_frequency_follow_openai():
    torch.manual_seed(4)
    logits = torch.randn(2, 50)
    histories = [([3, 4, 4], [4, 9, 9, 9, 12]), ([8], [8, 8, 1])]
    params = [
        SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
        SamplingParams(presence_penalty=-1.0, frequency_penalty=1.5),
    ]
    ours = logits.clone()
    apply_penalties_(ours, params, histories)
    expected = logits.clone().double()
    for i, ((_, output), p) in enumerate(zip(histories, params, strict=True)):
        for token, count in Counter(output).items():  # the prompt does not count
            expected[i, token] -= p.presence_penalty + p.frequency_penalty * count
    torch.testing.assert_close(ours.double(), expected, atol=1e-6, rtol=0)


def test_engine_sampler_applies_penalties_before_greedy_and_temperature():
    torch.manual_seed(5)
    logits = torch.randn(2, 40)
    top = int(logits[0].argmax())
    greedy = SamplingParams(temperature=0, repetition_penalty=1e6)
    sampled = SamplingParams(temperature=0.5, repetition_penalty=1.5, frequency_penalty=0.5)
    rows = [SamplingRow(greedy, [top], []), SamplingRow(sampled, [1, 2], [2, 3])]
    out = Sampler(seed=0).sample(logits, rows)
    penalized = logits[0].clone()
    penalized[top] = penalized[top] / 1e6 if penalized[top] > 0 else penalized[top] * 1e6
    assert out.token_ids[0] == int(penalized.argmax()) != top
    expected = logits[1:].clone()
    apply_penalties_(expected, [sampled], [([1, 2], [2, 3])])
    probs = processed_probs(logits, rows)
    torch.testing.assert_close(probs[1], torch.softmax(expected[0] / 0.5, dim=0), atol=1e-6, rtol=0)


def test_engine_sampler_seeded_rows_do_not_depend_on_the_batch():
    torch.manual_seed(6)
    vocab, steps = 2000, 6
    seeded = [
        SamplingParams(seed=11, top_p=0.9),
        SamplingParams(seed=12, temperature=1.5),  # whole-row draws
        SamplingParams(seed=13, top_k=40, min_p=0.02),
    ]
    target = [torch.randn(steps, vocab) * 3 for _ in seeded]

    def tokens(order, others):
        """Each step: the seeded rows in ``order`` among ``others`` unseeded rows."""
        gens = [make_generator(p.seed) for p in seeded]
        sampler = Sampler(seed=others)
        got = {j: [] for j in order}
        for step in range(steps):
            rows, logits = [], []
            for j in order:
                rows.append(SamplingRow(seeded[j], [1, 2], [], gens[j]))
                logits.append(target[j][step])
                for k in range(others):
                    rows.append(SamplingRow(SamplingParams(top_k=1 + 300 * k, temperature=2.0)))
                    logits.append(torch.randn(vocab) * 5)
            out = sampler.sample(torch.stack(logits), rows)
            for j, r in zip(order, range(0, len(rows), others + 1), strict=True):
                got[j].append(out.token_ids[r])
        return got

    alone = {j: tokens([j], 0)[j] for j in range(len(seeded))}
    for order, others in [([0, 1, 2], 0), ([2, 0, 1], 3), ([1, 2, 0], 1)]:
        assert tokens(order, others) == alone
    # another seed gives another stream
    gen = make_generator(99)
    other = [
        Sampler().sample(target[1][s : s + 1], [SamplingRow(seeded[1], [], [], gen)]).token_ids[0]
        for s in range(steps)
    ]
    assert other != alone[1]


def test_engine_sampler_needs_a_generator_for_seeded_rows():
    with pytest.raises(ValueError, match="seed=5 but no generator"):
        Sampler().sample(torch.randn(1, 10), [SamplingRow(SamplingParams(seed=5))])
    with pytest.raises(ValueError, match="3 rows but 1 SamplingRows"):
        Sampler().sample(torch.randn(3, 10), [SamplingRow(SamplingParams())])


def _chi_square_ok(counts: torch.Tensor, probs: torch.Tensor, draws: int) -> float:
    """Pearson chi-square within 6 standard deviations of its mean; tokens expected fewer
    than 5 times are pooled into one bin (the usual rule for the test to be meaningful)."""
    kept = probs > 0
    assert counts[~kept].sum() == 0, "a filtered-out token was drawn"
    expected, observed = probs[kept] * draws, counts[kept]
    rare = expected < 5
    expected = torch.cat([expected[~rare], expected[rare].sum().view(1)])
    observed = torch.cat([observed[~rare], observed[rare].sum().view(1)])
    stat = float(((observed - expected) ** 2 / expected.clamp(min=1e-12)).sum())
    df = len(expected) - 1
    assert stat < df + 6 * math.sqrt(2 * max(df, 1)), f"chi-square {stat:.1f} for df={df}"
    return stat


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.9),
        SamplingParams(temperature=1.3, top_k=12),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=1.0, min_p=0.02),
        SamplingParams(seed=3, temperature=1.1, top_p=0.95),
    ],
    ids=["temperature", "top_k", "top_p", "min_p", "seeded"],
)
def test_engine_sampler_frequencies_match_probabilities(params):
    torch.manual_seed(7)
    vocab = 2500  # > 2 blocks of the two-level inverse CDF, not a multiple of 1024
    logits = torch.full((vocab,), -12.0)
    favourites = torch.tensor([0, 5, 1023, 1024, 1800, 2047, 2048, 2400, 2499])
    logits[favourites] = torch.linspace(-1.0, 2.0, len(favourites))
    logits[::97] += torch.rand(len(logits[::97]))
    probs = processed_probs(logits.unsqueeze(0), [SamplingRow(params)])[0].double()
    sampler, batch, draws = Sampler(seed=0), 250, 8000
    rows = [SamplingRow(params)] * batch
    if params.seed is not None:  # each row its own generator (seeds differ: independent draws)
        rows = [
            SamplingRow(params.clone(seed=s), generator=make_generator(s)) for s in range(batch)
        ]
    counts = torch.zeros(vocab, dtype=torch.float64)
    for _ in range(draws // batch):
        tokens = sampler.sample(logits.expand(batch, vocab), rows).token_ids
        counts += torch.bincount(torch.tensor(tokens), minlength=vocab).double()
    _chi_square_ok(counts, probs, draws)


def test_engine_sampler_logprobs_come_from_raw_logits():
    torch.manual_seed(8)
    logits = torch.randn(4, 300) * 2
    params = [
        SamplingParams(temperature=0.7, logprobs=5, repetition_penalty=1.5),
        SamplingParams(temperature=0, logprobs=0),
        SamplingParams(top_k=3),
        SamplingParams(temperature=2.0, logprobs=300),
    ]
    rows = [SamplingRow(p, [1, 2, 3], [4]) for p in params]
    out = Sampler(seed=0).sample(logits, rows)
    assert isinstance(out, SamplerOutput) and out.logprobs[2] is None
    reference = torch.log_softmax(logits.double(), dim=-1)
    for i in (0, 1, 3):
        lp, token = out.logprobs[i], out.token_ids[i]
        assert lp.token_id == token
        assert lp.logprob == pytest.approx(float(reference[i, token]), abs=1e-5)
        assert lp.rank == 1 + int((logits[i] > logits[i, token]).sum())
        n = params[i].logprobs
        assert len(lp.top) == n
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True)
        assert [t for t, _ in lp.top] == reference[i].topk(n).indices.tolist()
        for t, v in lp.top:
            assert v == pytest.approx(float(reference[i, t]), abs=1e-5)
        assert next(iter(lp.as_dict())) == token
    assert out.logprobs[1].rank == 1 and out.logprobs[1].top == []


def test_engine_sampler_masked_tokens_and_tiny_temperatures():
    torch.manual_seed(9)
    logits = torch.randn(3, 3000) * 5
    logits[:, 1000:] = -math.inf  # e.g. padding of the vocabulary
    params = [
        SamplingParams(temperature=1e-4),  # z reaches far below float32's exp range
        SamplingParams(temperature=0.05, top_p=0.99),
        SamplingParams(temperature=1.0, min_p=1e-30),
    ]
    probs = processed_probs(logits, [SamplingRow(p) for p in params])
    assert probs[:, 1000:].sum() == 0 and torch.isfinite(probs).all()
    for i, p in enumerate(params[:2]):
        torch.testing.assert_close(
            probs[i].double(), reference_probs(logits[i], p), atol=1e-6, rtol=0
        )
    out = Sampler(seed=0).sample(logits.repeat(100, 1), [SamplingRow(p) for p in params] * 100)
    assert max(out.token_ids) < 1000
    assert out.token_ids[0::3] == [int(logits[0].argmax())] * 100
