"""auto that measures: the tie rule, the cache in the process and on disk (and a corrupt one), concurrent writers,
memory pruning, deterministic mode, nothing timed under torch.compile, rank agreement under torch.distributed, and
tune() leaving a training run exactly as it was. An injected timer decides what "fast" means; two smoke tests time
for real."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import gigagan_kernels as gk
from gigagan_kernels import autotune, dispatcher
from gigagan_kernels.adaptive_modconv import use_strategy
from tests.helpers import ROOT

MODCONV_TORCH = ("ref", "torch:activations", "torch:bmm", "torch:grouped", "torch:gram")


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Autotuning on, an empty cache of its own, a fresh in-process table, and no Triton interpreter (which keeps
    the untuned rule): on this CPU the runnable candidates are the reference and the torch forms."""
    # triton.language decorates its own helpers (tl.cdiv, ...) as it is imported: import it under the interpreter
    # first, or a later interpreted kernel would find them compiled for a GPU.
    import triton.language  # noqa: F401
    monkeypatch.setenv(autotune.ENV_VAR, "on")
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("GIGAGAN_KERNELS_IMPL", raising=False)
    autotune.TABLE.forget()
    yield tmp_path
    autotune.TABLE.forget()


class FakeTimer:
    """Seconds per candidate name from a table; counts what it was asked to time."""

    def __init__(self, seconds):
        self.seconds = dict(seconds)
        self.calls = []

    def __call__(self, name, call):
        self.calls.append((name, call.key()))
        return self.seconds[name]


def modconv_inputs(B=2, C=4, H=5, N=3, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    tensors = (torch.randn(B, C, H, H, generator=g), torch.randn(N, C + 1, C, 3, 3, generator=g),
               torch.randn(B, N, generator=g), torch.randn(B, C, generator=g) + 1)
    return [t.requires_grad_(requires_grad) for t in tensors]


def record_for(op):
    records = [r for r in gk.autotune_report() if r["op"] == op]
    assert len(records) == 1, records
    return records[0]


def test_the_fastest_wins_and_a_tie_goes_to_the_preference_order(tuning):
    # torch:bmm is within 5% of torch:activations, and precedes it in the op's order of preference.
    timer = FakeTimer({"ref": 1.0, "torch:activations": 0.50, "torch:bmm": 0.52, "torch:grouped": 0.9,
                       "torch:gram": 0.95})
    x, bank, logits, style = modconv_inputs()
    with autotune.use_timer(timer):
        y = gk.adaptive_modconv2d(x, bank, logits, style)
    record = record_for("adaptive_modconv2d")
    assert record["choice"] == "torch:bmm" and record["source"] == "measured"
    assert sorted(name for name, _ in timer.calls) == sorted(MODCONV_TORCH)
    assert record["candidates"] == {"ref": 1.0, "torch:activations": 0.50, "torch:bmm": 0.52, "torch:grouped": 0.9,
                                    "torch:gram": 0.95}
    torch.testing.assert_close(y, gk.adaptive_modconv2d_ref(x, bank, logits, style))
    # Beyond 5%, the fastest wins.
    timer = FakeTimer({"ref": 1.0, "torch:activations": 0.40, "torch:bmm": 0.52, "torch:grouped": 0.9,
                       "torch:gram": 0.95})
    with autotune.use_timer(timer):
        gk.adaptive_modconv2d(*modconv_inputs(B=3))
    assert {r["choice"] for r in gk.autotune_report()} == {"torch:bmm", "torch:activations"}


def test_a_backend_name_tunes_among_its_own_candidates(tuning):
    timer = FakeTimer({"ref": 0.1, "torch:activations": 0.5, "torch:bmm": 0.3, "torch:grouped": 0.4,
                       "torch:gram": 0.95})
    with autotune.use_timer(timer):
        gk.adaptive_modconv2d(*modconv_inputs(), impl="torch")
    assert record_for("adaptive_modconv2d")["choice"] == "torch:bmm"          # ref is not a torch candidate
    assert "ref" not in {name for name, _ in timer.calls}


def test_a_decision_is_cached_in_the_process_and_on_disk(tuning):
    timer = FakeTimer({"ref": 0.3, "torch:activations": 0.2, "torch:bmm": 0.1, "torch:grouped": 0.4,
                       "torch:gram": 0.95})
    with autotune.use_timer(timer):
        gk.adaptive_modconv2d(*modconv_inputs(seed=1))
        timed = len(timer.calls)
        gk.adaptive_modconv2d(*modconv_inputs(seed=2))                   # same key: nothing timed again
        assert len(timer.calls) == timed == len(MODCONV_TORCH)
        with torch.no_grad():                                             # a forward alone is a key of its own
            gk.adaptive_modconv2d(*modconv_inputs(seed=3))
        assert len(timer.calls) == 2 * timed
    on_disk = json.load(open(os.path.join(tuning, autotune.CACHE_FILE)))
    assert on_disk["version"] == autotune.FORMAT_VERSION and len(on_disk["decisions"]) == 2
    assert all(r["choice"] == "torch:bmm" for r in on_disk["decisions"].values())
    autotune.TABLE.forget()                                               # as a new process
    with autotune.use_timer(timer):
        gk.adaptive_modconv2d(*modconv_inputs(seed=4))
    assert len(timer.calls) == 2 * timed
    sources = {r["source"] for r in gk.autotune_report()}
    assert sources == {"cache"}


def test_a_corrupt_cache_is_a_warning_and_is_rebuilt(tuning):
    path = os.path.join(tuning, autotune.CACHE_FILE)
    with open(path, "w") as f:
        f.write("{not json")
    timer = FakeTimer({"ref": 0.3, "torch:activations": 0.2, "torch:bmm": 0.1, "torch:grouped": 0.4,
                       "torch:gram": 0.95})
    with autotune.use_timer(timer), pytest.warns(UserWarning, match="ignoring the unreadable cache"):
        gk.adaptive_modconv2d(*modconv_inputs())
    assert len(json.load(open(path))["decisions"]) == 1
    assert record_for("adaptive_modconv2d")["choice"] == "torch:bmm"


def test_concurrent_writers_merge(tuning):
    """Two processes writing 25 decisions each, one at a time, interleaved: the file ends with all 50."""
    code = textwrap.dedent("""
        import sys
        from gigagan_kernels import autotune
        for i in range(25):
            key = f"writer {sys.argv[1]} key {i}"
            autotune.TABLE.write({key: {"op": "adaptive_modconv2d", "key": key, "choice": "torch:bmm"}})
    """)
    env = dict(os.environ, **{autotune.CACHE_ENV: str(tuning)})
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT, env=env) for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    decisions = json.load(open(os.path.join(tuning, autotune.CACHE_FILE)))["decisions"]
    assert len(decisions) == 50


def test_a_candidate_beyond_the_free_memory_is_skipped(tuning, monkeypatch):
    x, bank, logits, style = modconv_inputs()
    call_bytes = {}
    entry = dispatcher.REGISTRY["adaptive_modconv2d"]
    timer = FakeTimer({"ref": 0.1, "torch:activations": 0.2, "torch:bmm": 0.3, "torch:grouped": 0.4,
                       "torch:gram": 0.95})

    def spy(name, call):
        call_bytes.setdefault(name, entry.get(name).predicted_bytes(call))
        return timer(name, call)

    with autotune.use_timer(spy):
        gk.adaptive_modconv2d(x, bank, logits, style)
    autotune.clear()
    # Free memory between the leanest candidate's need and the hungriest's.
    low, high = min(call_bytes.values()), max(call_bytes.values())
    free = (low + high) // 2
    monkeypatch.setattr(autotune, "_free_bytes", lambda device: free)
    with autotune.use_timer(timer):
        gk.adaptive_modconv2d(x, bank, logits, style)
    record = [r for r in gk.autotune_report() if "(2, 4, 5, 5)" in r["key"]][0]
    for name, need in call_bytes.items():
        got = record["candidates"][name]
        if need > free:
            assert isinstance(got, str) and got.startswith("skipped: needs ~"), (name, got)
        else:
            assert got == timer.seconds[name], (name, got)
    assert call_bytes[record["choice"]] <= free


def test_deterministic_mode_keeps_auto_off_atomics(monkeypatch):
    """auto never picks a candidate with atomics under torch.use_deterministic_algorithms(True); asking for one
    is NondeterministicBackendError; with warn_only=True it runs and warns once."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")          # the Triton candidates run here, through the interpreter
    monkeypatch.delenv("GIGAGAN_KERNELS_IMPL", raising=False)
    x, bank, logits, style = modconv_inputs()
    q = torch.randn(1, 2, 8, 16, requires_grad=True)
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        with use_strategy("fused"):
            y = gk.adaptive_modconv2d(x, bank, logits, style)        # the forced strategy has atomics: not auto's
        torch.testing.assert_close(y, gk.adaptive_modconv2d_ref(x, bank, logits, style), atol=1e-4, rtol=1e-4)
        with pytest.raises(gk.NondeterministicBackendError, match="triton:fused.*relaxed fp32 atomics"):
            gk.adaptive_modconv2d(x, bank, logits, style, impl="triton:fused")
        with pytest.raises(gk.NondeterministicBackendError, match="impl='triton' is not deterministic.*dQ"):
            gk.attention(q, q, q, impl="triton")
        assert not gk.attention(q, q, q).isnan().any()               # auto: a deterministic candidate
        torch.use_deterministic_algorithms(True, warn_only=True)
        dispatcher._warned_nondeterministic.discard("triton:fused")
        with pytest.warns(UserWarning, match="triton:fused is not deterministic"):
            gk.adaptive_modconv2d(x, bank, logits, style, impl="triton:fused")
        with warnings.catch_warnings():
            warnings.simplefilter("error")                              # once only
            gk.adaptive_modconv2d(x, bank, logits, style, impl="triton:fused")
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def test_nothing_is_timed_under_torch_compile(tuning):
    """While dynamo traces, the table decides, or on a miss the predicted pick; the graph stays whole."""
    timer = FakeTimer({"ref": 0.3, "torch:activations": 0.2, "torch:bmm": 0.1, "torch:grouped": 0.4,
                       "torch:gram": 0.95})
    x, bank, logits, style = modconv_inputs(requires_grad=False)

    def layer(x, bank, logits, style):
        return gk.adaptive_modconv2d(x, bank, logits, style, activation="lrelu")

    with autotune.use_timer(timer):
        compiled = torch.compile(layer, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x, bank, logits, style), layer(x, bank, logits, style))
    # The eager call timed (once); tracing timed nothing.
    assert len(timer.calls) == len(MODCONV_TORCH)
    torch._dynamo.reset()
    with autotune.use_timer(timer):                                   # now a hit, traced from the table
        torch.testing.assert_close(torch.compile(layer, fullgraph=True, backend="eager")(x, bank, logits, style),
                                   layer(x, bank, logits, style))
    assert len(timer.calls) == len(MODCONV_TORCH)


def _rank_worker(rank, world, init_file, cache_dir, results):
    import triton.language  # noqa: F401  (under the interpreter, as the fixture above explains)
    os.environ[autotune.ENV_VAR] = "on"
    os.environ[autotune.CACHE_ENV] = os.path.join(cache_dir, f"rank{rank}")   # each rank its own (node-local) cache
    os.environ["TRITON_INTERPRET"] = "0"
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        favoured = "torch:bmm" if rank == 0 else "torch:activations"
        timer = FakeTimer({name: 0.1 if name == favoured else 1.0 for name in MODCONV_TORCH})
        with autotune.use_timer(timer):
            gk.tune(lambda: gk.adaptive_modconv2d(*modconv_inputs()))
            agreed = record_for("adaptive_modconv2d")["choice"]
            timed = len(timer.calls)
            gk.adaptive_modconv2d(*modconv_inputs(B=5))                # after tune, a miss is not timed
            untimed = len(timer.calls) == timed
        results[rank] = (agreed, timed, untimed)
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_agree_on_rank_0s_decisions(tmp_path):
    """Two gloo ranks whose timers favour opposite candidates both run rank 0's after tune()."""
    import torch.multiprocessing as mp
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path), results), nprocs=2, join=True)
    assert results[0] == ("torch:bmm", len(MODCONV_TORCH), True)
    assert results[1] == ("torch:bmm", len(MODCONV_TORCH), True)


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from gigagan_kernels.nn import AdaptiveModConv2d, L2SelfAttention
        self.conv = AdaptiveModConv2d(4, 8, 3, num_filters=3, style_dim=6, activation="lrelu", use_noise=True)
        self.attn = L2SelfAttention(8, heads=2, style_dim=6)

    def forward(self, x, w):
        return self.attn(self.conv(x, w), w)


def _train(steps, tune_first):
    torch.manual_seed(0)
    model = TinyModel()
    with torch.no_grad():
        model.conv.noise_strength.fill_(0.5)                            # the forward draws noise: global RNG
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, w = torch.randn(3, 4, 6, 6, generator=data), torch.randn(3, 6, generator=data)

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            loss = model(x, w).square().mean()
            loss.backward()
            optimizer.step()
            return loss

        gk.tune(train_step) if tune_first and step == 0 else train_step()
    return model.state_dict(), optimizer.state_dict(), torch.get_rng_state()


def test_tune_leaves_training_exactly_as_without_it(tuning):
    """Three AdamW steps through both ops with noise: tuning the first step (real timing, on clones) leaves the
    weights, the optimiser state and the RNG bitwise as a run that used the same decisions without tuning."""
    tuned, tuned_opt, tuned_rng = _train(3, tune_first=True)
    assert {r["source"] for r in gk.autotune_report()} == {"measured"}
    plain, plain_opt, plain_rng = _train(3, tune_first=False)           # the same decisions, from the table
    for name in tuned:
        assert torch.equal(tuned[name], plain[name]), name
    for index, state in tuned_opt["state"].items():
        for field, value in state.items():
            assert torch.equal(value, plain_opt["state"][index][field]), (index, field)
    assert torch.equal(tuned_rng, plain_rng)


def test_smoke_real_timing_on_cpu(tuning):
    """No injected timer: every runnable candidate gets a positive median, and the choice is the fastest or tied
    with it within 5%."""
    gk.adaptive_modconv2d(*modconv_inputs(B=4, C=8, H=6))
    q = torch.randn(2, 2, 24, 16, requires_grad=True)
    gk.attention(q, q, torch.randn(2, 2, 24, 16, requires_grad=True), key_padding_mask=torch.rand(2, 24) > 0.2)
    for op, expected in (("adaptive_modconv2d", set(MODCONV_TORCH)),
                         ("attention", {"ref", "torch:materialised", "torch:sdpa-flash", "torch:sdpa-math"})):
        record = record_for(op)
        times = record["candidates"]
        assert set(times) == expected and all(isinstance(t, float) and t > 0 for t in times.values()), times
        assert times[record["choice"]] <= min(times.values()) * (1 + autotune.TIE)


def test_the_cli_shows_clears_exports_and_imports(tuning, tmp_path_factory):
    timer = FakeTimer({"ref": 0.3, "torch:activations": 0.2, "torch:bmm": 0.1, "torch:grouped": 0.4,
                       "torch:gram": 0.95})
    with autotune.use_timer(timer):
        gk.adaptive_modconv2d(*modconv_inputs())
    env = dict(os.environ, **{autotune.CACHE_ENV: str(tuning)})

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "gigagan_kernels", "autotune", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout + proc.stderr

    rc, out = cli("--show")
    assert rc == 0 and "1 decisions" in out and "adaptive_modconv2d: torch:bmm (cache" in out and "100.000 ms" in out
    exported = str(tmp_path_factory.mktemp("export") / "decisions.json")
    assert cli("--export", exported)[0] == 0
    assert cli("--clear")[0] == 0 and "0 decisions" in cli("--show")[1]
    rc, out = cli("--import", exported)
    assert rc == 0 and "imported 1 decisions" in out and "1 decisions" in cli("--show")[1]
    with open(exported, "w") as f:
        f.write("[]")
    rc, out = cli("--import", exported)
    assert rc == 1 and "not a version-1 gigagan_kernels autotune export" in out


def test_the_trainer_tunes_its_first_step_and_logs_it(tuning, tmp_path):
    """The first real step runs under tune (before the time budget) and log.jsonl records tune_seconds once; a
    second run that finds every decision in the cache ends with bitwise the same networks."""
    pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")
    from gigagan.training import Trainer
    from tests.helpers import tiny_train_config
    first = Trainer(tiny_train_config(tmp_path / "a", impl="auto", steps=3))
    first.fit()
    records = [json.loads(line) for line in (tmp_path / "a" / "run" / "log.jsonl").read_text().splitlines()]
    assert records[0]["tune_seconds"] > 0 and all("tune_seconds" not in r for r in records[1:])
    measured = [r for r in gk.autotune_report() if r["source"] == "measured"]
    assert {r["op"] for r in measured} == {"adaptive_modconv2d", "attention"}
    second = Trainer(tiny_train_config(tmp_path / "b", impl="auto", steps=3))
    second.fit()
    assert len([r for r in gk.autotune_report() if r["source"] == "measured"]) == len(measured)   # all from cache
    for name, net in (("G", "G"), ("D", "D"), ("G_ema", "G_ema")):
        a, b = getattr(first, net).state_dict(), getattr(second, net).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
