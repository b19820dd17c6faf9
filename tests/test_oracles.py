"""Checks against oracles that do not share the code under test: values worked out by hand, the seed's
full forward pass, gradients before the optimizer, and the exact parameter names of each group."""

import contextlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.test_training import ctrl_c_at_batch
from tinygpt.files.quantize import quantize_int8
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT
from tinygpt.training import trainer as training
from tinygpt.training.data import get_batch
from tinygpt.training.trainer import WeightAverage, optimization_step, train, trim_log

# --- int8 inference -------------------------------------------------------------------------------


def test_int8_output_layer_gives_hand_computed_logits():
    """Weights that are exact multiples of their row's int8 step (max |w| / 127, a power of two here),
    and inputs that bfloat16 holds exactly: int8 inference must give these logits exactly."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab="abc", block_size=4, n_layer=1, n_head=2, n_embd=16))
    rows = [
        [7.9375, -4.0, 0.0, 2.0],  # step 1/16: int8 [127, -64, 0, 32]
        [1.0, -7.9375, 0.5, 0.0625],  # step 1/16: int8 [16, -127, 8, 1]
        [0.0, 0.0, 0.0, -3.96875],  # step 1/32: int8 [0, 0, 0, -127]
    ]
    with torch.no_grad():
        model.ln_f.weight.zero_()  # the final LayerNorm then outputs its bias whatever comes in:
        model.ln_f.bias.zero_()[:4] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # the lm_head's input is [1, 2, 3, 4, 0...]
        model.lm_head.weight.zero_()[:, :4] = torch.tensor(rows)
        model.lm_head.bias.copy_(torch.tensor([0.5, -1.0, 0.25]))
    quantized = quantize_int8(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    with torch.no_grad():
        logits = quantized(torch.tensor([[0, 1, 2]]))[0]
    # 7.9375 - 8 + 0 + 8 + 0.5;  1 - 15.875 + 1.5 + 0.25 - 1;  -15.875 + 0.25
    expected = torch.tensor([8.4375, -14.125, -15.625]).expand(1, 3, 3)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)


def test_int8_model_follows_the_float32_model(tiny_config):
    """Weights scaled up 3x so the distributions are far from uniform: a fresh model's are all within
    0.01 of 1/65, where any output, even zeros, looks close in probability."""
    torch.manual_seed(0)
    exact = GPT(tiny_config).eval()
    with torch.no_grad():
        for p in exact.parameters():
            p.mul_(3)
    same = GPT(tiny_config)
    same.load_state_dict(exact.state_dict())
    quantized = quantize_int8(same)
    idx = torch.randint(tiny_config.vocab_size, (4, tiny_config.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, approx = exact(idx)[0], quantized(idx)[0]
    uniform = 1 / tiny_config.vocab_size
    assert (reference.softmax(-1) - uniform).abs().max() > 0.1  # peaked: the comparisons below mean something
    assert (approx - reference).abs().max() < 0.05 * reference.abs().max()
    assert (approx.softmax(-1) - reference.softmax(-1)).abs().max() < 0.02


# --- The optimizer --------------------------------------------------------------------------------


def test_weight_decay_applies_to_exactly_the_linear_weight_matrices(tiny_config):
    model = GPT(GPTConfig(**{**vars(tiny_config), "weight_decay": 0.7}))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {}
    for group in model.configure_optimizer().param_groups:
        groups.setdefault(group["weight_decay"], set()).update(names[id(p)] for p in group["params"])
    layers = range(tiny_config.n_layer)
    matrices = {f"blocks.{i}.{m}.weight" for i in layers for m in ("attn.qkv", "attn.proj", "ffwd.net.0", "ffwd.net.2")}
    matrices.add("lm_head.weight")
    assert groups == {0.7: matrices, 0.0: set(names.values()) - matrices}
    assert {"token_embedding.weight", "position_embedding.weight", "lm_head.bias", "blocks.0.ln1.weight"} <= groups[0.0]
    count = sum(len(g["params"]) for g in model.configure_optimizer().param_groups)
    assert count == len(names)  # every parameter once


def reference_gradients(model, batches):
    """Gradients of the mean loss over every window of every batch, in one forward pass."""
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    model.zero_grad(set_to_none=True)
    model(x, y)[1].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_one_step_accumulates_the_gradient_of_the_mean_loss(tiny_config, corpus, tokenizer, grad_accum):
    """The gradients the optimizer receives, before it changes anything: those of one batch of
    grad_accum x batch_size windows, then scaled to norm grad_clip when clipping applies."""
    config = GPTConfig(**{**vars(tiny_config), "batch_size": 4, "grad_accum": grad_accum, "grad_clip": 0.0})
    train_ids = torch.tensor(tokenizer.encode(corpus[:5_000]))
    torch.manual_seed(0)
    model = GPT(config).train()
    draws = torch.Generator().manual_seed(3)
    batches = [get_batch(train_ids, 4, config.block_size, draws) for _ in range(grad_accum)]
    expected = reference_gradients(model, batches)
    norm = torch.cat([g.flatten() for g in expected.values()]).norm()

    for clip, factor in [(0.0, 1.0), (norm.item() / 4, 0.25)]:
        config.grad_clip = clip
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # reads the gradients, moves nothing
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        step_args = (contextlib.nullcontext(), config, train_ids, torch.Generator().manual_seed(3))
        optimization_step(model, optimizer, scaler, *step_args)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[name] * factor, atol=1e-6, rtol=1e-4)


def test_the_first_step_moves_each_bias_by_the_scheduled_learning_rate(corpus, tmp_path, monkeypatch):
    """Adam's first step moves a parameter by lr x g / (|g| + eps): by the learning rate itself, for
    parameters without weight decay (the biases). Warmup makes step 0's rate a tenth of the peak."""
    built = []
    init = GPT.__init__

    def recording_init(self, *args, **kwargs):  # the trained model's weights as first built
        init(self, *args, **kwargs)
        built.append({k: v.clone() for k, v in self.state_dict().items()})

    monkeypatch.setattr(GPT, "__init__", recording_init)
    (tmp_path / "text.txt").write_text(corpus[:20_000])
    config = GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16, batch_size=4, max_iters=1, warmup_iters=10,
                       learning_rate=1e-2, eval_iters=1, dtype="float32", ema_decay=0.0)  # fmt: skip
    train(config, tmp_path / "text.txt", tmp_path / "out", device="cpu", progress_bar=False)
    trained = load_file(tmp_path / "out" / "model.safetensors")
    moved = {k: (trained[k] - built[0][k]).abs().max().item() for k in trained if k.endswith("bias")}
    for name, step in moved.items():
        assert step == pytest.approx(1e-3, rel=1e-3), name  # learning_rate x (0 + 1) / warmup_iters


# --- The weight average ---------------------------------------------------------------------------


def constant_model(tiny_config, value):
    model = GPT(tiny_config)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def test_weight_average_moves_by_the_hand_computed_fractions(tiny_config):
    """Each update keeps d of the average and moves 1 - d of the way to the current weights, with
    d = min(decay, (1 + step) / (10 + step)): the early steps forget the random start faster."""
    average = WeightAverage(constant_model(tiny_config, 0.0), decay=0.5)
    updates = [  # (step, current weights, average after): d = 1/10, 2/11, 3/12, 4/13, then the decay 0.5
        (0, 1.0, 0.9),  # 0.1 x 0 + 0.9 x 1
        (1, 2.0, 1.8),  # 2/11 x 0.9 + 9/11 x 2 = 19.8/11
        (2, 3.0, 2.7),  # 0.25 x 1.8 + 0.75 x 3
        (3, 4.0, 3.6),  # 4/13 x 2.7 + 9/13 x 4 = 46.8/13
        (100, 10.0, 6.8),  # 0.5 x 3.6 + 0.5 x 10
    ]
    for step, current, expected in updates:
        average.update(constant_model(tiny_config, current), step)
        for p in average.model.parameters():
            torch.testing.assert_close(p, torch.full_like(p, expected))


# --- The log on resume ----------------------------------------------------------------------------


def test_trim_log_keeps_the_records_up_to_the_checkpoint(tmp_path):
    log = tmp_path / "train_log.jsonl"
    records = [{"step": s, "val_loss": 4 - s / 10} for s in (0, 5, 10, 15)] + [{"step": 15, "final": {}}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 20, "val_lo')  # cut by a kill
    assert trim_log(log, 10) == 10
    assert [json.loads(line) for line in log.read_text().splitlines()] == records[:3]
    assert trim_log(log, 3) == 0
    assert log.read_text() == json.dumps(records[0]) + "\n"
    assert trim_log(tmp_path / "missing.jsonl", 5) == -1


def test_resume_after_the_log_ran_past_the_checkpoint_logs_each_evaluation_once(corpus, tmp_path, monkeypatch):
    """A run stopped at step 5 (checkpoint 5), resumed and finished (log to step 8), then the step-5
    checkpoint put back, as after a kill between checkpoints: resuming again gives the straight log."""
    (tmp_path / "text.txt").write_text(corpus[:20_000])
    config = GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16, batch_size=4, max_iters=8, warmup_iters=1,
                       eval_interval=2, eval_iters=1, dtype="float32", ema_decay=0.0)  # fmt: skip
    run = lambda out, **kw: train(config, tmp_path / "text.txt", tmp_path / out, device="cpu", progress_bar=False, **kw)  # noqa: E731
    run("straight")
    stop_in_step_5 = ctrl_c_at_batch(5)
    monkeypatch.setattr(training, "get_batch", stop_in_step_5)
    assert run("resumed")["steps"] == 5
    monkeypatch.undo()
    shutil.copy(tmp_path / "resumed" / "checkpoint.safetensors", tmp_path / "step5.safetensors")
    run("resumed", resume=True)
    shutil.copy(tmp_path / "step5.safetensors", tmp_path / "resumed" / "checkpoint.safetensors")
    run("resumed", resume=True)

    def log(out):
        records = [json.loads(line) for line in (tmp_path / out / "train_log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "final")} for r in records]

    assert [r["step"] for r in log("resumed")] == [0, 2, 4, 6, 8, 8]
    assert log("resumed") == log("straight")
