"""Your own environments: the README's example through the CLI (`--env module:function`, --termination,
--reward; then eval, diagnose and resume import it again), `mbrlax.envs.register` in Python, and the
checks that refuse bad functions before any work."""

import csv
import json
import re
import sys
from pathlib import Path

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbrlax
from mbrlax import envs
from mbrlax.algos.mpc import capacity
from mbrlax.api import _restore, prepare_env
from mbrlax.cli import main
from mbrlax.config import ConfigError, preset
from mbrlax.diagnose import diagnose_model
from mbrlax.envs import dam_envs, termination
from mbrlax.envs.checks import check_functions
from mbrlax.run.metrics import read_metrics

from test_dyna import TINY, TINY_FLAGS

README = Path(__file__).resolve().parents[1] / "README.md"
ENV_FLAGS = ["--env", "my_envs:make_env", "--termination", "my_envs:is_done", "--reward", "my_envs:reward"]


def readme_example() -> str:
    """The module of the README's "Your own environment" section."""
    section = README.read_text().split("## Your own environment", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def forget(module: str) -> None:
    """As in a new process: the module is not imported and none of its ids is registered."""
    sys.modules.pop(module, None)
    for env_id in [k for k in envs._REGISTERED if k.startswith(module + ":")]:
        del envs._REGISTERED[env_id]


def test_readme_example_trains_with_mbpo_and_is_imported_again_from_its_config(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_envs.py").write_text(readme_example())
    monkeypatch.chdir(tmp_path)  # as the README says: run from the directory holding my_envs.py
    out = tmp_path / "run"
    main(["train", *TINY_FLAGS, "--total-steps", "200", *ENV_FLAGS, "--out", str(out)])
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["env"], cfg["termination"], cfg["reward"]) == ("my_envs:make_env", "my_envs:is_done", "my_envs:reward")
    m = read_metrics(out)
    np.testing.assert_array_equal(m["env_steps"], [100, 200])
    assert np.isfinite(m["model/holdout_mse"][1])

    forget("my_envs")
    _, state, *_ = _restore(out)  # imports my_envs again, from config.json
    import my_envs

    # Model rollouts were scored by the known reward and stopped by the termination function.
    n = int(state.imagined.size)
    d = jax.tree.map(lambda a: np.asarray(a[:n]), state.imagined.data)
    assert n > 0 and d.done.sum() > 0, (n, d.done.sum())
    np.testing.assert_allclose(d.reward, my_envs.reward(d.obs, d.action, d.next_obs), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(d.done, np.asarray(my_envs.is_done(d.obs, d.action, d.next_obs), np.float32))

    forget("my_envs")
    main(["eval", str(out), "--episodes", "2"])
    assert "eval_return" in capsys.readouterr().out

    # mbrlax diagnose: the model of step 100 on the 100 real rows after it, as CSV and PNG.
    forget("my_envs")
    main(["diagnose", str(out), "--horizon", "5"])
    assert "held-out: 100 real transitions (env steps 100-199)" in capsys.readouterr().out
    with open(out / "diagnose.csv") as f:
        table = list(csv.DictReader(f))
    expected = diagnose_model(state.model, state.real, 100, 200, 5)
    hstep = [float(r["value"]) for r in table if r["quantity"] == "hstep_mse"]
    np.testing.assert_allclose(hstep, expected["hstep_mse"], rtol=1e-6)
    mse = {r["output"]: float(r["value"]) for r in table if r["quantity"] == "one_step_mse"}
    assert list(mse) == ["reward", "next_obs[0]", "next_obs[1]", "all"]
    np.testing.assert_allclose(list(mse.values())[:3], expected["mse"], rtol=1e-6)
    assert len(table) == 1 + 3 * 4 + 5 and all(np.isfinite(float(r["value"])) for r in table)
    assert (out / "diagnose.png").stat().st_size > 10_000
    forget("my_envs")
    main(["resume", str(out)])  # finished: checks the functions again and has nothing to do
    assert "env_steps=200" in capsys.readouterr().out


def test_registered_env_works_in_train_resume_and_eval(tmp_path, monkeypatch):
    (tmp_path / "point_envs.py").write_text(readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    import point_envs

    envs.register("PointMass-v0", point_envs.make_env, point_envs.is_done, point_envs.reward)
    assert envs.termination_fn("PointMass-v0") is point_envs.is_done
    assert envs.reward_fn("PointMass-v0") is point_envs.reward
    cfg = preset("PointMass-v0", "sac", **{**TINY, "total_steps": 300, "out": str(tmp_path / "run")})
    mbrlax.train(cfg, stop_at=200)
    run = mbrlax.resume(cfg.out)
    np.testing.assert_array_equal(read_metrics(cfg.out)["env_steps"], [100, 200, 300])
    assert int(run.state.real.size) == 300
    mean, _ = mbrlax.load(cfg.out).evaluate(episodes=2)
    assert np.isfinite(mean) and mean <= 0  # the reward is never positive


BAD = '''

def make_env_without_limit():
    return PointMass()


def make_space():
    return gym.spaces.Box(0.0, 1.0)


def done_with_python_if(obs, action, next_obs):
    if next_obs[0, 0] > 2.0:
        return jnp.ones(len(obs), bool)
    return jnp.zeros(len(obs), bool)


def done_with_wrong_shape(obs, action, next_obs):
    return jnp.abs(next_obs[:, :1]) > 2.0


def done_as_float(obs, action, next_obs):
    return (jnp.abs(next_obs[:, 0]) > 2.0).astype(jnp.float32)


def done_too_early(obs, action, next_obs):
    return jnp.abs(next_obs[:, 0]) > 1.5


def reward_without_force_cost(obs, action, next_obs):
    return -next_obs[:, 0] ** 2
'''


@pytest.mark.parametrize("flags, expected", [
    (["--termination", "bad_envs:done_with_python_if"], r"done_with_python_if fails under jax.jit.*jnp.where"),
    (["--termination", "bad_envs:done_with_wrong_shape"], r"returned bool \[500, 1\] .* must return bool \[N\]"),
    (["--termination", "bad_envs:done_as_float"], r"returned float32 \[500\] .* must return bool \[N\]"),
    (["--termination", "bad_envs:done_too_early"],
     r"done_too_early disagrees with the env's own `terminated` on \d+ of 500 .* env terminated=False"),
    (["--reward", "bad_envs:reward_without_force_cost"], r"disagrees with the env's reward on \d+ of 500"),
    (["--termination", "bad_envs:is_dne"], r"has no attribute 'is_dne'\. Did you mean: is_done"),
    (["--termination", "no_such_module:is_done"], r"importing module 'no_such_module' failed"),
    (["--termination", "is_done"], r"invalid termination='is_done': must be 'module:function'"),
    (["--env", "bad_envs:make_env_without_limit"], r"no time limit.*wrappers.TimeLimit"),
    (["--env", "bad_envs:make_space"], r"returned a Box, not a gymnasium.Env"),
    (["--env", "InvertedPendulum-v5", "--termination", "bad_envs:is_done"], r"preset with its own functions"),
])
def test_bad_env_or_functions_refused_before_work(tmp_path, monkeypatch, capsys, flags, expected):
    (tmp_path / "bad_envs.py").write_text(readme_example() + BAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "never"
    env = [] if "--env" in flags else ["--env", "bad_envs:make_env"]
    with pytest.raises(SystemExit) as e:
        main(["train", *env, *flags, "--out", str(out)])
    assert e.value.code == 2
    assert re.search(expected, capsys.readouterr().err), expected
    assert not out.exists()


def test_checks_on_a_mujoco_env():
    make = lambda **kw: gymnasium.make("InvertedPendulum-v5", **kw)
    envs.register("MyPendulum-v0", make, termination.inverted_pendulum)
    check_functions("MyPendulum-v0")  # the preset's rule agrees with MuJoCo's own `terminated`
    envs.register("MyPendulum-v0", make, lambda obs, action, next_obs: jnp.abs(next_obs[:, 1]) > 0.3)
    with pytest.raises(ConfigError, match=r"disagrees .* env terminated=True, function returned False"):
        check_functions("MyPendulum-v0")


def test_custom_env_for_dam(tmp_path):
    make = lambda: gymnasium.wrappers.TimeLimit(gymnasium.make("IcyRoad-v0"), max_episode_steps=5)
    envs.register("MyIcyRoad-v0", make, termination.never, dam_envs.icyroad_reward)
    cfg = preset("MyIcyRoad-v0", "dam", out=str(tmp_path / "run"))
    prepare_env(cfg)  # the reward agrees with the env's on the env's own (discrete) actions
    init_episodes, per_round = cfg.dam.episode_counts()
    episodes = init_episodes + cfg.dam.rounds * per_round
    assert capacity(cfg) == (5 * episodes, episodes)  # DAM's arrays, sized by the env's TimeLimit
    envs.register("MyIcyRoad-v0", make, termination.never, lambda obs, action, next_obs: next_obs[:, 2])
    with pytest.raises(ConfigError, match="disagrees with the env's reward"):
        prepare_env(cfg)


def test_register_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="mbrlax preset"):
        envs.register("Hopper-v5", lambda: None)
    with pytest.raises(ConfigError, match="termination_fn.*must be a function"):
        envs.register("X-v0", lambda: None, termination_fn="my:fn")
    with pytest.raises(envs.UnknownEnvError, match="module:function"):
        envs.get_spec("NoSuchEnv-v0")
