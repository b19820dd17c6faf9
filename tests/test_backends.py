"""The backends (tinygpt.backends) against PyTorch with the same cache dtype; the C++ step's limits and build."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tinygpt.files.quantize import Int8Linear, quantize_int8
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT, KVCache
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.serving import backends
from tinygpt.serving.backends import CppBackend, TorchBackend, build_lock, load_backend
from tinygpt.serving.generate import complete


def cpp_built() -> None:
    """CI must have a compiler; elsewhere its absence skips the C++ tests."""
    if backends.extension() is None:
        if os.environ.get("CI"):
            pytest.fail("the C++ decode step could not be built")
        pytest.skip("the C++ decode step could not be built here (no C++ compiler?)")


# Widths that are not multiples of the kernel's 64-column panels exercise its padding; a head size of
# 64 (the shipped model's) takes the attention's own code for that size.
SHAPES = [
    dict(n_layer=2, n_head=2, n_embd=32),
    dict(n_layer=3, n_head=3, n_embd=72),
    dict(n_layer=1, n_head=4, n_embd=128),
    dict(n_layer=2, n_head=2, n_embd=128),
]


def model_of(tokenizer: CharTokenizer, block_size: int = 24, **shape) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab=tokenizer.vocab, block_size=block_size, dropout=0.0, **shape)).eval()
    with torch.no_grad():  # far from the near-uniform initial model: logits reach ~25, so errors show
        for p in model.parameters():
            p.mul_(8)
    return model


# Agreement with the reference, relative to the logits' scale. float32: rounding (PyTorch's own cached
# steps differ as much). A float16 or int8 cache: where two computations' float32 keys or values
# straddle a rounding boundary, they store numbers a step apart (an ulp of float16; 1/127 of the
# vector's largest for int8), and these sharp models amplify that along a sequence (up to ~1e-3 of
# the scale seen over 60 positions). A mistake in the computation (a position, a head, a scale) is
# off by far more: a float32 cache in place of the int8 one moves these models' logits by 14-43% of
# their scale.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.int8: 3e-3}


def one_pass(model: GPT, idx: torch.Tensor, cache_dtype: torch.dtype) -> torch.Tensor:
    """The logits of every position of idx in one forward pass: without a cache for float32; else
    through a cache of that dtype, so attention sees keys and values rounded as a backend stores them."""
    if cache_dtype == torch.float32:
        return model(idx)[0]
    cache = KVCache.empty(model.config, idx.size(0), cache_dtype)
    return model(idx, cache=cache, input_pos=torch.zeros(idx.size(0), dtype=torch.long))[0]


def backend_of(name: str, model: GPT):
    if name == "cpp":
        cpp_built()
        return CppBackend(model)
    return TorchBackend(quantize_int8(model), "int8") if name == "int8" else TorchBackend(model)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["torch", "int8", "cpp"])
def test_every_backend_gives_the_reference_logits_for_ragged_batches(tokenizer, shape, name):
    """Three sequences at different positions, in steps of every size, up to the end of the window."""
    reference = model_of(tokenizer, **shape)
    if name == "int8":  # its reference is the int8 model recomputing everything (see the next test)
        if shape["n_embd"] % 16:
            with pytest.raises(ValueError, match="multiple of 16"):  # PyTorch's int8 kernel would crash
                quantize_int8(reference)
            return
        reference = quantize_int8(reference)
    backend = backend_of(name, model_of(tokenizer, **shape))
    idx = torch.randint(reference.config.vocab_size, (3, 24), generator=torch.Generator().manual_seed(1))
    cache = KVCache.empty(reference.config, 3, backend.cache_dtype)
    with torch.inference_mode():
        full = one_pass(reference, idx, backend.cache_dtype)
        got = torch.zeros_like(full)
        starts = [2, 5, 9]  # each row's prefill, then steps of the same size for all three
        for row, start in enumerate(starts):
            got[row, :start] = backend(idx[row : row + 1, :start], torch.tensor([0]), cache.rows(row, row + 1))[0]
        pos = torch.tensor(starts)
        for size in [1, 2, 4, 8]:  # 15 positions: row 2 reaches the end of the window
            rows = torch.stack([idx[r, p : p + size] for r, p in enumerate(pos.tolist())])
            logits = backend(rows, pos, cache)
            for r, p in enumerate(pos.tolist()):
                got[r, p : p + size] = logits[r]
            pos += size
    filled = torch.arange(24) < pos[:, None]
    tolerance = TOLERANCE[backend.cache_dtype] * full.abs().max().item()
    torch.testing.assert_close(got[filled], full[filled], atol=tolerance, rtol=1e-5)


def test_int8_weights_stay_close_to_float32(tiny_config):
    torch.manual_seed(0)
    exact = GPT(tiny_config).eval()
    with torch.no_grad():  # logits of a few units, not the near-uniform initial ones
        for p in exact.parameters():
            p.mul_(3)
    same = GPT(tiny_config)
    same.load_state_dict(exact.state_dict())
    quantized = quantize_int8(same)
    idx = torch.randint(tiny_config.vocab_size, (2, tiny_config.block_size))
    reference, approx = exact(idx)[0], quantized(idx)[0]
    assert (reference - approx).abs().max() < 0.03 * reference.abs().max()
    assert (reference.softmax(-1) - approx.softmax(-1)).abs().max() < 0.01
    assert quantized.num_params() == exact.num_params()


class CountingDecoder:
    def __init__(self, decoder) -> None:
        self.decoder, self.calls = decoder, 0

    def step(self, *args):
        self.calls += 1
        return self.decoder.step(*args)


def test_every_pass_is_one_cpp_call_a_prompt_the_length_of_the_window_included(tokenizer):
    cpp_built()
    model = model_of(tokenizer, block_size=160, **SHAPES[3])
    backend = CppBackend(model)
    backend.decoder = counting = CountingDecoder(backend.decoder)
    idx = torch.randint(model.config.vocab_size, (1, 160), generator=torch.Generator().manual_seed(2))
    cache, stepped_cache = (KVCache.empty(model.config, 1, backend.cache_dtype) for _ in range(2))
    with torch.inference_mode():
        got = backend(idx, torch.tensor([0]), cache)
        assert counting.calls == 1
        stepped = torch.cat([backend(idx[:, p : p + 1], torch.tensor([p]), stepped_cache) for p in range(160)], 1)
        full = one_pass(model, idx, backend.cache_dtype)
    assert torch.equal(got, stepped) and torch.equal(cache.k, stepped_cache.k)  # each row computed as when alone
    # Against PyTorch: over 160 positions a key or value or two lands on the other side of an int8
    # rounding step than PyTorch's and, amplified by this sharp model, moves its own position's
    # logits; any mistake would move most positions.
    close = (got - full).abs().amax(-1) <= TOLERANCE[backend.cache_dtype] * full.abs().max()
    assert close.float().mean() >= 0.95


def test_greedy_and_seeded_text_match_pytorch_past_the_window_alone_and_in_batches(tokenizer):
    cpp_built()
    reference = TorchBackend(model_of(tokenizer, **SHAPES[1]), cache_dtype=torch.int8)
    cpp = CppBackend(model_of(tokenizer, **SHAPES[1]))
    for temperature, num_samples in [(0.0, 1), (1.0, 1), (1.0, 3)]:
        texts = []
        for backend in (reference, cpp):
            _, steps = complete(backend, tokenizer, "ROMEO:\nWhat", 100, temperature, seed=7, num_samples=num_samples)
            texts.append(["".join(chars) for chars in zip(*(s.chars for s in steps), strict=True)])
        assert texts[0] == texts[1]


def test_a_large_batch_split_across_threads_gives_each_row_its_logits_alone(tokenizer):
    """13 sequences on 3 threads, each at its own position, far apart (the parts are cut by work, so
    they differ in size): every row's logits are bit for bit those of the same row stepped alone,
    and the cache rows hold the same."""
    cpp_built()
    model = model_of(tokenizer, block_size=64, **SHAPES[1])
    backend = CppBackend(model, threads=3)
    rows = 13
    idx = torch.randint(model.config.vocab_size, (rows, 64), generator=torch.Generator().manual_seed(2))
    starts = torch.arange(rows) * 37 % 58 + 2  # 2 .. 59, in no order
    batch, alone = (KVCache.empty(model.config, rows, backend.cache_dtype) for _ in range(2))
    with torch.inference_mode():
        for row, start in enumerate(starts.tolist()):
            for cache in (batch, alone):
                backend(idx[row : row + 1, :start], torch.tensor([0]), cache.rows(row, row + 1))
        tokens = idx.gather(1, starts[:, None])
        stepped = backend(tokens, starts, batch)
        for row in range(rows):
            one = backend(tokens[row : row + 1], starts[row : row + 1], alone.rows(row, row + 1))
            assert torch.equal(stepped[row], one[0]), f"row {row}"
        reference = one_pass(model, idx[:, : starts.max() + 1], backend.cache_dtype)
    expected = reference[torch.arange(rows), starts]
    tolerance = TOLERANCE[backend.cache_dtype] * expected.abs().max().item()
    torch.testing.assert_close(stepped[:, 0], expected, atol=tolerance, rtol=1e-5)
    assert torch.equal(batch.k, alone.k) and torch.equal(batch.v, alone.v)


def test_a_prompt_split_by_rows_across_threads_gives_the_logits_of_one_thread(tokenizer):
    """A prefill's rows are cut across threads, which meet at every layer (each row attends to keys
    the others store): logits and cache bit for bit those of one thread, and close to PyTorch's."""
    cpp_built()
    model = model_of(tokenizer, block_size=64, **SHAPES[1])
    one, three = CppBackend(model, threads=1), CppBackend(model, threads=3)
    idx = torch.randint(model.config.vocab_size, (1, 50), generator=torch.Generator().manual_seed(3))
    caches = [KVCache.empty(model.config, 1, one.cache_dtype) for _ in range(2)]
    with torch.inference_mode():
        alone = one(idx, torch.tensor([0]), caches[0])
        split = three(idx, torch.tensor([0]), caches[1])
        reference = one_pass(model, idx, one.cache_dtype)
    assert torch.equal(split, alone)
    assert torch.equal(caches[0].k, caches[1].k) and torch.equal(caches[0].v, caches[1].v)
    tolerance = TOLERANCE[one.cache_dtype] * reference.abs().max().item()
    torch.testing.assert_close(split, reference, atol=tolerance, rtol=1e-5)


def test_load_backend_picks_what_was_asked_and_auto_falls_back_to_torch(tokenizer, monkeypatch):
    assert load_backend(model_of(tokenizer, **SHAPES[0]), "torch").name == "torch"
    int8 = load_backend(model_of(tokenizer, **SHAPES[0]), "int8")
    assert int8.name == "int8" and any(isinstance(m, Int8Linear) for m in int8.model.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.model.modules())
    with pytest.raises(ValueError, match="backend must be one of"):
        load_backend(model_of(tokenizer, **SHAPES[0]), "int4")
    if backends.extension() is not None:
        assert load_backend(model_of(tokenizer, **SHAPES[0]), "auto").name == "cpp"
    monkeypatch.setattr(backends, "extension", lambda: None)
    assert load_backend(model_of(tokenizer, **SHAPES[0]), "auto").name == "torch"
    with pytest.raises(RuntimeError, match="could not be built"):
        load_backend(model_of(tokenizer, **SHAPES[0]), "cpp")


def test_the_cpp_step_refuses_what_it_cannot_compute(tokenizer):
    cpp_built()
    model = model_of(tokenizer, **SHAPES[0])
    backend = CppBackend(model)
    cache = KVCache.empty(model.config, 1, torch.int8)
    with pytest.raises(RuntimeError, match="caches must be int8"):
        backend(
            torch.tensor([[1]]),
            torch.tensor([0]),
            KVCache(cache.k.half(), cache.v.half(), cache.k_scale, cache.v_scale),
        )
    with pytest.raises(RuntimeError, match="scales must be float32"):
        backend(torch.tensor([[1]]), torch.tensor([0]), KVCache(cache.k, cache.v, cache.k_scale.half(), cache.v_scale))
    with pytest.raises(RuntimeError, match="context window"):
        backend(torch.tensor([[1, 2]]), torch.tensor([23]), cache)
    with pytest.raises(RuntimeError, match="out of range"):
        backend(torch.tensor([[len(tokenizer.vocab)]]), torch.tensor([0]), cache)
    with pytest.raises(RuntimeError, match="caches must be"):
        backend(
            torch.tensor([[1]]),
            torch.tensor([0]),
            KVCache(cache.k[:, :, :, :5], cache.v[:, :, :, :5], cache.k_scale, cache.v_scale),
        )
    with pytest.raises(RuntimeError, match="positions"):
        backend(torch.tensor([[1]]), torch.tensor([0, 0]), cache)
    state = {k: v for k, v in model.state_dict().items() if k != "blocks.1.attn.proj.bias"}
    with pytest.raises(RuntimeError, match=r"no tensor named blocks\.1\.attn\.proj\.bias"):
        backends.extension().Decoder(state, model.config.n_head, 1)


def test_a_failed_build_says_so_in_one_line_and_leaves_pytorch_in_charge(monkeypatch, capsys):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr("torch.utils.cpp_extension.load", no_compiler)
    assert backends.extension.__wrapped__() is None  # the uncached function: a real build attempt
    err = capsys.readouterr().err
    assert "could not be built, decoding with PyTorch (no C++ compiler found)" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(backends.fcntl is None, reason="flock is POSIX")
def test_the_build_lock_goes_with_its_process_and_the_next_build_clears_what_it_left(tmp_path):
    """A process takes the build lock, PyTorch's lock file appears, and the process is killed, as
    Ctrl-C during a build would: the next build must not wait for that file forever."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path\n"
         "from tinygpt.serving.backends import build_lock\n"
         "with build_lock(Path(sys.argv[1])):\n (Path(sys.argv[1]) / 'lock').touch(); print('held', flush=True); "
         "time.sleep(60)", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with open(tmp_path / "tinygpt.lock") as handle, pytest.raises(BlockingIOError):
            backends.fcntl.flock(handle, backends.fcntl.LOCK_EX | backends.fcntl.LOCK_NB)  # held while it lives
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "lock").exists()
    with build_lock(tmp_path):  # at once: the holder is gone
        assert not (tmp_path / "lock").exists()
