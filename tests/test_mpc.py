"""DAM loop (algos/mpc.py): learning on IcyRoad, run directory, resume after kill -9, CLI flags, bad input."""

import json
from dataclasses import replace

import numpy as np
import pytest

import mbrlax
from mbrlax import envs
from mbrlax.cli import main
from mbrlax.config import ConfigError, preset, validate
from mbrlax.run.metrics import read_metrics

from conftest import kill_9_during_training

SMALL_FLAGS = ["--dam.num-sequences", "100", "--dam.num-particles", "5", "--dam.disc-steps", "300",
               "--dam.init-episodes", "3", "--dam.episodes-per-round", "2", "--eval-episodes", "5",
               "--model.max-epochs", "150", "--no-progress"]


def small(tmp_path, name="run", **dam):
    cfg = preset("IcyRoad-v0", "dam", out=str(tmp_path / name), progress=False, eval_episodes=5)
    d = dict(num_sequences=100, num_particles=5, disc_steps=300, init_episodes=3, episodes_per_round=2)
    return replace(cfg, model=replace(cfg.model, max_epochs=150), dam=replace(cfg.dam, **{**d, **dam}))


def random_policy_return(episodes=400):
    env = envs.make("IcyRoad-v0", seed=123)
    total = 0.0
    for _ in range(episodes):
        env.reset()
        done = False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total, done = total + r, term or trunc
    return total / episodes


@pytest.mark.slow
def test_dam_on_icyroad_beats_random_policy(tmp_path):
    """DAM (MDN, minimum-variance objective, discriminator-corrected planning), 2 rounds, 2 seeds.

    The best IcyRoad policy holds speed 2 (return 10; faster risks a swerve). Models are
    refit from scratch on 25-75 transitions every round, so single rounds and seeds vary a
    lot (Table 1's standard errors; of seeds 0-3, three reach >= 9 in some round). A mean
    of >= 9 over 10 eval episodes is out of reach for a random policy (about 2), so the
    test asserts that the planner finds the near-optimal policy in some round of 2 seeds.
    """
    random_return = random_policy_return()  # about 2: crawling speeds and frequent swerves
    evals = []
    for seed in (0, 1):
        cfg = preset("IcyRoad-v0", "dam", out=str(tmp_path / f"run{seed}"), progress=False, eval_episodes=10,
                     seed=seed)
        cfg = replace(cfg, dam=replace(cfg.dam, model="mdn", objective="minvar", correction="discriminator",
                                       weight_mode="sigmoid", protocol="rich", rounds=2))
        m = read_metrics(mbrlax.train(cfg).run_dir)
        np.testing.assert_array_equal(m["round"], [0, 1, 2])
        np.testing.assert_array_equal(m["env_steps"], [25, 50, 75])  # 5 episodes of 5 steps per round
        assert np.all(np.isfinite(m["disc/loss"])) and np.all(np.isfinite(m["model/train_loss"]))
        evals.append(m["eval_return"])
    assert random_return < 3.0
    assert np.max(evals) >= 9.0, (evals, random_return)


def test_dam_resume_after_kill_9_matches_uninterrupted_run(tmp_path):
    flags = ["--algo", "dam", "--env", "IcyRoad-v0", "--rounds", "3", "--correction", "discriminator", *SMALL_FLAGS]
    out = tmp_path / "killed"
    kill_9_during_training(flags, out, rows=2, column="round")
    resumed = mbrlax.resume(out)
    main(["train", *flags, "--out", str(tmp_path / "straight")])
    a, b = read_metrics(out), read_metrics(tmp_path / "straight")
    np.testing.assert_array_equal(a["round"], [0, 1, 2, 3])  # no gap, no duplicate
    np.testing.assert_array_equal(a["env_steps"], b["env_steps"])
    np.testing.assert_allclose(a["eval_return"], b["eval_return"])  # rounds are seeded: same run
    assert int(resumed.state.size) == 45


def test_cli_flags_and_saved_planner(tmp_path):
    out = tmp_path / "cli"
    i = SMALL_FLAGS.index("--dam.num-particles")
    flags = SMALL_FLAGS[:i] + SMALL_FLAGS[i + 2:]  # the particles given below, by their alias
    main(["train", "--algo", "dam", "--env", "IcyRoad-v0", "--model", "mdn", "--objective", "minvar",
          "--correction", "discriminator", "--rounds", "1", "--seed", "3", "--dam.particles", "1", *flags,
          "--out", str(out)])
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["algo"], cfg["seed"]) == ("dam", 3)
    assert {k: cfg["dam"][k] for k in ("model", "objective", "correction", "rounds", "num_particles")} == {
        "model": "mdn", "objective": "minvar", "correction": "discriminator", "rounds": 1, "num_particles": 1}
    m = read_metrics(out)  # Algorithm 2's held-out diagnostics and the logits the planner sees
    for col in ("disc/holdout_accuracy", "disc/real_logit_mean", "disc/model_logit_std", "disc/plan_logit_mean",
                "disc/plan_logit_std", "model/sample_mae"):
        assert np.all(np.isfinite(m[col])), col
    assert np.all(m["disc/steps"] <= 300)
    obs = np.array([0.0, 0.0, 1.0, 0.0], np.float32)
    first = [int(mbrlax.load(out).act(obs)) for _ in range(2)]
    assert first[0] == first[1] and first[0] in (0, 1, 2)  # a fresh load replays the same actions
    mean, _ = mbrlax.load(out).evaluate(episodes=2)
    assert np.isfinite(mean)


def test_dam_protocols_and_defaults():
    """paper (the presets' default): Algorithm 3's one planner episode per round after one random episode;
    --dam.protocol rich switches both counts; explicitly given counts are kept."""
    import tyro

    from mbrlax.config import TrainConfig
    from mbrlax.algos.mpc import capacity

    cfg = preset("IcyRoad-v0", "dam")
    d = cfg.dam
    assert (d.protocol, d.episode_counts(), d.weight_mode) == ("paper", (1, 1), "exp")
    assert capacity(cfg) == (5 * 11, 11)
    parse = lambda *flags: tyro.cli(TrainConfig, default=cfg, args=list(flags)).dam
    assert parse("--dam.protocol", "rich").episode_counts() == (5, 5)
    rich3 = parse("--dam.protocol", "rich", "--dam.episodes-per-round", "3")
    assert rich3.episode_counts() == (5, 3)
    assert replace(rich3, protocol="paper").episode_counts() == (1, 3)  # an explicit count is kept
    assert json.loads(cfg.to_json())["dam"]["init_episodes"] is None  # None = the protocol's, on resume too
    with pytest.raises(ConfigError, match="dam.protocol"):
        validate(replace(cfg, dam=replace(d, protocol="lavish")))
    with pytest.raises(ConfigError, match="dam.init_episodes"):
        validate(replace(cfg, dam=replace(d, init_episodes=0)))


def test_planner_refuses_to_act_when_every_value_is_nan(tmp_path):
    import jax
    import jax.numpy as jnp

    from mbrlax.algos.dyna import NonFiniteError
    from mbrlax.algos.mpc import DAM

    dam = DAM(small(tmp_path))
    state = dam.init_state()
    obs = np.array([0.0, 0.0, 1.0, 0.0], np.float32)
    assert int(dam.act(state, obs, jax.random.key(0))) in (0, 1, 2)
    broken = state.replace(model=state.model.replace(
        params=jax.tree_util.tree_map(lambda p: jnp.full_like(p, jnp.nan), state.model.params)))
    with pytest.raises(NonFiniteError, match="planner"):
        dam.act(broken, obs, jax.random.key(0))


def test_dam_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--algo", "dam", "--env", "Hopper-v5", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "known reward function" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # its known reward takes agent actions, dam plans in env actions (+-0.4)
        main(["train", "--algo", "dam", "--env", "SlimHumanoidMBBL-v0", "--out", str(tmp_path / "y")])
    assert e.value.code == 2
    assert "the env action is 0.4 x it" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="dam.num_sequences"):
        mbrlax.train(replace(small(tmp_path), dam=replace(small(tmp_path).dam, num_sequences=0)))
    with pytest.raises(ConfigError, match="dam.disc_holdout"):
        mbrlax.train(replace(small(tmp_path), dam=replace(small(tmp_path).dam, disc_holdout=1.0)))
    with pytest.raises(ConfigError, match="dam.cem_elites"):
        mbrlax.train(replace(small(tmp_path), dam=replace(small(tmp_path).dam, planner="cem", cem_elites=500)))
    assert not (tmp_path / "run").exists()  # nothing started
