"""Engine layers: context checks, dense and GPTQ linears, norms, embeddings, the attention
layer's cache writes and kernel selection (with a naive kernel registered for the test)."""

import pytest
import torch

from ferrule_core import KernelSpec, QuantizeConfig, hookimpl, load_plugins
from ferrule_core.errors import ConfigError, SelectionError
from ferrule_core.forward_batch import build_forward_batch
from ferrule_core.quant_linear import QuantLinear
from ferrule_engine.layers import (
    Attention,
    DenseLinear,
    LayerNorm,
    LMHead,
    ModelContext,
    RMSNorm,
    TensorParallelGroup,
    VocabEmbedding,
    make_linear,
    write_kv,
)

transformers = pytest.importorskip("transformers")


class NaiveAttention:
    """float64 causal attention per sequence, reading keys/values back from the cache."""

    calls = 0

    def __init__(self, layer):
        self.layer = layer

    def forward(self, query, kv_cache, batch):
        NaiveAttention.calls += 1
        layer = self.layer
        flat = kv_cache.view(2, -1, layer.num_kv_heads, layer.head_dim)
        out, start = torch.empty_like(query), 0
        groups = layer.num_heads // layer.num_kv_heads
        for s, (n, c) in enumerate(zip(batch.query_lens, batch.context_lens, strict=True)):
            pos = torch.arange(c)
            table = batch.block_tables[s].long()
            slots = table[pos // batch.block_size] * batch.block_size + pos % batch.block_size
            k = flat[0, slots].double().repeat_interleave(groups, 1)  # [c, Hq, D]
            v = flat[1, slots].double().repeat_interleave(groups, 1)
            q = query[start : start + n].double()
            scores = torch.einsum("qhd,khd->hqk", q, k) * layer.scale
            allowed = pos[None, :] <= torch.arange(c - n, c)[:, None]
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            out[start : start + n] = torch.einsum("hqk,khd->qhd", weights, v).to(query.dtype)
            start += n
        return out


class NaivePlugin:
    @hookimpl
    def ferrule_register_kernels(self):
        return [
            KernelSpec(
                name="naive-attention",
                kind="attention",
                factory=NaiveAttention,
                platforms=("cpu",),
                sliding_window=False,
            )
        ]


@pytest.fixture(scope="module")
def registry():
    return load_plugins(extra=[NaivePlugin()], use_entry_points=False)


def test_context_refuses_quantized_modules_without_a_config():
    with pytest.raises(ConfigError, match="quant is None"):
        ModelContext(quantized=frozenset({"model.layers.0.mlp.up_proj"}))
    with pytest.raises(ConfigError, match="not a floating torch dtype"):
        ModelContext(dtype=torch.int8)
    assert ModelContext(device="cpu").device == torch.device("cpu")


def test_make_linear_builds_dense_or_gptq_by_name():
    quant = QuantizeConfig(bits=4, group_size=32, desc_act=True, sym=False)
    ctx = ModelContext(quant=quant, quantized=frozenset({"a.q_proj"}), linear_kernel="reference")
    dense = make_linear(64, 32, bias=True, prefix="a.k_proj", ctx=ctx)
    assert isinstance(dense, DenseLinear)
    assert set(dict(dense.named_parameters())) == {"weight", "bias"}
    gptq = make_linear(64, 32, bias=True, prefix="a.q_proj", ctx=ctx)
    assert isinstance(gptq, QuantLinear)
    assert (gptq.bits, gptq.group_size, gptq.desc_act, gptq.sym) == (4, 32, True, False)
    assert gptq.kernel_choice == "reference" and gptq.scales.dtype == torch.float32
    assert set(gptq.state_dict()) == {"qweight", "qzeros", "scales", "g_idx", "bias"}


def test_dense_linear_is_nn_linear():
    layer = DenseLinear(8, 4, bias=True)
    reference = torch.nn.Linear(8, 4)
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(3, 8)
    # the platform's dense kernel (oneDNN on the CPU) may sum in another order than F.linear
    torch.testing.assert_close(layer(x), reference(x).detach(), rtol=1e-5, atol=1e-6)


def test_make_linear_refuses_bad_parallel_styles_and_tensor_parallelism():
    with pytest.raises(ConfigError, match="parallel='diagonal'"):
        make_linear(8, 8, bias=False, prefix="x", ctx=ModelContext(), parallel="diagonal")
    ctx = ModelContext(tp=TensorParallelGroup(rank=0, size=2))
    with pytest.raises(ConfigError, match=r"tensor parallelism \(size=2\) is not supported yet"):
        make_linear(8, 8, bias=False, prefix="x", ctx=ctx)
    with pytest.raises(ConfigError, match="rank=2, size=2"):
        TensorParallelGroup(rank=2, size=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rms_norm_matches_transformers(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    reference = LlamaRMSNorm(32, eps=1e-5).to(dtype)
    torch.nn.init.normal_(reference.weight)
    norm = RMSNorm(32, 1e-5, ctx=ModelContext(dtype=dtype))
    norm.load_state_dict(reference.state_dict())
    x = (torch.randn(5, 32) * 3).to(dtype)
    assert torch.equal(norm(x), reference(x))


def test_layer_norm_matches_torch():
    reference = torch.nn.LayerNorm(16, eps=1e-5)
    torch.nn.init.normal_(reference.weight)
    torch.nn.init.normal_(reference.bias)
    norm = LayerNorm(16, 1e-5)
    norm.load_state_dict(reference.state_dict())
    x = torch.randn(4, 16)
    assert torch.equal(norm(x), reference(x))
    assert LayerNorm(16, bias=False).bias is None


def test_tied_head_shares_the_embedding():
    ctx = ModelContext()
    embedding = VocabEmbedding(10, 4, ctx=ctx)
    torch.nn.init.normal_(embedding.weight)
    head = LMHead(4, 10, ctx=ctx, tie_to=embedding)
    assert head.weight is embedding.weight and head.tied
    hidden = torch.randn(2, 4)
    torch.testing.assert_close(head(hidden), hidden @ embedding.weight.T, rtol=1e-5, atol=1e-6)
    assert torch.equal(embedding(torch.tensor([3])), embedding.weight[3:4])
    with pytest.raises(ValueError, match="cannot tie"):
        LMHead(4, 11, ctx=ctx).tie(embedding)


def test_write_kv_skips_rows_without_a_slot():
    cache = torch.zeros(2, 3, 2, 1, 2)
    key = torch.arange(6.0).view(3, 1, 2)
    write_kv(cache, key, -key, torch.tensor([5, -1, 0]))
    flat = cache.view(2, 6, 1, 2)
    assert torch.equal(flat[0, 5], key[0]) and torch.equal(flat[0, 0], key[2])
    assert torch.equal(flat[1, 5], -key[0])
    assert flat[:, 1:5].abs().sum() == 0


def _attention(registry, **kw):
    ctx = ModelContext(registry=registry, **kw)
    return Attention(4, 2, 8, scale=8**-0.5, prefix="model.layers.0.self_attn.attn", ctx=ctx)


def test_attention_writes_the_cache_then_runs_the_selected_kernel(registry):
    layer = _attention(registry)
    layer.kv_cache = torch.zeros(2, 6, 4, 2, 8)
    batch = build_forward_batch([[3, 1], [5]], [6, 2], [6, 2], 4)
    q, k, v = torch.randn(8, 32), torch.randn(8, 16), torch.randn(8, 16)
    before = NaiveAttention.calls
    out = layer(q, k, v, batch)
    assert out.shape == (8, 32) and NaiveAttention.calls == before + 1
    assert layer.kernel_spec.name == "naive-attention"
    flat = layer.kv_cache.view(2, -1, 2, 8)
    assert torch.equal(flat[0, 3 * 4 + 1], k[1].view(2, 8))  # token 1 of seq 0: block 3
    assert torch.equal(flat[1, 5 * 4 + 1], v[7].view(2, 8))  # token 1 of seq 1: block 5
    # a single query over itself returns its value
    first = layer(q[:1], k[:1], v[:1], build_forward_batch([[2]], [1], [1], 4))
    assert torch.allclose(first.view(4, 8), v[0].view(2, 8).repeat_interleave(2, 0))


def test_attention_errors_name_the_problem(registry):
    layer = _attention(registry)
    batch = build_forward_batch([[1]], [1], [1], 4)
    q, kv = torch.randn(1, 32), torch.randn(1, 16)
    with pytest.raises(RuntimeError, match="no KV cache is bound"):
        layer(q, kv, kv, batch)
    layer.kv_cache = torch.zeros(2, 4, 4, 1, 8)
    with pytest.raises(ValueError, match=r"expected \[2, num_blocks, 4, 2, 8\]"):
        layer(q, kv, kv, batch)
    with pytest.raises(ConfigError, match="multiple of num_kv_heads=3"):
        Attention(4, 3, 8, scale=1.0, prefix="p", ctx=ModelContext())


def test_attention_kernel_choice_and_refusals_are_explained(registry):
    layer = _attention(registry, attention_kernel="flash")
    layer.kv_cache = torch.zeros(2, 4, 4, 2, 8)
    batch = build_forward_batch([[1]], [1], [1], 4)
    with pytest.raises(SelectionError, match="no attention kernel named 'flash'"):
        layer(torch.randn(1, 32), torch.randn(1, 16), torch.randn(1, 16), batch)
    ctx = ModelContext(registry=registry)
    windowed = Attention(4, 2, 8, scale=1.0, sliding_window=16, prefix="p", ctx=ctx)
    windowed.kv_cache = torch.zeros(2, 4, 4, 2, 8)
    with pytest.raises(SelectionError, match="does not support sliding-window attention"):
        windowed(torch.randn(1, 32), torch.randn(1, 16), torch.randn(1, 16), batch)


def test_gated_mlp_in_row_slices_equals_one_pass(monkeypatch):
    import torch

    from ferrule_engine.layers import mlp as mlp_module
    from ferrule_engine.layers.context import ModelContext

    torch.manual_seed(0)
    layer = mlp_module.GatedMLP(16, 40, hidden_act="silu", prefix="mlp", ctx=ModelContext())
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter)
    x = torch.randn(23, 16)
    with torch.inference_mode():
        whole = layer(x)
        monkeypatch.setattr(mlp_module, "CHUNK_ROWS", 5)
        sliced = layer(x)
    scale = whole.abs().max()
    assert torch.allclose(whole, sliced, rtol=1e-5, atol=1e-5 * scale)
    with torch.no_grad():  # the out-of-place path computes the same
        assert torch.allclose(layer(x), whole, rtol=1e-5, atol=1e-5 * scale)
