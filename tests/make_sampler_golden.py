"""Regenerate tests/data/sampler_golden.npz with the official solvers (baofff/U-ViT).

    FASTUVIT_OFFICIAL_REPO=/path/to/U-ViT python tests/make_sampler_golden.py

It needs the repository's dpm_solver_pp.py, dpm_solver_pytorch.py, sde.py and libs/ (absl and
timm are not needed). For every case of ``sampler_cases.py`` it runs the official code on a fixed
starting noise (CPU, fp32) and stores the result:

- the DPM-Solver cases with the analytic mixture predictor: ``dpm_solver_pp.DPM_Solver.sample``;
  the multistep cases through its ``dpm_multistep_update`` in the loop of its ``sample`` (whose
  multistep branch cannot run: it reads ``timesteps`` before assigning it); ``linear_fast_v1``
  through ``dpm_solver_pytorch.DPM_Solver.sample(fast_version=True)``, as ``eval.py`` does;
- the Euler–Maruyama cases: ``sde.euler_maruyama`` on ``sde.ScoreModel`` (seeded global RNG);
- ``tiny_*``: an official ``libs.uvit.UViT`` (seed 0, weights stored too) sampled with guidance
  exactly as ``eval_ldm_discrete.py`` does (two forwards per evaluation, network fed t·1000).
"""
import contextlib
import io
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sampler_cases as cases  # noqa: E402

OUT = os.path.join(HERE, "data", "sampler_golden.npz")


def betas32():
    return (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2).float()


def official_multistep(solver, x, steps, t_end, order, skip_type):
    """dpm_solver_pp's multistep loop, with the time grid it means to build."""
    timesteps = solver.get_time_steps(skip_type=skip_type, t_T=1.0, t_0=t_end, N=steps, device=x.device)
    vec_t = timesteps[0].expand(x.shape[0])
    noise_prev, t_prev = [solver.model_fn(x, vec_t)], [vec_t]
    for init_order in range(1, order):
        vec_t = timesteps[init_order].expand(x.shape[0])
        x = solver.dpm_multistep_update(x, noise_prev, t_prev, vec_t, init_order, solver_type="dpm_solver")
        noise_prev.append(solver.model_fn(x, vec_t))
        t_prev.append(vec_t)
    for step in range(order, steps + 1):
        vec_t = timesteps[step].expand(x.shape[0])
        x = solver.dpm_multistep_update(x, noise_prev, t_prev, vec_t, order, solver_type="dpm_solver")
        for i in range(order - 1):
            t_prev[i], noise_prev[i] = t_prev[i + 1], noise_prev[i + 1]
        t_prev[-1] = vec_t
        if step < steps:
            noise_prev[-1] = solver.model_fn(x, vec_t)
    return x


def main():
    repo = os.environ.get("FASTUVIT_OFFICIAL_REPO")
    if not repo:
        sys.exit("set FASTUVIT_OFFICIAL_REPO to a checkout of baofff/U-ViT")
    pp, v1, sde, uvit = cases.import_official(repo, "dpm_solver_pp", "dpm_solver_pytorch", "sde", "libs.uvit")
    out = {}
    x_T = torch.randn(cases.SHAPE, generator=torch.Generator().manual_seed(0))
    out["x_T"] = x_T
    schedules = {"discrete": pp.NoiseScheduleVP("discrete", betas=betas32()), "linear": pp.NoiseScheduleVP("linear")}

    for name, (schedule, solver_kw, sample_kw) in cases.DPM_CASES.items():
        ns = schedules[schedule]

        def eps(x, t, ns=ns):
            return cases.mixture_eps(x, ns.marginal_alpha(t), ns.marginal_std(t))

        kw = dict(sample_kw)
        steps, t_end, method = kw.pop("steps"), kw.pop("t_end"), kw.pop("method")
        if method == "fast_v1":
            result = v1.DPM_Solver(eps, v1.NoiseScheduleVP("linear")).sample(
                x_T, steps=steps, eps=t_end, adaptive_step_size=False, fast_version=True)
        elif method == "multistep":
            solver = pp.DPM_Solver(eps, ns, predict_x0=solver_kw["predict_x0"])
            result = official_multistep(solver, x_T, steps, t_end, kw["order"], kw["skip_type"])
        else:
            solver_type = solver_kw.get("solver_type", "dpm_solver")
            result = pp.DPM_Solver(eps, ns, predict_x0=solver_kw["predict_x0"]).sample(
                x_T, steps=steps, eps=t_end, T=1.0, method=method, solver_type=solver_type, **kw)
        out[name] = result

    linear = schedules["linear"]

    def nnet(x, t_in):  # a "network" fed t·999, as sde.ScoreModel feeds it
        t = t_in / 999
        return cases.mixture_eps(x, linear.marginal_alpha(t), linear.marginal_std(t))

    for name, kw in cases.EM_CASES.items():
        with contextlib.redirect_stdout(io.StringIO()):
            score_model = sde.ScoreModel(nnet, pred="noise_pred", sde=sde.VPSDE())
            rsde = sde.ODE(score_model) if kw["ode"] else sde.ReverseSDE(score_model)
            torch.manual_seed(kw["seed"])
            out[name] = sde.euler_maruyama(rsde, x_T, kw["steps"])

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        model = uvit.UViT(**cases.TINY_UVIT).eval()
    c = cases.TINY_UVIT
    tiny_x = torch.randn(len(cases.TINY_LABELS), c["in_chans"], c["img_size"], c["img_size"],
                         generator=torch.Generator().manual_seed(1))
    y = torch.tensor(cases.TINY_LABELS)
    null = c["num_classes"] - 1

    def cfg_nnet(x, timesteps, y):
        cond = model(x, timesteps, y=y)
        uncond = model(x, timesteps, y=torch.tensor([null] * x.size(0)))
        return cond + cases.TINY_GUIDANCE * (cond - uncond)

    def model_fn(x, t_continuous):
        return cfg_nnet(x, t_continuous * 1000, y=y)

    with torch.no_grad():
        solver = pp.DPM_Solver(model_fn, schedules["discrete"], predict_x0=True, thresholding=False)
        out["tiny_out"] = solver.sample(tiny_x, steps=50, eps=1.0 / 1000, T=1.0)
    out["tiny_x_T"] = tiny_x
    for k, v in model.state_dict().items():
        out[f"tiny/{k}"] = v

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    np.savez_compressed(OUT, **{k: v.detach().cpu().numpy() for k, v in out.items()})
    print(f"wrote {OUT}: {', '.join(k for k in out if not k.startswith('tiny/'))}")


if __name__ == "__main__":
    main()
