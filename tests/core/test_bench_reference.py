"""trm.bench_reference against the real reference implementation (a snapshot extracted from
the mirror, or $TRM_REFERENCE_REPO), at a tiny size: the table, the same-weights check and its
refusal, the reference's training step, and the one-line errors. No times are asserted."""

import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIRROR = "/work/.mirror/SamsungSAILMontreal+TinyRecursiveModels/repo"
TINY = ["--hidden=32", "--H_cycles=1", "--L_cycles=1", "--batch=4", "--steps=1", "--warmup=0",
        "--threads=1"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")


@pytest.fixture(scope="module")
def reference_repo(tmp_path_factory):
    """A checkout of the reference: $TRM_REFERENCE_REPO, else the mirror's HEAD extracted."""
    if os.environ.get("TRM_REFERENCE_REPO"):
        return os.environ["TRM_REFERENCE_REPO"]
    if not os.path.isdir(MIRROR):
        pytest.skip(f"no reference checkout: set TRM_REFERENCE_REPO (the mirror {MIRROR} is "
                    "absent)")
    pytest.importorskip("einops", reason="pip install -e '.[bench-reference]'")
    pytest.importorskip("pydantic", reason="pip install -e '.[bench-reference]'")
    out = tmp_path_factory.mktemp("reference")
    archive = subprocess.run(["git", "-C", MIRROR, "archive", "HEAD", "models", "utils"],
                             capture_output=True, check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True, timeout=120)
    return str(out)


@pytest.fixture
def forget_reference_modules():
    """The reference's `models` package is imported in-process: forget it afterwards."""
    yield
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        del sys.modules[name]


def _cli(args, env=ENV):
    return subprocess.run([sys.executable, "-m", "trm.bench_reference", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_the_table_of_both_steps(reference_repo, tmp_path):
    from trm.runtime.device import cpu_info
    doc = tmp_path / "BENCH.md"
    out = _cli([f"--reference_repo={reference_repo}", *TINY, f"--write_doc={doc}"])
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["max_logit_difference"] <= 1e-4
    for side in ("reference", "trm"):
        assert len(result[f"{side}_step_times_s"]) == 1
        assert 0 < result[f"{side}_ms_min"] <= result[f"{side}_ms_median"]
    assert result["ratio_median"] == pytest.approx(
        result["reference_ms_median"] / result["trm_ms_median"], rel=1e-2)
    assert (result["threads"], result["forward_dtype"], result["hidden"]) == (1, "float32", 32)
    assert result["torch"] == torch.__version__
    assert result["reference_commit"] == "unknown"   # an extracted archive, not a checkout
    assert result["reference_optimizer"] == "trm.optim.adam_atan2.AdamATan2"
    assert result["ema"] is True and result["weight_decay"] == 1.0   # e1_1_baseline's recipe
    name, flags = cpu_info()
    assert result["cpu"] == name
    assert result["cpu_flags"]["avx2"] == ("avx2" in flags)
    table = doc.read_text()
    assert table in "\n" + out.stdout
    for text in ("| reference |", "| trm |", "| **reference / trm** |", "ms/step (median)",
                 "ms/step (min)", "1 torch thread(s)", "float32", f"CPU: {name}", "avx2 ",
                 "avx512_bf16 ", f"torch {torch.__version__}", "reference commit unknown",
                 "adam_atan2 package is CUDA-only", "hidden 32, T=1, n=1", ", eager, "):
        assert text in table, text
    assert result["compile"] is False


def test_compile_times_both_sides_compiled(reference_repo, tmp_path):
    """--compile: the reference's whole loss head compiled as its pretrain.py does, trm with
    COMPILE=True; both still checked for the same logits first."""
    cache = tmp_path / "inductor"
    out = _cli([f"--reference_repo={reference_repo}", *TINY, "--compile"],
               env=dict(ENV, TORCHINDUCTOR_CACHE_DIR=str(cache)))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["compile"] is True and result["max_logit_difference"] <= 1e-4
    assert "both sides compiled (torch.compile)" in out.stdout
    assert "COMPILE: torch.compile of 1 reasoning network(s)" in out.stderr
    assert list(cache.rglob("*.so"))


def test_a_perturbed_trm_weight_makes_it_refuse_to_time(reference_repo, monkeypatch,
                                                        forget_reference_modules):
    from trm import bench_reference as br
    timed = []
    load = br.load_same_weights

    def load_then_perturb(reference, trainer):
        load(reference, trainer)
        with torch.no_grad():
            trainer.model.lm_head.weight.add_(0.05)

    monkeypatch.setattr(br, "load_same_weights", load_then_perturb)
    monkeypatch.setattr(br, "time_interleaved", lambda *a: timed.append(a))
    settings = br.Settings(hidden=32, H_cycles=1, L_cycles=1, batch=4)
    with pytest.raises(br.BenchReferenceError, match="refusing to time"):
        br.run(reference_repo, settings, steps=1, warmup=0)
    assert timed == []


def test_the_reference_step_trains_like_train_batch(reference_repo, forget_reference_modules):
    from trm import bench, bench_reference as br
    from trm.optim import AdamATan2
    settings = br.Settings(hidden=32, H_cycles=1, L_cycles=2, batch=4)
    path = list(sys.path)
    ref = br.import_reference(reference_repo)
    assert sys.path == path   # the checkout was on sys.path for the import only
    assert ref.trm.__file__ == os.path.join(os.path.abspath(reference_repo), "models",
                                            "recursive_reasoning", "trm.py")
    trainer = br.build_trainer(settings, num_steps=3)
    step = br.ReferenceStep(ref, br.reference_config(settings), trainer)
    br.load_same_weights(step, trainer)
    batch = bench.fixed_batch(trainer.model, settings.batch, torch.device("cpu"))
    assert br.check_same_computation(step, trainer, batch, "float32") <= 1e-4
    assert isinstance(step.optimizers[1], AdamATan2)
    head = step.head
    before = {k: v.clone() for k, v in head.state_dict().items()}
    for v in step.ema.shadow.values():
        v.zero_()   # so that the EMA update is visible: shadow = (1 - mu) * weights
    step(batch)
    after = head.state_dict()
    assert step.step == 1 and bool(step.carry.steps.eq(1).all())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "model.inner.puzzle_emb.weights" in changed   # the sparse SignSGD
    assert "model.inner.lm_head.weight" in changed       # AdamATan2
    weights = dict(head.named_parameters())
    assert step.ema.shadow.keys() == weights.keys()
    for k, v in step.ema.shadow.items():   # the EMA, at the recipe's rate
        assert torch.allclose(v, (1 - 0.999) * weights[k].detach(), rtol=1e-5, atol=0), k
    assert all(p.grad is None for p in head.parameters())
    assert step.step_head is head   # eager unless compile=True
    compiled = br.ReferenceStep(ref, br.reference_config(settings), trainer, compile=True)
    assert isinstance(compiled.step_head, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.step_head._orig_mod is compiled.head


def test_reference_commit_only_of_a_checkout_root(tmp_path):
    from trm.bench_reference import reference_commit
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(git + ["init", "-q"], check=True, timeout=60)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_text("x")
    subprocess.run(git + ["add", "."], check=True, timeout=60)
    subprocess.run(git + ["commit", "-q", "-m", "x"], check=True, timeout=60)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert reference_commit(str(tmp_path)) == head
    assert reference_commit(str(tmp_path / "sub")) == "unknown"   # inside another repository


BLOCK_EINOPS = """
import sys

class _NoEinops:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "einops":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoEinops())
"""


def _one_line_error(out, *texts):
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trm.bench_reference: "), out.stderr
    for text in texts:
        assert text in lines[0], lines[0]


def test_a_missing_checkout_is_one_line(tmp_path):
    _one_line_error(_cli([f"--reference_repo={tmp_path / 'nope'}"]), "does not exist",
                    "git clone https://github.com/SamsungSAILMontreal/TinyRecursiveModels")


def test_a_folder_that_is_not_the_reference_is_one_line(tmp_path):
    (tmp_path / "models").mkdir()
    _one_line_error(_cli([f"--reference_repo={tmp_path}"]), "is not a checkout",
                    "models/recursive_reasoning/trm.py")


def test_missing_einops_is_one_line_with_the_extra(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_EINOPS)
    (tmp_path / "ref" / "models" / "recursive_reasoning").mkdir(parents=True)
    (tmp_path / "ref" / "models" / "recursive_reasoning" / "trm.py").write_text("")
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    _one_line_error(_cli([f"--reference_repo={tmp_path / 'ref'}"], env=env), "einops",
                    "pip install -e '.[bench-reference]'")


def test_the_checkout_is_required():
    out = _cli([])
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "--reference_repo is required" in out.stderr
