"""Analytic noise predictors and the solver configurations shared by the sampler tests and by
``make_sampler_golden.py`` (which runs them through the official solvers).

Data whose pixels are i.i.d. draws of a known distribution have an exact noise predictor
``E[eps | x_t] = (x_t − alpha·E[x0 | x_t]) / sigma``:
- a two-component Gaussian mixture (non-linear in x_t: exercises every solver term);
- a Gaussian N(mu, s²), whose probability-flow ODE is solved in closed form:
  ``x_t = alpha_t·mu + sqrt(alpha_t²·s² + sigma_t²)·z`` with z constant along the path.
"""
import contextlib
import io
import sys
import types

import torch

MIX_MEANS, MIX_WEIGHTS, MIX_STD = (-0.6, 0.5), (0.4, 0.6), 0.3
GAUSS_MEAN, GAUSS_STD = 0.3, 0.5
SHAPE = (2, 3, 4, 4)  # the starting noise of the golden cases


def mixture_eps(x, alpha, sigma):
    """E[eps | x_t] for pixels ~ sum_k w_k N(m_k, MIX_STD²); alpha, sigma per sample (B,)."""
    a = alpha.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    s = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    var = a * a * MIX_STD ** 2 + s * s
    logits = torch.stack([torch.log(torch.tensor(w, dtype=x.dtype)) - (x - a * m) ** 2 / (2 * var)
                          for m, w in zip(MIX_MEANS, MIX_WEIGHTS)])
    resp = torch.softmax(logits, 0)
    x0 = sum(r * (m + a * MIX_STD ** 2 / var * (x - a * m)) for r, m in zip(resp, MIX_MEANS))
    return (x - a * x0) / s


def gaussian_eps(x, alpha, sigma):
    """E[eps | x_t] for pixels ~ N(GAUSS_MEAN, GAUSS_STD²)."""
    a = alpha.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    s = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return s * (x - a * GAUSS_MEAN) / (a * a * GAUSS_STD ** 2 + s * s)


def gaussian_ode_solution(x_start, alpha_start, sigma_start, alpha_end, sigma_end):
    """The exact probability-flow ODE map for Gaussian data, from one time to another."""
    z = (x_start - alpha_start * GAUSS_MEAN) / (alpha_start ** 2 * GAUSS_STD ** 2 + sigma_start ** 2) ** 0.5
    return alpha_end * GAUSS_MEAN + (alpha_end ** 2 * GAUSS_STD ** 2 + sigma_end ** 2) ** 0.5 * z


# Golden DPM-Solver cases: name -> (schedule, solver kwargs, sample kwargs). "schedule" is
# "discrete" (the latent models' betas) or "linear" (VP beta 0.1 -> 20).
DPM_CASES = {
    # What eval_ldm_discrete.py runs: DPM-Solver++ fast, order 3, 50 evaluations, uniform time, eps 1/N.
    "ldm_eval": ("discrete", dict(predict_x0=True), dict(steps=50, t_end=1e-3, order=3, skip_type="time_uniform",
                                                           method="fast")),
    "discrete_singlestep2_taylor": ("discrete", dict(predict_x0=True, solver_type="taylor"),
                                    dict(steps=20, t_end=1e-3, order=2, skip_type="logSNR", method="singlestep")),
    "linear_singlestep3_taylor_x0": ("linear", dict(predict_x0=True, solver_type="taylor"),
                                     dict(steps=12, t_end=1e-3, order=3, skip_type="time_uniform",
                                          method="singlestep")),
    "linear_fast_noise": ("linear", dict(predict_x0=False), dict(steps=20, t_end=1e-4, order=3, skip_type="logSNR",
                                                                  method="fast")),
    "linear_fast2_x0_t2": ("linear", dict(predict_x0=True), dict(steps=15, t_end=1e-3, order=2, skip_type="t2",
                                                                  method="fast")),
    "discrete_multistep2_x0": ("discrete", dict(predict_x0=True), dict(steps=20, t_end=1e-3, order=2,
                                                                        skip_type="time_uniform", method="multistep")),
    "linear_multistep3_noise": ("linear", dict(predict_x0=False), dict(steps=12, t_end=1e-3, order=3,
                                                                        skip_type="logSNR", method="multistep")),
    # What eval.py runs for the continuous-time models: dpm_solver_pytorch's DPM-Solver-fast.
    "linear_fast_v1": ("linear", dict(predict_x0=False), dict(steps=20, t_end=1e-4, skip_type="logSNR",
                                                               method="fast_v1")),
}
# Euler–Maruyama on the VP-SDE (sde.py): the network gets t·999.
EM_CASES = {"em_sde": dict(steps=40, ode=False, seed=123), "em_ode": dict(steps=40, ode=True, seed=0)}

# A tiny class-conditional U-ViT, sampled as eval_ldm_discrete.py does with guidance.
TINY_UVIT = dict(img_size=4, patch_size=2, in_chans=2, embed_dim=16, depth=3, num_heads=2, num_classes=4)
TINY_GUIDANCE = 0.7
TINY_LABELS = (0, 2)


def import_official(repo, *modules):
    """Import modules of an official U-ViT checkout (sde.py logs through absl: a stand-in is enough)."""
    import importlib

    if "absl" not in sys.modules:
        absl = types.ModuleType("absl")
        absl.logging = types.SimpleNamespace(debug=lambda *a, **k: None, info=lambda *a, **k: None)
        sys.modules["absl"], sys.modules["absl.logging"] = absl, absl.logging
    sys.path.insert(0, repo)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the official modules print their settings
            return [importlib.import_module(m) for m in modules]
    finally:
        sys.path.remove(repo)
