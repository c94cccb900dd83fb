"""fastuvit.sampling: schedules, DPM-Solver, Euler–Maruyama and classifier-free guidance.

Parity with the official solvers three ways: against tests/data/sampler_golden.npz (made once with
the official code by make_sampler_golden.py: analytic predictors and a tiny official U-ViT), live
against the official code when FASTUVIT_OFFICIAL_REPO points to a checkout, and by properties
(convergence to the closed-form probability-flow ODE solution of Gaussian data).
"""
import contextlib
import io
import os

import numpy as np
import pytest
import torch

import fastuvit
from fastuvit import sampling
from fastuvit.ops import eager_fallback
from fastuvit.sampling import DiscreteSchedule, DPMSolver, LinearVPSchedule, euler_maruyama, guided_noise_fn

import sampler_cases as cases

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "sampler_golden.npz")
OFFICIAL_REPO = os.environ.get("FASTUVIT_OFFICIAL_REPO")
SCHEDULES = {"discrete": DiscreteSchedule(), "linear": LinearVPSchedule()}


@pytest.fixture(autouse=True)
def _no_interpreter():
    with eager_fallback():  # pipeline tests, not kernel tests
        yield


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as f:
        return {k: torch.from_numpy(f[k]) for k in f.files}


def mixture_fn(ns):
    return lambda x, t: cases.mixture_eps(x, ns.alpha(t), ns.sigma(t))


def run_case(name, x_T, noise_fn_of=mixture_fn):
    schedule, solver_kw, sample_kw = cases.DPM_CASES[name]
    ns = SCHEDULES[schedule]
    solver = DPMSolver(noise_fn_of(ns), ns, **solver_kw)
    return solver.sample(x_T, **sample_kw), solver


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def tiny_model(golden):
    model = fastuvit.UViT(**cases.TINY_UVIT).eval()
    model.load_state_dict({k[len("tiny/"):]: v for k, v in golden.items() if k.startswith("tiny/")})
    return model


# ---------------------------------------------------------------------------------------------
# schedules
def test_discrete_schedule_knots_and_model_time():
    ns = DiscreteSchedule()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.equal(ns.betas, betas)
    n = torch.tensor([1, 2, 500, 999, 1000])
    t = n.float() / 1000
    expected = 0.5 * torch.log(1 - betas.float()).cumsum(0)[n - 1]
    torch.testing.assert_close(ns.log_alpha(t), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ns.model_time(t), n.float())
    alpha, sigma = ns.training_coefficients(n.double() / 1000)
    torch.testing.assert_close(alpha.double() ** 2, torch.cumprod(1 - betas, 0)[n - 1], rtol=1e-6, atol=0)
    torch.testing.assert_close(alpha ** 2 + sigma ** 2, torch.ones(5))


@pytest.mark.parametrize("schedule", ["discrete", "linear"])
def test_schedule_identities(schedule):
    ns = SCHEDULES[schedule]
    t = torch.linspace(2e-3, 1.0, 37, dtype=torch.float64)
    torch.testing.assert_close(ns.alpha(t) ** 2 + ns.sigma(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(ns.inverse_lambda(ns.lambda_(t)), t, rtol=1e-6, atol=1e-6)
    # beta(t) = -2 d log_alpha / dt: a finite difference (off the discrete knots)
    t_mid = torch.tensor([0.1234, 0.4567, 0.8901], dtype=torch.float64)
    d = 1e-6
    finite = -2 * (ns.log_alpha(t_mid + d) - ns.log_alpha(t_mid - d)) / (2 * d)
    torch.testing.assert_close(ns.beta(t_mid), finite, rtol=1e-4, atol=1e-6)
    assert ns.model_time(torch.tensor([1.0])).item() == (1000.0 if schedule == "discrete" else 999.0)


def test_schedule_errors():
    with pytest.raises(ValueError, match="schedule"):
        sampling.get_schedule("cosine")
    with pytest.raises(ValueError, match="betas"):
        DiscreteSchedule([0.5, 1.5])
    with pytest.raises(ValueError, match="beta_0"):
        LinearVPSchedule(beta_0=3.0, beta_1=1.0)


# ---------------------------------------------------------------------------------------------
# parity with the official solvers (golden file)
@pytest.mark.parametrize("name", sorted(cases.DPM_CASES))
def test_dpm_solver_matches_official_golden(name, golden):
    out, solver = run_case(name, golden["x_T"])
    assert rel_err(out, golden[name]) <= 1e-5, name
    method, steps = cases.DPM_CASES[name][2]["method"], cases.DPM_CASES[name][2]["steps"]
    if method != "singlestep":
        assert solver.nfe == steps  # the number of model evaluations is the step budget


@pytest.mark.parametrize("name", sorted(cases.EM_CASES))
def test_euler_maruyama_matches_official_golden(name, golden):
    kw = cases.EM_CASES[name]
    ns = SCHEDULES["linear"]
    torch.manual_seed(kw["seed"])  # the official sampler draws from the global RNG; so does generator=None

    def nnet(x, t_in):  # fed t·999, as make_sampler_golden.py's network
        return cases.mixture_eps(x, ns.alpha(t_in / 999), ns.sigma(t_in / 999))

    out = euler_maruyama(lambda x, t: nnet(x, ns.model_time(t)), golden["x_T"], ns, steps=kw["steps"], ode=kw["ode"])
    assert rel_err(out, golden[name]) <= 1e-5


def test_guided_uvit_sampling_matches_official_golden(golden):
    """A tiny official U-ViT sampled as eval_ldm_discrete.py does (guidance with the null class,
    network fed t·1000, DPM-Solver++ fast order 3, 50 evaluations)."""
    model = tiny_model(golden)
    y = torch.tensor(cases.TINY_LABELS)
    out = sampling.sample(model, golden["tiny_x_T"], y, schedule="discrete", sampler="dpm_solver", steps=50,
                          guidance_scale=cases.TINY_GUIDANCE)
    assert rel_err(out, golden["tiny_out"]) <= 1e-4


# ---------------------------------------------------------------------------------------------
# properties
def _gaussian_error(method, steps, schedule="discrete", **kw):
    ns = SCHEDULES[schedule]
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t_end = kw.pop("t_end", 1e-3)
    solver = DPMSolver(lambda x, t: cases.gaussian_eps(x, ns.alpha(t), ns.sigma(t)), ns, **kw.pop("solver", {}))
    out = solver.sample(x, steps, t_end=t_end, method=method, **kw)
    one, end = torch.ones(1, dtype=torch.float64), torch.full((1,), t_end, dtype=torch.float64)
    exact = cases.gaussian_ode_solution(x, ns.alpha(one), ns.sigma(one), ns.alpha(end), ns.sigma(end))
    return (out - exact).abs().max().item()


@pytest.mark.parametrize("schedule", ["discrete", "linear"])
@pytest.mark.parametrize("method,kw", [
    ("fast", dict(order=3)),
    ("fast", dict(order=3, solver=dict(predict_x0=False))),
    ("singlestep", dict(order=2, solver=dict(solver_type="taylor"))),
    ("multistep", dict(order=2)),  # DPM-Solver++(2M)
    ("multistep", dict(order=3)),
    ("fast_v1", dict(solver=dict(predict_x0=False))),
])
def test_dpm_solver_converges_to_exact_gaussian_flow(schedule, method, kw):
    """On a logSNR grid: 4x the steps cut the error at least 8x (second order or better)."""
    coarse = _gaussian_error(method, 12, schedule, skip_type="logSNR", **dict(kw))
    fine = _gaussian_error(method, 48, schedule, skip_type="logSNR", **dict(kw))
    assert fine < 5e-3 and fine < coarse / 8, (coarse, fine)


def test_dpm_solver_converges_on_the_official_uniform_grid():
    """The official latent evaluation's grid (uniform in time to 1/1000) converges too, more slowly:
    its last step spans a wide logSNR range."""
    errors = [_gaussian_error("fast", n, "discrete", order=3) for n in (12, 48, 192)]
    assert errors[2] < errors[1] / 3 < errors[0] / 9 and errors[2] < 1e-2


def test_euler_maruyama_ode_converges_and_sde_samples_the_data():
    ns = LinearVPSchedule()

    def eps(x, t):
        return cases.gaussian_eps(x, ns.alpha(t), ns.sigma(t))

    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    exact = cases.gaussian_ode_solution(x, ns.alpha(one), ns.sigma(one), ns.alpha(zero), ns.sigma(zero))
    errors = [(euler_maruyama(eps, x, ns, steps=n, ode=True) - exact).abs().max().item() for n in (100, 400)]
    assert errors[1] < errors[0] / 2.5 and errors[1] < 2e-2  # first order
    g = torch.Generator().manual_seed(0)
    samples = euler_maruyama(eps, torch.randn(4000, 1, 1, 1, generator=g), ns, steps=200, generator=g)
    assert abs(samples.mean().item() - cases.GAUSS_MEAN) < 0.03
    assert abs(samples.std().item() - cases.GAUSS_STD) < 0.03


def test_sampler_errors():
    ns = DiscreteSchedule()
    solver = DPMSolver(lambda x, t: x, ns)
    x = torch.zeros(1, 1, 2, 2)
    for kwargs, match in [(dict(method="adaptive"), "method"), (dict(skip_type="cosine"), "skip_type"),
                          (dict(order=4), "order"), (dict(steps=0), "steps"), (dict(t_end=2.0), "t_end"),
                          (dict(method="multistep", order=3, steps=2), "steps")]:
        with pytest.raises(ValueError, match=match):
            solver.sample(x, **kwargs)
    with pytest.raises(ValueError, match="solver_type"):
        DPMSolver(lambda x, t: x, ns, solver_type="heun")
    with pytest.raises(ValueError, match="sampler"):
        sampling.solve(lambda x, t: x, x, ns, sampler="ddim")
    with pytest.raises(ValueError, match="steps"):
        euler_maruyama(lambda x, t: x, x, ns, steps=0)


# ---------------------------------------------------------------------------------------------
# guidance
class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)

    def forward(self, *args):
        self.batches.append(args[0].shape[0])
        return self.model(*args)


def test_guidance_is_one_batched_forward_equal_to_two_calls():
    torch.manual_seed(0)
    model = CountingModel(fastuvit.UViT(**cases.TINY_UVIT).eval())
    ns = DiscreteSchedule()
    x, t, y = torch.randn(3, 2, 4, 4), torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        got = guided_noise_fn(model, ns, y, guidance_scale=2.5)(x, t)
        assert model.batches == [6]  # cond and uncond halves in one forward
        cond = model.model(x, t * 1000, y)
        uncond = model.model(x, t * 1000, torch.full_like(y, 3))  # null class: num_classes - 1
    torch.testing.assert_close(got, cond + 2.5 * (cond - uncond), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        model.batches.clear()
        torch.testing.assert_close(guided_noise_fn(model, ns, y)(x, t), cond, rtol=1e-5, atol=1e-6)
        assert model.batches == [3]  # no guidance: one forward of the batch
        explicit = guided_noise_fn(model, ns, y, guidance_scale=1.0, null_cond=torch.tensor(0))(x, t)
        zero = model.model(x, t * 1000, torch.zeros_like(y))
    torch.testing.assert_close(explicit, 2 * cond - zero, rtol=1e-5, atol=1e-6)


def test_text_guidance_uses_the_empty_context():
    torch.manual_seed(0)
    model = fastuvit.UViTT2I(img_size=4, patch_size=2, in_chans=2, embed_dim=16, depth=1, num_heads=2, clip_dim=6,
                             num_clip_token=3).eval()
    ns = LinearVPSchedule()
    x, t, ctx = torch.randn(2, 2, 4, 4), torch.tensor([0.7, 0.2]), torch.randn(2, 3, 6)
    empty = torch.randn(3, 6)
    with torch.no_grad():
        got = guided_noise_fn(model, ns, ctx, guidance_scale=1.5, null_cond=empty)(x, t)
        cond = model(x, t * 999, ctx)
        uncond = model(x, t * 999, empty.expand(2, 3, 6))
    torch.testing.assert_close(got, cond + 1.5 * (cond - uncond), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="null_cond"):
        guided_noise_fn(model, ns, ctx, guidance_scale=1.0)  # no empty context
    with pytest.raises(ValueError, match="empty context"):
        guided_noise_fn(model, ns, ctx, guidance_scale=1.0, null_cond=torch.zeros(4, 6))


def test_guidance_errors_on_unconditional_model():
    model = fastuvit.UViT(img_size=4, patch_size=2, in_chans=1, embed_dim=8, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="cond"):
        guided_noise_fn(model, "discrete", None, guidance_scale=1.0)


@pytest.mark.parametrize("sampler,steps", [("dpm_solver", 7), ("dpm_solver++", 5), ("euler_maruyama_sde", 4),
                                           ("euler_maruyama_ode", 4)])
@pytest.mark.parametrize("schedule", ["discrete", "continuous"])
def test_sample_runs_every_sampler(sampler, steps, schedule):
    torch.manual_seed(0)
    model = CountingModel(fastuvit.UViT(**cases.TINY_UVIT).eval())
    noise = torch.randn(2, 2, 4, 4)
    y = torch.tensor([1, 2])
    out = sampling.sample(model, noise, y, schedule=schedule, sampler=sampler, steps=steps, guidance_scale=0.5,
                          generator=torch.Generator().manual_seed(0))
    assert out.shape == noise.shape and torch.isfinite(out).all()
    assert model.batches == [4] * steps  # one batched (guided) forward per model evaluation


# ---------------------------------------------------------------------------------------------
# live parity with the official code (FASTUVIT_OFFICIAL_REPO)
@pytest.fixture(scope="module")
def official():
    if not OFFICIAL_REPO:
        pytest.skip("set FASTUVIT_OFFICIAL_REPO to an official U-ViT checkout")
    return cases.import_official(OFFICIAL_REPO, "dpm_solver_pp", "libs.uvit")


@pytest.mark.parametrize("predict_x0", [True, False])
@pytest.mark.parametrize("method,order,skip_type", [("fast", 3, "time_uniform"), ("fast", 2, "logSNR"),
                                                     ("singlestep", 3, "logSNR"), ("singlestep", 1, "time_uniform")])
def test_official_dpm_solver_live(official, predict_x0, method, order, skip_type):
    pp, _ = official
    betas = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2).float()
    theirs_ns, ours_ns = pp.NoiseScheduleVP("discrete", betas=betas), DiscreteSchedule()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    theirs = pp.DPM_Solver(mixture_fn(ours_ns), theirs_ns, predict_x0=predict_x0).sample(
        x, steps=17, eps=1e-3, T=1.0, order=order, skip_type=skip_type, method=method)
    ours = DPMSolver(mixture_fn(ours_ns), ours_ns, predict_x0=predict_x0).sample(
        x, 17, t_end=1e-3, order=order, skip_type=skip_type, method=method)
    assert rel_err(ours, theirs) <= 1e-5


def test_official_guided_uvit_live(official):
    """The official U-ViT and solver, wired as eval_ldm_discrete.py, against fastuvit.sampling.sample."""
    pp, uvit = official
    kwargs = dict(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=3, num_heads=2, num_classes=6)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = uvit.UViT(**kwargs).eval()
    ours = fastuvit.UViT(**kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    x, y, scale = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 3, 4]), 0.4
    betas = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2).float()

    def model_fn(x_, t_continuous):
        t = t_continuous * 1000
        cond = theirs(x_, t, y=y)
        return cond + scale * (cond - theirs(x_, t, y=torch.tensor([5] * x_.size(0))))

    with torch.no_grad():
        expected = pp.DPM_Solver(model_fn, pp.NoiseScheduleVP("discrete", betas=betas), predict_x0=True).sample(
            x, steps=50, eps=1.0 / 1000, T=1.0)
        got = sampling.sample(ours, x, y, schedule="discrete", steps=50, guidance_scale=scale)
    assert rel_err(got, expected) <= 1e-4


def test_official_settings_follow_each_configs_evaluation_script():
    """The official README evaluates the pixel models with eval.py and the ImageNet L/2, L/4 latent models
    with eval_ldm.py (continuous time, trained by train_ldm.py); the H and MS-COCO models with
    eval_ldm_discrete.py / eval_t2i_discrete.py; guidance scales from the configs' `sample.scale`."""
    official = sampling.OFFICIAL_SAMPLING
    continuous = {"cifar10_uvit_small", "celeba64_uvit_small", "imagenet64_uvit_mid", "imagenet64_uvit_large",
                  "imagenet256_uvit_large", "imagenet512_uvit_large"}
    assert {name for name, s in official.items() if s["schedule"] == "continuous"} == continuous
    assert set(official) == set(fastuvit.CONFIGS)
    assert {name: s["guidance_scale"] for name, s in official.items() if s["guidance_scale"]} == {
        "imagenet256_uvit_large": 0.4, "imagenet256_uvit_huge": 0.4, "imagenet512_uvit_large": 0.7,
        "imagenet512_uvit_huge": 0.7, "mscoco_uvit_small": 1.0, "mscoco_uvit_small_deep": 1.0}
