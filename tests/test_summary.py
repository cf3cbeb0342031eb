"""mbrlax.run.summary against hand-computed values on hand-made metrics."""

import numpy as np

from mbrlax.run.summary import group_rows, median_interval_cost, run_total, run_values


def test_run_total_counts_a_restart_from_zero_as_new_time():
    # nan before the phase first runs; 20 -> 5 is a restart (a resume by older code): 5 s since then.
    assert run_total([np.nan, 10.0, 20.0, 5.0, 15.0]) == 10 + 10 + 5 + 10
    assert run_total([1.0, 2.0, 4.0]) == 4.0  # monotone: the last value


def test_run_values_and_group_rows():
    m = {"env_steps": np.array([1000.0, 2000.0, 3000.0, 4000.0]), "eval_return": np.array([1.0, 3.0, 5.0, 7.0]),
         "agent/updates": np.array([0.0, 20.0, 40.0, 60.0]), "time/wall": np.array([10.0, 30.0, 50.0, 80.0]),
         "time/agent_update": np.array([np.nan, 8.0, 2.0, 6.0])}
    v = run_values(m, [2000, 5000], (2000, 4000))
    assert v["eval_2000"] == 3.0 and np.isnan(v["eval_5000"])
    assert v["window_mean"] == 5.0 and v["agent_updates"] == 60.0
    assert v["s_per_1k_agent_update"] == (8 + 2 + 4) / 4 and v["s_per_1k_total"] == 80 / 4
    assert np.isnan(v["s_per_1k_rollout"])  # no such column
    # Intervals with updates cost 20, 20 and 30 s per 1000 steps (the first, 10 s, had none): median 20.
    assert v["s_per_1k_median"] == median_interval_cost(m) == 20.0
    short = run_values({k: c[:2] for k, c in m.items()}, [2000], (2000, 4000))
    assert np.isnan(short["window_mean"])  # did not reach the window's end
    row = group_rows({"a": [v, dict(v, eval_2000=5.0)]}, [2000, 5000], (2000, 4000))[0]
    assert (row["eval_2000"], row["eval_2000_n"]) == (4.0, 2)
    np.testing.assert_allclose(row["eval_2000_se"], np.std([3.0, 5.0], ddof=1) / np.sqrt(2))
    assert row["eval_5000_n"] == 0 and np.isnan(row["eval_5000"])


def test_median_interval_cost_divides_by_the_interval_length():
    m = {"env_steps": np.array([500.0, 1000.0, 3000.0]), "agent/updates": np.array([5.0, 10.0, 30.0]),
         "time/wall": np.array([2.0, 4.0, 14.0])}
    assert median_interval_cost(m) == 4.0  # 2 s per 500, 2 s per 500, 10 s per 2000 steps
    assert np.isnan(median_interval_cost({k: m[k] for k in ("env_steps", "time/wall")}))  # no agent/updates column
