"""Run configuration: frozen dataclasses, one docstring per field (the CLI help),
and MBPO's per-environment presets (shared/design/REFERENCE.md, MBPO table)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

import tyro

ALGOS = ("mbpo", "sac", "pmac", "memr", "rew", "pmac+rew", "dam")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


@dataclass(frozen=True)
class ModelConfig:
    """Probabilistic ensemble dynamics model and its trainer (MBPO Sec. 4.1)."""

    ensemble_size: int = 7
    """Number of ensemble members."""
    num_elites: int = 5
    """Members with the lowest holdout MSE used for rollouts."""
    hidden_size: int = 200
    """Width of each hidden layer."""
    num_layers: int = 4
    """Number of hidden layers (SiLU)."""
    weight_decays: tuple[float, ...] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
    """L2 coefficient per layer, hidden layers then output (weights only)."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 256
    """Minibatch size per member."""
    holdout_ratio: float = 0.2
    """Fraction of the real data held out for early stopping."""
    max_holdout: int = 5000
    """Cap on the holdout set size."""
    improvement_threshold: float = 0.01
    """Relative holdout-MSE improvement that counts as progress for a member."""
    patience: int = 5
    """Stop after more than this many epochs without progress of any member."""
    max_epochs: int = 0
    """Cap on epochs per training (0 = no cap, as in MBPO)."""
    train_freq: int = 250
    """Train the model (and generate rollouts) every this many env steps."""
    devices: int = 0
    """Devices the members are split over in training (0 = automatic: on a CPU one per usable core,
    at most ensemble_size; 1 on a GPU). Results do not depend on it."""


@dataclass(frozen=True)
class SACConfig:
    """Soft actor-critic with automatic entropy tuning (Haarnoja et al. 2018)."""

    hidden_size: int = 256
    """Width of the policy and Q networks."""
    num_layers: int = 2
    """Hidden layers of the policy and Q networks (ReLU)."""
    lr: float = 3e-4
    """Adam learning rate for policy, Q and temperature."""
    batch_size: int = 256
    """Minibatch size per update."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target Q networks."""
    init_alpha: float = 1.0
    """Initial temperature."""
    target_entropy: float | None = None
    """Entropy target (None: -action_dim)."""
    updates_per_step: int = 20
    """Gradient updates per env step (G)."""


@dataclass(frozen=True)
class RolloutConfig:
    """Branched model rollouts (MBPO Algorithm 2)."""

    batch_size: int = 100_000
    """Rollout start states drawn from real data every model.train_freq env steps."""
    schedule: tuple[int, int, int, int] = (20, 150, 1, 15)
    """Horizon schedule [a, b, x, y]: length x until epoch a, linear to y at epoch b."""
    retain_epochs: int = 1
    """Epochs of model rollouts kept in the model buffer."""
    real_ratio: float = 0.05
    """Fraction of real transitions in each SAC batch."""


@dataclass(frozen=True)
class DAMConfig:
    """Discriminator Augmented MBRL (shared/papers/dam.txt): planning with corrected value estimates."""

    model: Annotated[Literal["gaussian", "mdn"], tyro.conf.arg(aliases=("--model",))] = "gaussian"
    """Dynamics model: unimodal Gaussian, or mixture density network (multimodal)."""
    num_components: int = 3
    """Mixture components of the MDN."""
    objective: Annotated[Literal["mle", "minvar"], tyro.conf.arg(aliases=("--objective",))] = "mle"
    """Model objective: maximum likelihood, or minimum variance (Eq. 10: return-weighted likelihood)."""
    correction: Annotated[Literal["none", "discriminator"], tyro.conf.arg(aliases=("--correction",))] = "none"
    """Value estimates: plain model return, or discriminator-corrected (Eq. 4, Algorithm 1)."""
    weight_mode: Literal["exp", "sigmoid"] = "exp"
    """Importance weight from the discriminator logit: exp (Eq. 8; the better one in our paper-protocol
    Table 1 runs: an uninformative logit 0 gives weight 1, not sigmoid's 1/2 per step, see README) or
    sigmoid (Algorithm 1)."""
    max_weight: float | None = None
    """Clip per-transition importance weights at this value (None: no clip)."""
    protocol: Literal["paper", "rich"] = "paper"
    """Data collection: paper = Algorithm 3 (1 random episode, then 1 planner episode per round);
    rich = 5 random episodes, then 5 planner episodes per round (README: 3 on Intersection-v0)."""
    rounds: Annotated[int, tyro.conf.arg(aliases=("--rounds",))] = 10
    """MBRL rounds (Algorithm 3): act with the planner, then retrain model and discriminator."""
    episodes_per_round: int | None = None
    """Real episodes collected with the planner in each round (default: the protocol's)."""
    init_episodes: int | None = None
    """Uniform-random episodes collected before the first round (default: the protocol's)."""
    eval_every: int = 1
    """Evaluate (eval_episodes planner episodes) every this many rounds; the last round always is."""
    planner: Literal["rs", "cem"] = "rs"
    """Planner: random shooting (Algorithm 3) or the cross-entropy method."""
    horizon: int = 5
    """Planning horizon H (actions per candidate sequence)."""
    num_sequences: int = 500
    """Candidate action sequences K per planning step."""
    num_particles: Annotated[int, tyro.conf.arg(aliases=("--dam.particles",))] = 20
    """Model samples per candidate sequence in ESTIMATEVALUE, averaged (1: Algorithm 1's single sample)."""
    cem_iterations: int = 5
    """CEM refinement iterations."""
    cem_elites: int = 50
    """CEM elite sequences per iteration."""
    disc_hidden: int = 128
    """Width of the discriminator's two hidden layers."""
    disc_steps: int = 2000
    """Discriminator minibatch updates per round (at most, with early stopping)."""
    disc_batch_size: int = 256
    """Discriminator minibatch size (real and fake halves)."""
    disc_samples: int = 0
    """Model samples per real row: 0 = a fresh s~' ~ q(.|s,a) for every row in every update
    (Algorithm 2); F > 0 = F samples drawn once per round, one picked per update."""
    disc_holdout: float = 0.2
    """Fraction of real rows held out for early stopping on held-out cross-entropy (0: none,
    train all disc_steps)."""
    disc_patience: int = 10
    """Held-out checks (every disc_check_every updates) without improvement before stopping."""
    disc_check_every: int = 50
    """Discriminator updates between held-out checks."""
    disc_weight_decay: float = 0.0
    """L2 weight decay on the discriminator's weights."""

    def episode_counts(self) -> tuple[int, int]:
        """(initial random episodes, planner episodes per round): the ones given, else the protocol's."""
        init, per_round = DAM_PROTOCOLS.get(self.protocol, (None, None))
        return (init if self.init_episodes is None else self.init_episodes,
                per_round if self.episodes_per_round is None else self.episodes_per_round)


# (init_episodes, episodes_per_round) of the DAM data protocols. paper = Algorithm 3: T starts empty
# and each round adds ONE planner rollout; the first rollout comes before any model exists, when a
# random-shooting planner ranks its candidates arbitrarily, so it is one uniform-random episode (the
# least data TRAINMODEL can fit), then one planner episode in each of the `rounds` rounds.
# rich = the data-rich protocol of our first Table 1 (it used 3 episodes per round on Intersection-v0).
DAM_PROTOCOLS = {"paper": (1, 1), "rich": (5, 5)}


@dataclass(frozen=True)
class PMACConfig:
    """PMAC (shared/papers/pmac.md): real data reweighted toward recent policies (Algorithm 1, Eq. 4)."""

    alpha: float = 0.9
    """Policy-adaptation rate: at each new chunk the older chunks' mass is multiplied by alpha and the
    newest chunk gets 1 - alpha (Eq. 4; 0.9 is the paper's best, Appendix C.2)."""
    chunk_steps: int = 250
    """Env steps per historical policy (one chunk; the initial exploration data is chunk 0). The paper
    says 250 (D.1) and 1000 (C.2); with 1000 the newest, still growing chunk holds 1 - alpha."""
    weights: Literal["paper", "tv"] = "paper"
    """Chunk weights: the paper's geometric rule, or the authors' released rule (1/TV between the current
    policy and each chunk's collecting policy, newest chunk ~tv_max_rate; SPECS.md 1.4)."""
    for_model: bool = True
    """Draw the model's training minibatches (per-member bootstrap) with the weights (ablation C.1)."""
    for_starts: bool = True
    """Draw the rollout start states with the weights (ablation C.1)."""
    holdout: Literal["uniform", "weighted"] = "uniform"
    """Holdout for early stopping and elites: uniform (authors' code), or weighted like the training
    loss (the weights then enter as loss weights with a uniform bootstrap)."""
    tv_states: int = 5000
    """TV rule: states subsampled per model round to estimate the chunks' policy TVs (cost cap), split evenly
    over every chunk the run will have (a fixed shape), so chunks existing so far use a share of it."""
    tv_max_rate: float = 0.02
    """TV rule: target mass of the newest chunk (the authors' max_rate)."""


@dataclass(frozen=True)
class MEMRConfig:
    """MEMR (shared/papers/memr.md, Algorithm 1): one-step rollouts from max-entropy-prioritized start states."""

    alpha: float = 0.6
    """Prioritization exponent a: start state i is drawn with P(i) = p_i^a / sum_k p_k^a (Eq. 3; 0.6 is the
    paper's best). 0 is the control: uniform starts and unit importance weights."""
    beta_start: float = 0.4
    """Importance-sampling exponent b at the first env step (Eq. 5), annealed linearly ..."""
    beta_end: float = 1.0
    """... to this value at total_steps."""
    every: int = 1
    """Generate rollouts every this many env steps (rollout.batch_size start states each time, one segment;
    the paper: 400 every step; the authors' reimplementation: 20000 every 50)."""
    is_norm: Literal["max", "mean"] = "max"
    """Normalize a segment's importance weights by their max (Eq. 5) or their mean (the reimplementation)."""
    psi_epochs: int = 2
    """Epochs of the model-data policy pi_psi's maximum-likelihood fit on each new segment (D)."""
    psi_batch_size: int = 256
    """pi_psi minibatch size."""
    psi_hidden: int = 256
    """Width of pi_psi's two hidden layers."""
    psi_lr: float = 3e-4
    """pi_psi Adam learning rate."""
    model_buffer_size: int = 1_000_000
    """Rows of the segmented model buffer (rounded down to whole segments)."""


@dataclass(frozen=True)
class ReWConfig:
    """ReW-PE-SAC (shared/papers/rew.txt): imagined transition sets weighted by a meta-learned weight network
    (Algorithm 1, Eqs. 1-6); values the paper leaves to its missing appendix are proposals (SPECS.md 3.3)."""

    weights: Literal["rew", "none"] = "rew"
    """Transition weights: rew (the meta-learned weight network, ReW-PE-SAC) or none (every weight 1: PE-SAC, the
    paper's ablation; the same set rollouts and updates otherwise)."""
    horizon: int = 5
    """Planning horizon H of every set rollout, fixed (rollout.schedule is not used; proposal 5, option 10)."""
    samples_per_member: int = 1
    """M: next-state samples from each member's Gaussian at each depth; a transition set holds M x B samples
    (proposal 1, option 5)."""
    elites_only: bool = False
    """Sets from the model's elites only (B = model.num_elites) instead of every member (B = model.ensemble_size,
    the paper's B bootstrapped models)."""
    explore_scale: float = 10.0
    """lambda_e: the training rollouts act with the current policy at temperature lambda_e x alpha, i.e. its pre-tanh
    std times sqrt(lambda_e) (rew.txt:626-630; 10 in the paper)."""
    meta_starts: int = 52
    """Ne: real start states of each meta step, each rolled out H steps with its recorded real actions (Ne x H
    sets; proposal 52 x 5 = 260, about one SAC batch)."""
    meta_batch: int = 256
    """Nv: real transitions of the meta objective (Eq. 4)."""
    inner_lr: float = 3e-4
    """mu: step size of the one plain-SGD step of Q and policy on the weighted sets (Eq. 1)."""
    weight_lr: float = 3e-4
    """mu_w: Adam learning rate of the weight network."""
    hidden: int = 64
    """Width of the weight network: Linear(features -> hidden) -> GRU(hidden) over depth -> Linear(hidden -> 1)
    -> sigmoid (Fig. 1, right)."""
    last_bias: float = 3.0
    """Initial bias of the output layer, whose weights start at 0: every initial weight is sigmoid(3.0) = 0.953
    (rew.txt:853-855)."""
    meta_every: int = 1
    """Meta step (weight-network update) every this many env steps (Algorithm 1: every step, SPECS C1)."""
    real_updates: int = 0
    """SAC updates on real-only minibatches after the K weighted updates of each env step (Algorithm 1, last line).
    0: real rows are mixed into every minibatch instead (rollout.real_ratio, weight 1; set that to 0 with this)."""
    corrupt_fraction: float = 0.0
    """Benchmark only (SPECS R-T1): fraction of the imagined transition sets (meta step and training) whose
    samples get extra Gaussian noise of corrupt_scale x the model's std; 0 = none."""
    corrupt_scale: float = 3.0
    """Benchmark only: the corruption noise in units of the model's predicted std."""


@dataclass(frozen=True)
class TrainConfig:
    """A training run."""

    algo: Literal["mbpo", "sac", "pmac", "memr", "rew", "pmac+rew", "dam"] = "mbpo"
    """Algorithm: mbpo (model-based), sac (model-free baseline), pmac (MBPO with policy-adapted model data,
    see --pmac.*), memr (one-step rollouts from max-entropy-prioritized starts, see --memr.*), rew (ReW-PE-SAC:
    meta-learned weights on imagined transition sets, see --rew.*; --rew.weights none is PE-SAC), pmac+rew
    (PMAC's data weights and starts with ReW's rollouts and weights) or dam (planning, IcyRoad-v0 /
    Intersection-v0)."""
    env: str = "InvertedPendulum-v5"
    """Environment id (see `mbrlax.envs.list_envs()`; any Gymnasium id, an id registered with
    `mbrlax.envs.register`, or your own env as `package.module:make_env`, a function returning a
    gymnasium.Env, imported again by resume and eval)."""
    seed: int = 0
    """Random seed."""
    total_steps: int = 5000
    """Total real env steps, initial exploration included."""
    init_steps: int = 500
    """Uniform-random exploration steps before learning starts."""
    steps_per_epoch: int = 250
    """Env steps per epoch (evaluation, checkpoint and horizon-schedule unit)."""
    eval_episodes: int = 5
    """Deterministic evaluation episodes per epoch."""
    checkpoint_every: int = 1
    """Save a checkpoint every this many epochs."""
    stop_return: float | None = None
    """Stop early once the evaluation return reaches this value (None: run all steps)."""
    out: str | None = None
    """Run directory (default: a new folder under runs/)."""
    progress: bool = True
    """Show a progress bar."""
    termination: str | None = None
    """Your env's termination function as `package.module:is_done`: a pure jax.numpy fn(obs, action, next_obs)
    -> bool [N] on batched arrays, equal to the env's `terminated` (None: the preset's or registered one; model
    rollouts never terminate without one). Checked on a random rollout before training."""
    reward: str | None = None
    """Your env's known reward as `package.module:reward`: a pure jax.numpy fn(obs, action, next_obs) -> float [N],
    equal to the env's reward (action: the agent's in [-1, 1]; dam: the env's). Model rollouts use it instead of the
    model's predicted reward; dam needs one. Checked on a random rollout before training."""
    model: ModelConfig = field(default_factory=ModelConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    dam: DAMConfig = field(default_factory=DAMConfig)
    pmac: PMACConfig = field(default_factory=PMACConfig)
    memr: MEMRConfig = field(default_factory=MEMRConfig)
    rew: ReWConfig = field(default_factory=ReWConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def config_from_dict(d: dict) -> TrainConfig:
    """Inverse of `TrainConfig.to_dict` (lists become tuples)."""
    d = dict(d)
    sub = {"model": ModelConfig, "sac": SACConfig, "rollout": RolloutConfig, "dam": DAMConfig,
           "pmac": PMACConfig, "memr": MEMRConfig, "rew": ReWConfig}
    for name, cls in sub.items():
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get(name, {}).items()}
        d[name] = cls(**fields)
    return TrainConfig(**d)


# MBPO paper settings per environment (REFERENCE.md).
# (steps_per_epoch, G, schedule, train_freq, retain_epochs, target_entropy, budget, init_steps)
_MBPO_TABLE = {
    "Hopper-v5": (1000, 20, (20, 150, 1, 15), 250, 1, -1.0, 125_000, 5000),
    "Walker2d-v5": (1000, 20, (20, 150, 1, 1), 250, 1, -3.0, 300_000, 5000),
    "HalfCheetah-v5": (1000, 40, (20, 150, 1, 1), 250, 1, -3.0, 400_000, 5000),
    "AntTruncatedObs-v5": (1000, 20, (20, 100, 1, 25), 250, 1, -4.0, 300_000, 5000),
    "Ant-v5": (1000, 20, (20, 100, 1, 25), 250, 1, -4.0, 300_000, 5000),
    "HumanoidTruncatedObs-v5": (1000, 20, (20, 300, 1, 25), 1000, 5, -2.0, 300_000, 5000),
    "Humanoid-v5": (1000, 20, (20, 300, 1, 25), 1000, 5, -2.0, 300_000, 5000),
    "InvertedPendulum-v5": (250, 10, (1, 15, 1, 1), 250, 1, -0.05, 5000, 500),
    "InvertedDoublePendulum-v5": (250, 20, (1, 15, 1, 1), 250, 1, -0.5, 20_000, 500),
    # The MBBL envs of ReW-PE-SAC (mbrlax/envs/mbbl.py): their base env's settings, ReW's 200k-step budget;
    # Swimmer (no MBPO setting) like Walker2d, with SAC's default target entropy -act_dim.
    "HopperMBBL-v0": (1000, 20, (20, 150, 1, 15), 250, 1, -1.0, 200_000, 5000),
    "Walker2dMBBL-v0": (1000, 20, (20, 150, 1, 1), 250, 1, -3.0, 200_000, 5000),
    "HalfCheetahMBBL-v0": (1000, 40, (20, 150, 1, 1), 250, 1, -3.0, 200_000, 5000),
    "AntMBBL-v0": (1000, 20, (20, 100, 1, 25), 250, 1, -4.0, 200_000, 5000),
    "SwimmerMBBL-v0": (1000, 20, (20, 150, 1, 1), 250, 1, -2.0, 200_000, 5000),
    "SlimHumanoidMBBL-v0": (1000, 20, (20, 300, 1, 25), 1000, 5, -2.0, 200_000, 5000),
}


# PMAC's own horizon schedules (Table 1, written there as [x, y, a, b]); for these envs also Table 2's G = 20 and
# model training every 250 env steps (MBPO's Humanoid trains every 1000); other settings as MBPO.
_PMAC_SCHEDULES = {
    "Hopper-v5": (20, 100, 1, 15),
    "Walker2d-v5": (20, 150, 1, 1),
    "HalfCheetah-v5": (20, 150, 1, 1),
    "Ant-v5": (20, 100, 1, 25),
    "AntTruncatedObs-v5": (20, 100, 1, 25),
    "Humanoid-v5": (20, 300, 1, 25),
    "HumanoidTruncatedObs-v5": (20, 300, 1, 25),
}


def preset(env: str, algo: str = "mbpo", **overrides) -> TrainConfig:
    """Paper settings for `env` (defaults for unknown envs), with field overrides."""
    cfg = TrainConfig(algo=algo, env=env)
    if env in _MBPO_TABLE:
        epoch, g, sched, freq, retain, ent, budget, init = _MBPO_TABLE[env]
        humanoid = "Humanoid" in env  # Humanoid-v5, HumanoidTruncatedObs-v5, SlimHumanoidMBBL-v0
        cfg = replace(
            cfg,
            steps_per_epoch=epoch,
            total_steps=budget,
            init_steps=init,
            eval_episodes=5 if epoch <= 250 else 1,
            model=replace(cfg.model, train_freq=freq, hidden_size=400 if humanoid else 200),
            sac=replace(cfg.sac, updates_per_step=g, target_entropy=ent),
            rollout=replace(
                cfg.rollout,
                schedule=sched,
                retain_epochs=retain,
                # 400 start states per env step (100 for Humanoid).
                batch_size=(100 if humanoid else 400) * freq,
            ),
        )
    if algo == "dam":  # small single-model fits on the DAM envs' tiny data sets
        cfg = replace(
            cfg, eval_episodes=10,
            model=replace(cfg.model, ensemble_size=1, num_elites=1, hidden_size=128, num_layers=3,
                          weight_decays=(2.5e-5, 5e-5, 7.5e-5, 1e-4), patience=20, max_epochs=500),
        )
        if env == "Intersection-v0":  # 25-step episodes: look far enough ahead to see the turn coming
            cfg = replace(cfg, dam=replace(cfg.dam, horizon=12, num_sequences=200, num_particles=10))
    if algo == "pmac" and env in _PMAC_SCHEDULES:  # Table 2: G = 20 and a model round every 250 env steps
        per_step = cfg.rollout.batch_size // cfg.model.train_freq  # 400 start states per env step (Humanoid 100)
        cfg = replace(cfg, model=replace(cfg.model, train_freq=250),
                      rollout=replace(cfg.rollout, schedule=_PMAC_SCHEDULES[env], batch_size=per_step * 250),
                      sac=replace(cfg.sac, updates_per_step=20))
    if algo == "memr":  # Table 1: G = 5, 400 one-step rollouts per env step, agent batches from model data only
        per_step = 100 if env.startswith("Humanoid") else 400
        cfg = replace(cfg, sac=replace(cfg.sac, updates_per_step=5),
                      rollout=replace(cfg.rollout, batch_size=per_step * cfg.memr.every, real_ratio=0.0))
    # rew, pmac+rew: MBPO's settings of the env (K = G updates, 400 set-rollout starts per env step, real ratio
    # 0.05; rollout.schedule unused, the horizon is rew.horizon); ReW's own defaults are in ReWConfig.
    if algo == "sac":  # the model-free baseline: one update per env step (SAC paper)
        cfg = replace(cfg, sac=replace(cfg.sac, updates_per_step=1))
    return replace(cfg, **overrides) if overrides else cfg


def rollout_horizon(schedule: tuple[int, int, int, int], epoch: int) -> int:
    """MBPO's linear horizon schedule: int(min(max(x + (e-a)/(b-a)*(y-x), x), y))."""
    a, b, x, y = schedule
    return int(min(max(x + (epoch - a) / (b - a) * (y - x), x), y))


def _require(ok: bool, field_name: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"invalid {field_name}={value!r}: {allowed}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every field a user can set; raise ConfigError naming the field."""
    _require(cfg.algo in ALGOS, "algo", cfg.algo, f"must be one of {', '.join(ALGOS)}")
    for name in ("total_steps", "steps_per_epoch", "eval_episodes", "checkpoint_every"):
        _require(getattr(cfg, name) > 0, name, getattr(cfg, name), "must be a positive integer")
    _require(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    _require(cfg.init_steps >= 0, "init_steps", cfg.init_steps, "must be >= 0")
    _require(
        cfg.init_steps < cfg.total_steps, "init_steps", cfg.init_steps,
        f"must be smaller than total_steps={cfg.total_steps}",
    )
    m, s, r = cfg.model, cfg.sac, cfg.rollout
    for name in ("ensemble_size", "num_elites", "hidden_size", "num_layers", "batch_size",
                 "max_holdout", "train_freq"):
        _require(getattr(m, name) > 0, f"model.{name}", getattr(m, name), "must be a positive integer")
    _require(
        m.num_elites <= m.ensemble_size, "model.num_elites", m.num_elites,
        f"must be <= model.ensemble_size={m.ensemble_size}",
    )
    _require(
        len(m.weight_decays) == m.num_layers + 1, "model.weight_decays", m.weight_decays,
        f"needs num_layers + 1 = {m.num_layers + 1} entries (hidden layers, then output)",
    )
    _require(0 < m.holdout_ratio < 1, "model.holdout_ratio", m.holdout_ratio, "must be in (0, 1)")
    _require(m.lr > 0, "model.lr", m.lr, "must be > 0")
    _require(m.patience >= 0, "model.patience", m.patience, "must be >= 0")
    _require(m.max_epochs >= 0, "model.max_epochs", m.max_epochs, "must be >= 0 (0 = no cap)")
    _require(m.devices >= 0, "model.devices", m.devices, "must be >= 0 (0 = automatic)")
    for name in ("hidden_size", "num_layers", "batch_size", "updates_per_step"):
        _require(getattr(s, name) > 0, f"sac.{name}", getattr(s, name), "must be a positive integer")
    _require(0 < s.gamma <= 1, "sac.gamma", s.gamma, "must be in (0, 1]")
    _require(0 < s.tau <= 1, "sac.tau", s.tau, "must be in (0, 1]")
    _require(s.lr > 0, "sac.lr", s.lr, "must be > 0")
    _require(s.init_alpha > 0, "sac.init_alpha", s.init_alpha, "must be > 0")
    d = cfg.dam
    _require(d.protocol in DAM_PROTOCOLS, "dam.protocol", d.protocol, f"must be one of {', '.join(DAM_PROTOCOLS)}")
    init_episodes, episodes_per_round = d.episode_counts()
    _require(episodes_per_round > 0, "dam.episodes_per_round", episodes_per_round, "must be a positive integer")
    for name in ("num_components", "rounds", "eval_every", "horizon", "num_sequences",
                 "num_particles", "cem_iterations", "cem_elites", "disc_hidden", "disc_steps", "disc_batch_size",
                 "disc_patience", "disc_check_every"):
        _require(getattr(d, name) > 0, f"dam.{name}", getattr(d, name), "must be a positive integer")
    _require(init_episodes > 0, "dam.init_episodes", init_episodes,
             "must be >= 1 (the models need data before the first round)")
    _require(d.disc_samples >= 0, "dam.disc_samples", d.disc_samples, "must be >= 0 (0 = a fresh sample per update)")
    _require(0 <= d.disc_holdout < 1, "dam.disc_holdout", d.disc_holdout, "must be in [0, 1)")
    _require(d.disc_weight_decay >= 0, "dam.disc_weight_decay", d.disc_weight_decay, "must be >= 0")
    _require(d.cem_elites <= d.num_sequences, "dam.cem_elites", d.cem_elites,
             f"must be <= dam.num_sequences={d.num_sequences}")
    for name, allowed in (("model", ("gaussian", "mdn")), ("objective", ("mle", "minvar")),
                          ("correction", ("none", "discriminator")), ("weight_mode", ("exp", "sigmoid")),
                          ("planner", ("rs", "cem"))):
        _require(getattr(d, name) in allowed, f"dam.{name}", getattr(d, name), f"must be one of {', '.join(allowed)}")
    _require(d.max_weight is None or d.max_weight > 0, "dam.max_weight", d.max_weight, "must be > 0 or None")
    p = cfg.pmac
    _require(0 < p.alpha < 1, "pmac.alpha", p.alpha, "must be in (0, 1)")
    _require(p.chunk_steps > 0, "pmac.chunk_steps", p.chunk_steps, "must be a positive integer (250 or 1000 in the paper)")
    _require(p.weights in ("paper", "tv"), "pmac.weights", p.weights, "must be one of paper, tv")
    _require(p.holdout in ("uniform", "weighted"), "pmac.holdout", p.holdout, "must be one of uniform, weighted")
    _require(p.tv_states > 0, "pmac.tv_states", p.tv_states, "must be a positive integer")
    _require(0 < p.tv_max_rate < 1, "pmac.tv_max_rate", p.tv_max_rate, "must be in (0, 1)")
    if cfg.algo == "pmac":
        _require(p.for_model or p.for_starts, "pmac.for_model", p.for_model,
                 "pmac.for_model and pmac.for_starts are both off (that is MBPO: use --algo mbpo)")
    e = cfg.memr
    _require(e.alpha >= 0, "memr.alpha", e.alpha, "must be >= 0 (0 = uniform starts, the control)")
    for name in ("beta_start", "beta_end"):
        _require(0 <= getattr(e, name) <= 1, f"memr.{name}", getattr(e, name), "must be in [0, 1]")
    for name in ("every", "psi_epochs", "psi_batch_size", "psi_hidden"):
        _require(getattr(e, name) > 0, f"memr.{name}", getattr(e, name), "must be a positive integer")
    _require(e.psi_lr > 0, "memr.psi_lr", e.psi_lr, "must be > 0")
    _require(e.is_norm in ("max", "mean"), "memr.is_norm", e.is_norm, "must be one of max, mean")
    if cfg.algo == "memr":
        _require(e.model_buffer_size >= cfg.rollout.batch_size, "memr.model_buffer_size", e.model_buffer_size,
                 f"must hold at least one segment (rollout.batch_size={cfg.rollout.batch_size} rows)")
    w = cfg.rew
    _require(w.weights in ("rew", "none"), "rew.weights", w.weights, "must be one of rew, none (PE-SAC)")
    for name in ("horizon", "samples_per_member", "meta_starts", "meta_batch", "hidden", "meta_every"):
        _require(getattr(w, name) > 0, f"rew.{name}", getattr(w, name), "must be a positive integer")
    for name in ("explore_scale", "inner_lr", "weight_lr", "corrupt_scale"):
        _require(getattr(w, name) > 0, f"rew.{name}", getattr(w, name), "must be > 0")
    _require(w.real_updates >= 0, "rew.real_updates", w.real_updates, "must be >= 0 (0 = real rows mixed in)")
    _require(0 <= w.corrupt_fraction <= 1, "rew.corrupt_fraction", w.corrupt_fraction, "must be in [0, 1]")
    if cfg.algo in ("rew", "pmac+rew"):
        members = m.num_elites if w.elites_only else m.ensemble_size
        _require(members * w.samples_per_member >= 2, "rew.samples_per_member", w.samples_per_member,
                 f"a transition set needs >= 2 samples for its spread (members x samples = {members} x "
                 f"{w.samples_per_member})")
        _require(cfg.init_steps >= w.horizon, "init_steps", cfg.init_steps,
                 f"must be >= rew.horizon={w.horizon} (the meta step replays real action sequences of that length)")
    if cfg.algo == "pmac+rew":
        _require(p.for_model or p.for_starts, "pmac.for_model", p.for_model,
                 "pmac.for_model and pmac.for_starts are both off (that is ReW: use --algo rew)")
    if cfg.algo == "dam":
        from mbrlax import envs  # late: envs imports gymnasium

        _require(cfg.reward is not None or envs.get_spec(cfg.env).reward is not None, "env", cfg.env,
                 "dam plans with a known reward function; envs that have one: IcyRoad-v0, Intersection-v0, the "
                 "MBBL envs (HopperMBBL-v0, ...), or give your env's with --reward module:function")
        scale = getattr(envs.mbbl.MBBL_ENVS.get(cfg.env), "action_scale", 1.0)
        _require(cfg.reward is not None or scale == 1.0, "env", cfg.env,
                 f"its known reward takes the agent's action in [-1, 1] (the env action is {scale:g} x it), but "
                 "dam plans in the env's own actions; give a reward of env actions with --reward module:function")
    a, b, x, y = r.schedule
    _require(
        len(r.schedule) == 4 and a < b and 1 <= x and 1 <= y, "rollout.schedule", r.schedule,
        "must be [a, b, x, y] with epochs a < b and horizons x, y >= 1",
    )
    for name in ("termination", "reward"):
        path = getattr(cfg, name)
        _require(path is None or len([p for p in path.split(":") if p]) == 2, name, path,
                 f"must be 'module:function', e.g. 'my_pkg.my_envs:{'is_done' if name == 'termination' else name}'")
    _require(r.batch_size > 0, "rollout.batch_size", r.batch_size, "must be a positive integer")
    _require(r.retain_epochs > 0, "rollout.retain_epochs", r.retain_epochs, "must be a positive integer")
    _require(0 <= r.real_ratio <= 1, "rollout.real_ratio", r.real_ratio, "must be in [0, 1]")
    return cfg
