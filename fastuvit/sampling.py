"""Sampling from U-ViT noise-prediction models, as the official evaluation does it.

Noise schedules (variance preserving: ``x_t = alpha_t·x0 + sigma_t·eps`` on continuous time t in (0, 1]):

- ``DiscreteSchedule``: the 1000 betas ``linspace(0.00085**.5, 0.012**.5, 1000)**2`` of the latent
  models (ImageNet 256/512, MS-COCO); ``log alpha`` is interpolated piecewise-linearly between the
  knots t = n/1000 and the network gets ``t·1000`` (``eval_ldm_discrete.py``).
- ``LinearVPSchedule``: the VP-SDE with beta 0.1 -> 20 of the pixel models (CIFAR-10, CelebA,
  ImageNet 64); the network gets ``t·999`` (``sde.ScoreModel``).

Solvers, both taking ``noise_fn(x, t) -> eps`` on continuous time (see ``guided_noise_fn``):

- ``DPMSolver``: DPM-Solver (Lu et al. 2022) and DPM-Solver++ (``predict_x0=True``); singlestep
  orders 1-3, the "fast" order schedules and multistep. ``method="fast"`` is the schedule of the
  official ``dpm_solver_pp.py`` that the latent models are evaluated with (50 evaluations, order-3
  steps each spanning three intervals of a uniform grid of steps+1 times, eps 1/1000);
  ``method="fast_v1"`` the original DPM-Solver-fast of ``dpm_solver_pytorch.py`` (one interval of a
  logSNR grid per step) that evaluates the continuous-time ImageNet-64 model. DPM-Solver++(2M) is
  ``predict_x0=True, method="multistep", order=2``.
- ``euler_maruyama``: the reverse VP-SDE (or its probability-flow ODE) on ``[0, linspace(eps, 1, N)]``,
  as ``sde.euler_maruyama`` (CIFAR-10, CelebA: 1000 steps).

Classifier-free guidance is ``cond + scale·(cond − uncond)`` with both halves in one batched forward.
``sample`` puts it together; ``OFFICIAL_SAMPLING`` lists what the official evaluation runs per config.
"""
from __future__ import annotations

from typing import Callable

import torch

NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def stable_diffusion_betas(n: int = 1000, start: float = 0.00085, end: float = 0.012) -> torch.Tensor:
    """The latent models' betas: ``linspace(start**.5, end**.5, n, float64)**2``."""
    return torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2


def _interp(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation through the knots (xp increasing, yp) at x; the two outer
    segments extend to the whole line."""
    flat = x.reshape(-1).contiguous()
    xp, yp = xp.to(flat.dtype), yp.to(flat.dtype)
    k = (torch.searchsorted(xp, flat, right=True) - 1).clamp(0, xp.numel() - 2)
    x0, x1, y0, y1 = xp[k], xp[k + 1], yp[k], yp[k + 1]
    return (y0 + (flat - x0) * (y1 - y0) / (x1 - x0)).reshape(x.shape)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) coefficient shaped to broadcast against x (B, ...)."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


class NoiseSchedule:
    """A VP noise schedule on t in (0, T]: ``log_alpha(t)``, its inverse through the half-logSNR
    ``lambda_t = log alpha_t − log sigma_t``, the SDE's ``beta(t) = −2·d log_alpha/dt``, the time
    the network is fed, and the training-time distribution."""

    T = 1.0
    name = ""

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_time(self, n: int, generator: torch.Generator, device) -> torch.Tensor:
        """Continuous times for n training examples, drawn as the official training does."""
        raise NotImplementedError

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t):
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


class DiscreteSchedule(NoiseSchedule):
    """Discrete-time DDPM betas seen in continuous time: knot n (1..N) sits at t = n/N, and the
    network gets ``t·N`` (= n on the knots, which is what training feeds)."""

    name = "discrete"

    def __init__(self, betas=None):
        betas = stable_diffusion_betas() if betas is None else torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D sequence of at least 2 values in (0, 1)")
        self.N = betas.numel()
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0)  # float64, for the training inputs
        # The official evaluation builds its table from fp32 betas; so does this (sampler parity).
        self._knots = (torch.linspace(1.0 / self.N, 1.0, self.N), 0.5 * torch.log(1.0 - betas.float()).cumsum(0))
        self._on_device: dict = {}

    def _table(self, device):
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = tuple(k.to(device) for k in self._knots)
        return self._on_device[key]

    def log_alpha(self, t):
        t_knots, log_alpha_knots = self._table(t.device)
        return _interp(t, t_knots, log_alpha_knots)

    def inverse_lambda(self, lam):
        t_knots, log_alpha_knots = self._table(lam.device)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        return _interp(log_alpha, log_alpha_knots.flip(0), t_knots.flip(0))

    def beta(self, t):
        t_knots, log_alpha_knots = (k.to(t.dtype) for k in self._table(t.device))
        k = (torch.searchsorted(t_knots, t.reshape(-1).contiguous(), right=True) - 1).clamp(0, self.N - 2)
        slope = (log_alpha_knots[k + 1] - log_alpha_knots[k]) / (t_knots[k + 1] - t_knots[k])
        return (-2.0 * slope).reshape(t.shape)

    def model_time(self, t):
        return t * self.N

    def training_time(self, n, generator, device):
        return torch.randint(1, self.N + 1, (n,), generator=generator, device=device).double() / self.N

    def training_coefficients(self, t):
        """(alpha, sigma) of the training times t = n/N, from the float64 cumulative product."""
        idx = (t * self.N).round().long() - 1
        alphas_cumprod = self.alphas_cumprod.to(t.device)[idx]
        return alphas_cumprod.sqrt().float(), (1.0 - alphas_cumprod).sqrt().float()


class LinearVPSchedule(NoiseSchedule):
    """The continuous VP-SDE with ``beta(t) = beta_0 + t·(beta_1 − beta_0)``; the network gets ``t·999``."""

    name = "continuous"

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0):
        if not 0 <= beta_0 < beta_1:
            raise ValueError(f"need 0 <= beta_0 < beta_1, got beta_0={beta_0}, beta_1={beta_1}")
        self.beta_0, self.beta_1 = float(beta_0), float(beta_1)

    def log_alpha(self, t):
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def inverse_lambda(self, lam):
        tmp = 2.0 * (self.beta_1 - self.beta_0) * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        delta = self.beta_0 ** 2 + tmp
        return tmp / (torch.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)

    def beta(self, t):
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def model_time(self, t):
        return t * 999

    def training_time(self, n, generator, device):
        return torch.rand(n, generator=generator, device=device, dtype=torch.float64)

    def training_coefficients(self, t):
        log_alpha = self.log_alpha(t)
        return torch.exp(log_alpha).float(), (-torch.expm1(2.0 * log_alpha)).sqrt().float()


def get_schedule(schedule) -> NoiseSchedule:
    """A schedule object from ``"discrete"`` / ``"continuous"`` (or a ``NoiseSchedule``, returned as is)."""
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if schedule == "discrete":
        return DiscreteSchedule()
    if schedule == "continuous":
        return LinearVPSchedule()
    raise ValueError(f"schedule must be 'discrete', 'continuous' or a NoiseSchedule, got {schedule!r}")


# ---------------------------------------------------------------------------------------------
# DPM-Solver
# ---------------------------------------------------------------------------------------------

def _phi(z: torch.Tensor):
    """phi_1..3 of the exponential integrator: expm1(z), phi_1/z − 1, phi_2/z − 1/2."""
    phi_1 = torch.expm1(z)
    phi_2 = phi_1 / z - 1.0
    return phi_1, phi_2, phi_2 / z - 0.5


def fast_orders(steps: int, order: int) -> list[int]:
    """The step orders of DPM-Solver-fast: their sum is ``steps`` (order 3: threes, then a 2 and a
    1, a 1, or a 2 for steps % 3 = 0, 1, 2; order 2: twos, then a 1 when steps is odd)."""
    if order == 3:
        k = steps // 3 + 1
        return [3] * (k - 2) + [2, 1] if steps % 3 == 0 else [3] * (k - 1) + ([1] if steps % 3 == 1 else [2])
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    return [1] * steps


class DPMSolver:
    """DPM-Solver for a noise-prediction model ``noise_fn(x, t) -> eps`` on continuous time.

    ``predict_x0=True`` solves in the data-prediction form (DPM-Solver++; the official latent
    evaluation), else in the noise-prediction form. ``solver_type`` "dpm_solver" or "taylor" picks
    the second/third-order corrections. Computations run in the dtype of x (fp32 in the official use).
    """

    def __init__(self, noise_fn: NoiseFn, schedule, predict_x0: bool = True, solver_type: str = "dpm_solver"):
        if solver_type not in ("dpm_solver", "taylor"):
            raise ValueError(f"solver_type must be 'dpm_solver' or 'taylor', got {solver_type!r}")
        self.noise_fn = noise_fn
        self.schedule = get_schedule(schedule)
        self.predict_x0 = predict_x0
        self.solver_type = solver_type
        self.nfe = 0

    # The data-prediction form is the noise form with lambda -> −lambda: x_t = ratio·x − c_t·Σ phi_k(z)·D_k
    # with (ratio, c_t, z) = (sigma_t/sigma_s, alpha_t, −h) for x0 and (alpha_t/alpha_s, sigma_t, h) for eps.
    def _model(self, x, t):
        self.nfe += 1
        eps = self.noise_fn(x, t)
        if not self.predict_x0:
            return eps
        ns = self.schedule
        return (x - _bcast(ns.sigma(t), x) * eps) / _bcast(ns.alpha(t), x)

    def _transfer(self, s, t):
        """(ratio, c_t) of the linear part from time s to time t."""
        ns = self.schedule
        if self.predict_x0:
            return ns.sigma(t) / ns.sigma(s), ns.alpha(t)
        return torch.exp(ns.log_alpha(t) - ns.log_alpha(s)), ns.sigma(t)

    def _z(self, h):
        return -h if self.predict_x0 else h

    def singlestep_update(self, x, s, t, order, r1=None, r2=None, m_s=None):
        """One singlestep update of order 1-3 from times s to t (each (B,)); the intermediate
        evaluations sit at lambda_s + r·h (defaults r1 = 1/2 for order 2, r1, r2 = 1/3, 2/3 for 3)."""
        ns = self.schedule
        lam_s = ns.lambda_(s)
        h = ns.lambda_(t) - lam_s
        z = self._z(h)
        ratio, c_t = self._transfer(s, t)
        phi_1, phi_2, phi_3 = _phi(z)
        m_s = self._model(x, s) if m_s is None else m_s
        x_t = _bcast(ratio, x) * x - _bcast(c_t * phi_1, x) * m_s
        if order == 1:
            return x_t
        if order == 2:
            r1 = 0.5 if r1 is None else r1
            s1 = ns.inverse_lambda(lam_s + r1 * h)
            ratio_1, c_1 = self._transfer(s, s1)
            x_s1 = _bcast(ratio_1, x) * x - _bcast(c_1 * torch.expm1(r1 * z), x) * m_s
            d_1 = self._model(x_s1, s1) - m_s
            if self.solver_type == "dpm_solver":
                return x_t - (0.5 / r1) * _bcast(c_t * phi_1, x) * d_1
            return x_t - (1.0 / r1) * _bcast(c_t * phi_2, x) * d_1
        if order != 3:
            raise ValueError(f"order must be 1, 2 or 3, got {order}")
        r1 = 1.0 / 3.0 if r1 is None else r1
        r2 = 2.0 / 3.0 if r2 is None else r2
        s1, s2 = ns.inverse_lambda(lam_s + r1 * h), ns.inverse_lambda(lam_s + r2 * h)
        ratio_1, c_1 = self._transfer(s, s1)
        x_s1 = _bcast(ratio_1, x) * x - _bcast(c_1 * torch.expm1(r1 * z), x) * m_s
        d_1 = self._model(x_s1, s1) - m_s
        ratio_2, c_2 = self._transfer(s, s2)
        phi_1_r2, phi_2_r2, _ = _phi(r2 * z)
        x_s2 = (_bcast(ratio_2, x) * x - _bcast(c_2 * phi_1_r2, x) * m_s
                - (r2 / r1) * _bcast(c_2 * phi_2_r2, x) * d_1)
        d_2 = self._model(x_s2, s2) - m_s
        if self.solver_type == "dpm_solver":
            return x_t - (1.0 / r2) * _bcast(c_t * phi_2, x) * d_2
        d1_0, d1_1 = (1.0 / r1) * d_1, (1.0 / r2) * d_2
        D1 = (r2 * d1_0 - r1 * d1_1) / (r2 - r1)
        D2 = 2.0 * (d1_1 - d1_0) / (r2 - r1)
        return x_t - _bcast(c_t * phi_2, x) * D1 - _bcast(c_t * phi_3, x) * D2

    def multistep_update(self, x, m_prev: list, t_prev: list, t, order):
        """One multistep update of order 1-3 to time t from the model outputs m_prev at times
        t_prev (oldest first; the last is x's time)."""
        ns = self.schedule
        t_0, m_0 = t_prev[-1], m_prev[-1]
        lam_0 = ns.lambda_(t_0)
        h = ns.lambda_(t) - lam_0
        ratio, c_t = self._transfer(t_0, t)
        phi_1, phi_2, phi_3 = _phi(self._z(h))
        x_t = _bcast(ratio, x) * x - _bcast(c_t * phi_1, x) * m_0
        if order == 1:
            return x_t
        lam_1 = ns.lambda_(t_prev[-2])
        r0 = (lam_0 - lam_1) / h
        d1_0 = _bcast(1.0 / r0, x) * (m_0 - m_prev[-2])
        if order == 2:
            if self.solver_type == "dpm_solver":
                return x_t - 0.5 * _bcast(c_t * phi_1, x) * d1_0
            return x_t - _bcast(c_t * phi_2, x) * d1_0
        if order != 3:
            raise ValueError(f"order must be 1, 2 or 3, got {order}")
        r1 = (lam_1 - ns.lambda_(t_prev[-3])) / h
        d1_1 = _bcast(1.0 / r1, x) * (m_prev[-2] - m_prev[-3])
        D1 = d1_0 + _bcast(r0 / (r0 + r1), x) * (d1_0 - d1_1)
        D2 = _bcast(1.0 / (r0 + r1), x) * (d1_0 - d1_1)
        return x_t - _bcast(c_t * phi_2, x) * D1 - _bcast(c_t * phi_3, x) * D2

    def time_steps(self, skip_type: str, t_start: float, t_end: float, n: int, device) -> torch.Tensor:
        """n + 1 times from t_start down to t_end: uniform in time, in logSNR, or in sqrt(t) ("t2")."""
        if skip_type == "time_uniform":
            return torch.linspace(t_start, t_end, n + 1, device=device)
        if skip_type == "logSNR":
            ns = self.schedule
            lam_start, lam_end = ns.lambda_(torch.tensor(t_start)).item(), ns.lambda_(torch.tensor(t_end)).item()
            return ns.inverse_lambda(torch.linspace(lam_start, lam_end, n + 1, device=device))
        if skip_type == "t2":
            return torch.linspace(t_start ** 0.5, t_end ** 0.5, n + 1, device=device) ** 2
        raise ValueError(f"skip_type must be 'time_uniform', 'logSNR' or 't2', got {skip_type!r}")

    @torch.no_grad()
    def sample(self, x: torch.Tensor, steps: int = 50, t_start: float | None = None, t_end: float = 1e-3,
               order: int = 3, skip_type: str = "time_uniform", method: str = "fast", progress: bool = False):
        """Solve from x at t_start (default T = 1) down to t_end with ``steps`` model evaluations
        ("fast", "fast_v1", "multistep"; "singlestep" uses ``steps // order * order``)."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        t_start = self.schedule.T if t_start is None else float(t_start)
        if not 0 < t_end < t_start:
            raise ValueError(f"need 0 < t_end < t_start, got t_end={t_end}, t_start={t_start}")
        device, batch = x.device, x.shape[0]
        self.nfe = 0

        def vec(t):
            return t.expand(batch).to(x.dtype)

        if method == "fast":  # dpm_solver_pp.py: an order-k step spans k intervals of a steps + 1 grid
            orders = fast_orders(steps, order)
            grid = self.time_steps(skip_type, t_start, t_end, steps, device)
            lam = self.schedule.lambda_(grid)
            i = 0
            for k in _progress(orders, progress, "DPM-Solver"):
                h = lam[i + k] - lam[i]
                r1 = (lam[i + 1] - lam[i]) / h if k >= 2 else None
                r2 = (lam[i + 2] - lam[i]) / h if k >= 3 else None
                x = self.singlestep_update(x, vec(grid[i]), vec(grid[i + k]), k, r1=r1, r2=r2)
                i += k
        elif method in ("fast_v1", "singlestep"):  # one grid interval per step, default intermediate points
            orders = fast_orders(steps, 3) if method == "fast_v1" else [order] * (steps // order)
            if not orders:
                raise ValueError(f"singlestep needs steps >= order, got steps={steps}, order={order}")
            grid = self.time_steps(skip_type, t_start, t_end, len(orders), device)
            for i, k in enumerate(_progress(orders, progress, "DPM-Solver")):
                x = self.singlestep_update(x, vec(grid[i]), vec(grid[i + 1]), k)
        elif method == "multistep":
            if steps < order:
                raise ValueError(f"multistep needs steps >= order, got steps={steps}, order={order}")
            grid = self.time_steps(skip_type, t_start, t_end, steps, device)
            t_prev = [vec(grid[0])]
            m_prev = [self._model(x, t_prev[0])]
            for step in _progress(range(1, steps + 1), progress, "DPM-Solver"):
                t = vec(grid[step])
                x = self.multistep_update(x, m_prev, t_prev, t, min(order, step))
                if step < steps:  # the last output is never used
                    t_prev, m_prev = (t_prev + [t])[-order:], (m_prev + [self._model(x, t)])[-order:]
        else:
            raise ValueError(f"method must be 'fast', 'fast_v1', 'singlestep' or 'multistep', got {method!r}")
        return x


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


# ---------------------------------------------------------------------------------------------
# Euler–Maruyama
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def euler_maruyama(noise_fn: NoiseFn, x: torch.Tensor, schedule, steps: int = 1000, t_end: float = 1e-3,
                   t_start: float = 1.0, ode: bool = False, generator: torch.Generator | None = None,
                   progress: bool = False) -> torch.Tensor:
    """Euler–Maruyama on the reverse VP-SDE ``dx = [f − g²·score] dt + g dw`` (``ode=True``: the
    probability-flow ODE, drift ``f − g²·score/2``, no noise), with ``f = −beta·x/2``, ``g² = beta``,
    ``score = −eps/sigma``, over the times ``[0, linspace(t_end, t_start, steps)]`` from the top; the
    last step (to 0) adds no noise. ``steps`` model evaluations."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    ns = get_schedule(schedule)
    grid = torch.cat([torch.zeros(1, dtype=torch.float64),
                      torch.linspace(t_end, t_start, steps, dtype=torch.float64)]).to(x)
    batch = x.shape[0]
    for i in _progress(range(steps, 0, -1), progress, "Euler-Maruyama"):
        s, t = grid[i - 1], grid[i]
        t_vec = t.expand(batch)
        beta = ns.beta(t)
        score = -noise_fn(x, t_vec) / ns.sigma(t)
        drift = -0.5 * beta * x - (0.5 if ode else 1.0) * beta * score
        dt = s - t
        x = x + drift * dt
        if not ode and i > 1:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + beta.sqrt() * (-dt).sqrt() * noise
    return x


# ---------------------------------------------------------------------------------------------
# The model as a noise function, classifier-free guidance
# ---------------------------------------------------------------------------------------------

def default_null_label(model) -> int | None:
    """The null class of a class-conditional model: its last class (``num_classes − 1``), as in the
    official 1001-class models and ``fastuvit.training``. None for other models."""
    num_classes = getattr(model, "num_classes", -1)
    return num_classes - 1 if isinstance(num_classes, int) and num_classes > 1 else None


def _null_batch(cond: torch.Tensor, null_cond) -> torch.Tensor:
    if cond.dim() == 1:  # class labels
        if isinstance(null_cond, torch.Tensor):
            if null_cond.numel() != 1 and null_cond.shape != cond.shape:
                raise ValueError(f"null_cond must be one label or one per sample {tuple(cond.shape)}, "
                                 f"got shape {tuple(null_cond.shape)}")
            return null_cond.to(cond).expand(cond.shape) if null_cond.numel() == 1 else null_cond.to(cond)
        return torch.full_like(cond, int(null_cond))
    null_cond = torch.as_tensor(null_cond).to(cond)  # empty context (L, D) or (B, L, D)
    if null_cond.shape not in (cond.shape[1:], cond.shape):
        raise ValueError(f"null_cond (the empty context) must have shape {tuple(cond.shape[1:])} or "
                         f"{tuple(cond.shape)}, got {tuple(null_cond.shape)}")
    return null_cond.expand(cond.shape)


def guided_noise_fn(model, schedule, cond: torch.Tensor | None = None, *, guidance_scale: float = 0.0,
                    null_cond=None, autocast_dtype: torch.dtype | None = None) -> NoiseFn:
    """``eps(x, t)`` on continuous time t of a U-ViT ``model(x, timesteps[, y or context])``, the
    network being fed ``schedule.model_time(t)``.

    With ``guidance_scale != 0``: ``cond + scale·(cond − uncond)``, where uncond replaces ``cond`` by
    ``null_cond`` (a null label, default ``num_classes − 1``; or the empty context (L, D) /
    (B, L, D) of a text-to-image model); both halves go through one forward of batch 2B.
    ``autocast_dtype`` runs the network under autocast; the result is fp32 either way.
    """
    ns = get_schedule(schedule)
    scale = float(guidance_scale)
    if scale != 0.0:
        if cond is None:
            raise ValueError("guidance_scale != 0 needs a condition (cond): the model is unconditional")
        null_cond = default_null_label(model) if null_cond is None else null_cond
        if null_cond is None:
            raise ValueError("guidance_scale != 0 needs null_cond: the null label, or the empty context "
                             "of a text-to-image model")
        both = torch.cat([cond, _null_batch(cond, null_cond)])

    def run(x, timesteps, c):
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(x, timesteps) if c is None else model(x, timesteps, c)
        return out.float()

    def noise_fn(x, t):
        timesteps = ns.model_time(t)
        if scale == 0.0:
            return run(x, timesteps, cond)
        eps_cond, eps_uncond = run(torch.cat([x, x]), torch.cat([timesteps, timesteps]), both).chunk(2)
        return eps_cond + scale * (eps_cond - eps_uncond)

    return noise_fn


SAMPLERS = ("dpm_solver", "dpm_solver++", "euler_maruyama_sde", "euler_maruyama_ode")

# What the official evaluation runs for each released config (sample config + the script it uses). The
# ImageNet L models were trained in continuous time (train_ldm.py) and are evaluated by eval_ldm.py, as the
# pixel models by eval.py; the H and MS-COCO models in discrete time (eval_ldm_discrete.py, eval_t2i_discrete.py).
OFFICIAL_SAMPLING = {
    "cifar10_uvit_small": dict(schedule="continuous", sampler="euler_maruyama_sde", steps=1000, guidance_scale=0.0),
    "celeba64_uvit_small": dict(schedule="continuous", sampler="euler_maruyama_sde", steps=1000, guidance_scale=0.0),
    "imagenet64_uvit_mid": dict(schedule="continuous", sampler="dpm_solver", steps=50, guidance_scale=0.0),
    "imagenet64_uvit_large": dict(schedule="continuous", sampler="dpm_solver", steps=50, guidance_scale=0.0),
    "imagenet256_uvit_large": dict(schedule="continuous", sampler="dpm_solver", steps=50, guidance_scale=0.4),
    "imagenet256_uvit_huge": dict(schedule="discrete", sampler="dpm_solver", steps=50, guidance_scale=0.4),
    "imagenet512_uvit_large": dict(schedule="continuous", sampler="dpm_solver", steps=50, guidance_scale=0.7),
    "imagenet512_uvit_huge": dict(schedule="discrete", sampler="dpm_solver", steps=50, guidance_scale=0.7),
    "mscoco_uvit_small": dict(schedule="discrete", sampler="dpm_solver", steps=50, guidance_scale=1.0),
    "mscoco_uvit_small_deep": dict(schedule="discrete", sampler="dpm_solver", steps=50, guidance_scale=1.0),
}


def solve(noise_fn: NoiseFn, noise: torch.Tensor, schedule="discrete", sampler: str = "dpm_solver",
          steps: int = 50, *, generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Run a named sampler from ``noise`` at t = 1 to the data end:

    - "dpm_solver": the official evaluation's DPM-Solver. Discrete schedule: DPM-Solver++
      (predict_x0) "fast" order 3 on a uniform time grid to t = 1/N (``eval_ldm_discrete.py``);
      continuous: noise-prediction DPM-Solver-fast on a logSNR grid to t = 1e-4 (``eval.py``).
    - "dpm_solver++": DPM-Solver++(2M) multistep, uniform time grid to the same end.
    - "euler_maruyama_sde" / "euler_maruyama_ode": ``euler_maruyama`` to t = 1e-3, then 0.
    """
    ns = get_schedule(schedule)
    discrete = isinstance(ns, DiscreteSchedule)
    t_end = 1.0 / ns.N if discrete else 1e-4
    if sampler == "dpm_solver":
        solver = DPMSolver(noise_fn, ns, predict_x0=discrete)
        if discrete:
            return solver.sample(noise, steps, t_end=t_end, order=3, skip_type="time_uniform", method="fast",
                                 progress=progress)
        return solver.sample(noise, steps, t_end=t_end, skip_type="logSNR", method="fast_v1", progress=progress)
    if sampler == "dpm_solver++":
        return DPMSolver(noise_fn, ns, predict_x0=True).sample(
            noise, steps, t_end=t_end, order=2, skip_type="time_uniform", method="multistep", progress=progress)
    if sampler in ("euler_maruyama_sde", "euler_maruyama_ode"):
        return euler_maruyama(noise_fn, noise, ns, steps, ode=sampler.endswith("ode"), generator=generator,
                              progress=progress)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


def sample(model, noise: torch.Tensor, cond: torch.Tensor | None = None, *, schedule="discrete",
           sampler: str = "dpm_solver", steps: int = 50, guidance_scale: float = 0.0, null_cond=None,
           autocast_dtype: torch.dtype | None = None, generator: torch.Generator | None = None,
           progress: bool = False) -> torch.Tensor:
    """Samples of a U-ViT noise-prediction model from starting noise (B, C, H, W) at t = 1.

    ``cond``: class labels (B,) or text contexts (B, L, D); ``guidance_scale``/``null_cond``: see
    ``guided_noise_fn``; ``schedule``/``sampler``/``steps``: see ``solve`` (``OFFICIAL_SAMPLING`` has
    the official settings of each released config). Put the model in eval mode first.
    """
    ns = get_schedule(schedule)
    noise_fn = guided_noise_fn(model, ns, cond, guidance_scale=guidance_scale, null_cond=null_cond,
                               autocast_dtype=autocast_dtype)
    return solve(noise_fn, noise, ns, sampler, steps, generator=generator, progress=progress)


__all__ = [
    "NoiseSchedule", "DiscreteSchedule", "LinearVPSchedule", "get_schedule", "stable_diffusion_betas",
    "DPMSolver", "fast_orders", "euler_maruyama", "guided_noise_fn", "default_null_label", "solve", "sample",
    "SAMPLERS", "OFFICIAL_SAMPLING",
]

