"""The two stochastic environments of the DAM paper (shared/papers/dam.txt, Appendix C).

* ``IcyRoad-v0`` (:class:`IcyRoadEnv`): a car on an icy road that may swerve off it
  above a threshold speed -- multi-modal next-state distribution (Fig. 2, right).
* ``Intersection-v0`` (:class:`IntersectionEnv`): the agent drives into an
  intersection while an oncoming car turns left (across the agent's lane) or right
  with probability 1/2, unknown in advance (Fig. 2, left).

Both are plain Gymnasium envs with 3 discrete actions (0 = decelerate, 1 = keep
speed, 2 = accelerate) that truncate themselves after a fixed number of steps (5 /
25) and never terminate. Rewards are functions of the next observation only, so
the pure-``jnp`` planning rewards :func:`icyroad_reward` and
:func:`intersection_reward` (``fn(obs, action, next_obs) -> [B]``) reproduce the
env's own reward exactly: the env computes its reward with the same formula
(``_icyroad_reward`` / ``_intersection_reward`` with ``xp=numpy``) on the float32
observation it returns.

:func:`icyroad_value` and :func:`intersection_value` give each env's exact optimum
(and the value of uniformly random actions) by dynamic programming over the env's
own ``transition`` and ``reward_of``: 10 and 112 with the default constants.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

__all__ = [
    "INTERSECTION_ID",
    "ICYROAD_ID",
    "IcyRoadEnv",
    "IntersectionEnv",
    "icyroad_reward",
    "icyroad_step",
    "intersection_reward",
    "intersection_step",
    "icyroad_value",
    "intersection_value",
    "make_intersection_reward",
    "register_envs",
]

ICYROAD_ID = "IcyRoad-v0"
INTERSECTION_ID = "Intersection-v0"

DECELERATE, CRUISE, ACCELERATE = 0, 1, 2

# Eq. 20 constants.
ROAD_HALF_WIDTH = 1.0  # off road iff |y| > 1
OFF_ROAD_PENALTY = 6.0
SPEED_BONUS = 8.0
BONUS_SPEED = 2.0  # bonus iff xdot > 2
# Eq. 21 constants (defaults of IntersectionEnv).
COLLISION_RADIUS = 2.5
COLLISION_PENALTY = 10.0


def _action_sign(action: int) -> int:
    """-1 / 0 / +1 for decelerate / cruise / accelerate."""
    return int(action) - 1


# --------------------------------------------------------------------------- IcyRoad


def _icyroad_reward(next_obs, xp):
    """Eq. 20 on next states ``[..., 4]``: xdot-6 off road, xdot+8 fast on road, else xdot."""
    y, xdot = next_obs[..., 1], next_obs[..., 2]
    on_road_reward = xp.where(xdot > BONUS_SPEED, xdot + SPEED_BONUS, xdot)
    return xp.where(xp.abs(y) > ROAD_HALF_WIDTH, xdot - OFF_ROAD_PENALTY, on_road_reward)


def icyroad_reward(obs, action, next_obs):
    """IcyRoad reward Eq. 20 (pure jnp, jit-able): ``[B, 4]`` next states -> ``[B]``.

    Only ``next_obs`` is read (the reward of the state the action leads to).
    """
    return _icyroad_reward(jnp.asarray(next_obs), jnp)


def icyroad_step(
    state: np.ndarray,
    action: int,
    u: float,
    *,
    dt: float = 1.0,
    speed_threshold: float = 2.0,
    swerve_prob: float = 0.8,
    swerve_speed: float = 2.0,
) -> np.ndarray:
    """One IcyRoad transition ``(x, y, xdot, ydot) -> next`` given a uniform draw ``u`` in [0, 1).

    xdot changes by -1/0/+1 (floored at 0); a car not yet swerving (ydot == 0) whose new
    xdot exceeds ``speed_threshold`` swerves with probability ``swerve_prob``: ydot becomes
    -swerve_speed if u < p/2, +swerve_speed if p/2 <= u < p. Then positions += dt * velocities.
    """
    x, y, xdot, ydot = (float(v) for v in state)
    xdot = max(xdot + _action_sign(action), 0.0)
    if ydot == 0.0 and xdot > speed_threshold and u < swerve_prob:
        ydot = -swerve_speed if u < swerve_prob / 2 else swerve_speed
    return np.array([x + dt * xdot, y + dt * ydot, xdot, ydot])


class IcyRoadEnv(gymnasium.Env):
    """IcyRoad (DAM paper, Appendix C, Eq. 20).

    Observation ``s = (x, y, xdot, ydot)`` (float32); actions ``Discrete(3)``:
    0 = decelerate (xdot -= 1), 1 = cruise, 2 = accelerate (xdot += 1). Every
    episode starts at exactly (0, 0, 1, 0) and is truncated after ``episode_steps``
    (5) steps; it never terminates. The reward (Eq. 20) is computed from the next
    state: xdot'-6 if |y'| > 1 (off road), xdot'+8 if |y'| <= 1 and xdot' > 2 (high
    speed bonus), else xdot'.

    Choices where the paper is vague (all constructor arguments):

    * Euler step, velocities first: the action changes xdot, then x += dt*xdot' and
      y += dt*ydot' (semi-implicit Euler), ``dt = 1``. So an action's effect (and a
      swerve) shows in the very next state and its reward.
    * xdot is floored at 0 (decelerating at rest stays at rest): the road "extends
      in the +x direction" and reversing is not an action the paper describes.
    * Swerve: "above a threshold speed (xdot > 2) a high chance of swerving off the
      road in either direction". Each step whose new xdot exceeds
      ``speed_threshold`` (2), while the car is not already swerving (ydot == 0),
      it swerves with ``swerve_prob`` = 0.8 (our reading of "high chance"): ydot
      becomes -``swerve_speed`` or +``swerve_speed`` (2), each with probability
      1/2. From (2, 0, 2, 0) with accelerate, p(ydot' | s, a) therefore has atoms
      at -2, 0, +2 with masses 0.4, 0.2, 0.4 -- the bimodal target of Fig. 2.
      ``swerve_speed`` = 2 with dt = 1 puts a swerving car off road (|y'| = 2 > 1)
      in the same step, so the swerve costs the -6 penalty at once.
    * A swerve is permanent: ydot keeps its value (an icy road gives no grip back),
      the car keeps sliding away and every later step is off road. The risk is
      drawn anew each step the car is above the threshold and not yet swerving.
    * The reward thresholds of Eq. 20 (|y| > 1, xdot > 2) are fixed constants,
      independent of ``speed_threshold`` (which only drives the swerve).
    * ``reset(options={"state": s})`` starts from an arbitrary state ``s`` (used to
      probe p(s'|s, a), e.g. at Fig. 2's s = (2, 0, 2, 0)).

    With these constants the best expected return is 10 (accelerate once, then cruise
    at speed 2: no swerve risk; a swerve chance of 0.8 makes speed 3 not worth it) and
    uniformly random actions score 2.19: exact dynamic programming over this env,
    :func:`icyroad_value`.
    """

    metadata = {"render_modes": []}
    START_STATE = (0.0, 0.0, 1.0, 0.0)

    def __init__(
        self,
        dt: float = 1.0,
        speed_threshold: float = 2.0,
        swerve_prob: float = 0.8,
        swerve_speed: float = 2.0,
        episode_steps: int = 5,
        render_mode: str | None = None,
    ):
        if render_mode is not None:
            raise ValueError(f"IcyRoad has no rendering; got render_mode={render_mode!r}")
        if not 0.0 <= swerve_prob <= 1.0:
            raise ValueError(f"swerve_prob must be in [0, 1], got {swerve_prob}")
        self.dt = float(dt)
        self.speed_threshold = float(speed_threshold)
        self.swerve_prob = float(swerve_prob)
        self.swerve_speed = float(swerve_speed)
        self.episode_steps = int(episode_steps)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self._state = np.array(self.START_STATE)
        self._t = 0

    def _obs(self) -> np.ndarray:
        return self._state.astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        state = (options or {}).get("state", self.START_STATE)
        self._state = np.asarray(state, dtype=np.float64).reshape(4).copy()
        self._t = 0
        return self._obs(), {}

    def transition(self, state: np.ndarray, action: int, u: float) -> np.ndarray:
        """This env's transition (float64 state) for the uniform draw u (:func:`icyroad_step`)."""
        return icyroad_step(state, int(action), u, dt=self.dt, speed_threshold=self.speed_threshold,
                            swerve_prob=self.swerve_prob, swerve_speed=self.swerve_speed)

    def outcomes(self, state: np.ndarray, action: int) -> list[tuple[float, np.ndarray]]:
        """Every (probability, next state) of one step: u below p/2 swerves to -y, u in [p/2, p) to +y,
        u >= p does not swerve, so one draw from each interval gives the exact distribution."""
        p = self.swerve_prob
        return [(w, self.transition(state, action, u)) for w, u in ((p / 2, 0.0), (p / 2, p / 2), (1 - p, p)) if w > 0]

    def reward_of(self, state: np.ndarray) -> float:
        """Eq. 20 of the next state, as the env returns it (computed on the float32 observation)."""
        return float(_icyroad_reward(state.astype(np.float32)[None], np)[0])

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}: must be 0, 1 or 2")
        self._state = self.transition(self._state, int(action), float(self.np_random.random()))
        self._t += 1
        return self._obs(), self.reward_of(self._state), False, self._t >= self.episode_steps, {}


# ---------------------------------------------------------------------- Intersection


def _collision(next_obs, collision_radius, xp):
    """[distance between the two cars' centres < collision_radius] on states ``[..., 10]``."""
    dx = next_obs[..., 0] - next_obs[..., 5]
    dy = next_obs[..., 1] - next_obs[..., 6]
    return dx * dx + dy * dy < collision_radius * collision_radius


def _intersection_reward(next_obs, collision_radius, collision_penalty, xp):
    """Eq. 21 on next states ``[..., 10]``: agent ydot - penalty * [collision]."""
    collision = _collision(next_obs, collision_radius, xp)
    return next_obs[..., 3] - xp.where(collision, collision_penalty, 0.0).astype(next_obs.dtype)


def intersection_reward(obs, action, next_obs):
    """Intersection reward Eq. 21 (pure jnp, jit-able): ``[B, 10]`` next states -> ``[B]``.

    ``next_obs[:, 3] - 10 * [|agent centre - oncoming centre| < 2.5]``; only
    ``next_obs`` is read. Default env parameters (see :func:`make_intersection_reward`).
    """
    next_obs = jnp.asarray(next_obs)
    return _intersection_reward(next_obs, COLLISION_RADIUS, COLLISION_PENALTY, jnp)


def make_intersection_reward(
    collision_radius: float = COLLISION_RADIUS, collision_penalty: float = COLLISION_PENALTY
):
    """Eq. 21 reward ``fn(obs, action, next_obs) -> [B]`` for non-default env parameters."""

    def reward(obs, action, next_obs):
        next_obs = jnp.asarray(next_obs)
        return _intersection_reward(next_obs, collision_radius, collision_penalty, jnp)

    return reward


def intersection_step(
    state: np.ndarray,
    action: int,
    turn_left: bool,
    *,
    dt: float = 0.2,
    accel: float = 1.0,
    max_speed: float = 5.0,
    lane_offset: float = 1.5,
) -> np.ndarray:
    """One Intersection transition of the 10-dim state (agent then oncoming car).

    Agent: ydot += -accel/0/+accel, clipped to [0, max_speed], then y += dt * ydot.
    Oncoming car: position += dt * velocity; the step it crosses y = lane_offset
    (heading south, not yet turned) it turns 90 degrees in place: it is put back on
    that line, moved the overshoot along its new direction (+x for left, -x for
    right) and its velocity and heading are rotated.
    """
    ax, ay, avx, avy, ah, ox, oy, ovx, ovy, oh = (float(v) for v in state)
    avy = min(max(avy + _action_sign(action) * accel, 0.0), max_speed)
    ax, ay = ax + dt * avx, ay + dt * avy
    ox, oy = ox + dt * ovx, oy + dt * ovy
    if ovy < 0.0 and oy <= lane_offset:  # reaches the turn line this step
        side = 1.0 if turn_left else -1.0
        speed = -ovy
        ox, oy = ox + side * (lane_offset - oy), lane_offset
        ovx, ovy = side * speed, 0.0
        oh = 0.0 if turn_left else math.pi
    return np.array([ax, ay, avx, avy, ah, ox, oy, ovx, ovy, oh])


class IntersectionEnv(gymnasium.Env):
    """Intersection (DAM paper, Appendix C, Eq. 21, Fig. 2 left).

    Observation (float32, 10): agent (x, y, xdot, ydot, heading) then oncoming car
    (x, y, xdot, ydot, heading); headings in radians from +x (agent pi/2, oncoming
    -pi/2 before its turn, 0 after a left turn, pi after a right turn). Actions
    ``Discrete(3)``: 0 = decelerate (ydot -= accel), 1 = neither, 2 = accelerate
    (ydot += accel). Episodes are truncated after ``episode_steps`` (25) steps and
    never terminate. Reward (Eq. 21), from the next state: agent ydot' - 10 *
    [distance between the two cars' centres < ``collision_radius``].

    Choices where the paper is vague (all constructor arguments):

    * Roads: a north-south road (x = 0) crosses an east-west road (y = 0);
      right-hand traffic with lane centres ``lane_offset`` = 1.5 from the road
      axis. The agent drives north at x = +1.5, the oncoming car south at x = -1.5.
    * Start: agent at (1.5, -10) with ydot = 5, oncoming car at (-1.5, +10) with
      ydot = -5 ("velocity 5 / -5"): mirror images at ``start_distance`` = 10 from
      the centre, so both enter the intersection (|y| <= 3) at the same time
      (step 7). Semi-implicit Euler with ``dt`` = 0.2: 25 steps = 5 time units; with
      integer speeds positions move in multiples of 0.2 (-10 + 0.8 = -9.2; not exact in
      float32).
    * Turn: left or right with probability ``turn_left_prob`` = 1/2, drawn at
      reset from ``self.np_random`` and not observable until it happens (the
      observation is identical for both outcomes before it). The oncoming car
      keeps speed 5 and turns when it reaches y = +1.5 (its entry into the near
      lane of the crossing road): its velocity rotates by 90 degrees instantly
      (overshoot carried along the new direction). Right (west) leads away from
      the agent (closest distance 2*sqrt(2)*1.5 = 4.2). Left (east) runs along
      y = 1.5 across the agent's lane, reaching it at the same moment as an agent
      at constant speed 5: that agent collides for 4 steps (distance 2.1, 0.7,
      0.7, 2.1 < ``collision_radius`` = 2.5). Turning left at this near point
      (rather than into the far lane y = -1.5, where the agent would already be
      past) is what makes the paper's "entering at the same time" produce the
      conflict. The turn happens at step 9 and shows in the observation after it;
      the first collision of a full-speed agent is at step 10, so an agent that has
      slowed a little before the intersection can still react to the turn.
    * Speed: ``accel`` = 1 per step; the agent's speed is clipped to [0,
      ``max_speed``] with ``max_speed`` = 5, its start speed ("full speed"), so
      accelerating only regains speed after braking. With a higher cap an agent
      could race through before the left-turner and the dilemma would vanish.
      Returns (default parameters): full speed 125 if the car turns right and
      125 - 4*10 = 85 if it turns left (expected 105); braking for 5 steps then
      accelerating back avoids the collision for 100 either way; keeping speed 4
      steps and then stopping for good gives 30; always braking stops the car far
      from the intersection. The best expected return is 112 (106 left / 118
      right: slow down slightly before the intersection, then react to the turn),
      116 if the turn were known in advance, 74.6 for uniformly random actions:
      exact dynamic programming over this env, :func:`intersection_value`.
    * Collisions do not change the dynamics: the cars pass through each other and
      every step they overlap costs the penalty (Eq. 21 evaluated per step).
    * ``reset(options={"turn_left": bool})`` forces the turn (tests, analysis);
      ``info["collision"]`` reports the step's collision, ``info["turn_left"]``
      is deliberately not given.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        dt: float = 0.2,
        start_distance: float = 10.0,
        lane_offset: float = 1.5,
        speed: float = 5.0,
        accel: float = 1.0,
        max_speed: float = 5.0,
        collision_radius: float = COLLISION_RADIUS,
        collision_penalty: float = COLLISION_PENALTY,
        turn_left_prob: float = 0.5,
        episode_steps: int = 25,
        render_mode: str | None = None,
    ):
        if render_mode is not None:
            raise ValueError(f"Intersection has no rendering; got render_mode={render_mode!r}")
        if not 0.0 <= turn_left_prob <= 1.0:
            raise ValueError(f"turn_left_prob must be in [0, 1], got {turn_left_prob}")
        if not 0.0 < speed <= max_speed:
            raise ValueError(f"need 0 < speed <= max_speed, got {speed=}, {max_speed=}")
        self.dt = float(dt)
        self.start_distance = float(start_distance)
        self.lane_offset = float(lane_offset)
        self.speed = float(speed)
        self.accel = float(accel)
        self.max_speed = float(max_speed)
        self.collision_radius = float(collision_radius)
        self.collision_penalty = float(collision_penalty)
        self.turn_left_prob = float(turn_left_prob)
        self.episode_steps = int(episode_steps)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(10,), dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self._state = self.start_state()
        self._turn_left = False
        self._t = 0

    def start_state(self) -> np.ndarray:
        """The fixed initial state: agent south moving north, oncoming car north moving south."""
        d, lane, v = self.start_distance, self.lane_offset, self.speed
        agent = [lane, -d, 0.0, v, math.pi / 2]
        oncoming = [-lane, d, 0.0, -v, -math.pi / 2]
        return np.array(agent + oncoming)

    def _obs(self) -> np.ndarray:
        return self._state.astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        turn_left = bool(self.np_random.random() < self.turn_left_prob)
        self._turn_left = bool((options or {}).get("turn_left", turn_left))
        self._state = self.start_state()
        self._t = 0
        return self._obs(), {}

    def transition(self, state: np.ndarray, action: int, turn_left: bool) -> np.ndarray:
        """This env's transition (float64 state) given the hidden turn (:func:`intersection_step`)."""
        return intersection_step(state, int(action), turn_left, dt=self.dt, accel=self.accel,
                                 max_speed=self.max_speed, lane_offset=self.lane_offset)

    def reward_of(self, state: np.ndarray) -> float:
        """Eq. 21 of the next state, as the env returns it (computed on the float32 observation)."""
        obs = state.astype(np.float32)[None]
        return float(_intersection_reward(obs, self.collision_radius, self.collision_penalty, np)[0])

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}: must be 0, 1 or 2")
        self._state = self.transition(self._state, int(action), self._turn_left)
        self._t += 1
        obs = self._obs()
        collision = bool(_collision(obs, self.collision_radius, np))
        return obs, self.reward_of(self._state), False, self._t >= self.episode_steps, {"collision": collision}


# ------------------------------------------------------------- exact values (dynamic programming)

POLICIES = ("optimal", "random")


def _mean(values):
    return sum(values) / len(values)


def _aggregate(policy: str):
    """How a policy combines the values of the 3 actions: max (optimal) or mean (uniform random)."""
    if policy not in POLICIES:
        raise ValueError(f"invalid policy={policy!r}: must be one of {POLICIES}")
    return max if policy == "optimal" else _mean


def _key(t: int, state: np.ndarray) -> tuple:
    """Memo key: time and the state rounded (different action paths give float sums differing by ~1e-15)."""
    return (t, *np.round(state, 6).tolist())


def icyroad_value(env: "IcyRoadEnv | None" = None, policy: str = "optimal") -> float:
    """Exact expected return from the start state of `env` (default IcyRoad-v0's constants) under the
    optimal policy (expectimax) or uniformly random actions, by dynamic programming over the env's own
    transition, swerve probabilities and reward (`env.outcomes`, `env.reward_of`). The state is fully
    observed, so the optimum is over policies of the current state and time."""
    env = IcyRoadEnv() if env is None else env
    agg, memo = _aggregate(policy), {}

    def value(t, state):
        if t == env.episode_steps:
            return 0.0
        key = _key(t, state)
        if key not in memo:
            memo[key] = agg([sum(w * (env.reward_of(nxt) + value(t + 1, nxt)) for w, nxt in env.outcomes(state, a))
                             for a in range(3)])
        return memo[key]

    return value(0, np.array(env.START_STATE))


def intersection_value(env: "IntersectionEnv | None" = None, policy: str = "optimal") -> dict:
    """Exact expected return of Intersection (default constants) by dynamic programming over the env's
    own transition and reward. The turn is hidden: while both turns give the same observation the
    agent must act the same way in both (non-anticipative), and after the observations differ it
    knows the turn. Returns {"expected", "left", "right"} (the return of that policy given each
    turn), "perfect_information" (the optimum when the turn is known from the start; equal to
    "expected" for the random policy) and, for the optimal policy, "plan_left" / "plan_right": the
    actions it takes (a string of 0/1/2) in each case."""
    env = IntersectionEnv() if env is None else env
    optimal = _aggregate(policy) is max
    p, steps = env.turn_left_prob, env.episode_steps
    known, pooled = {}, {}

    def best(options):  # options, one per action: (expected value, values and plans given the turn...)
        if optimal:  # the action of the highest expected value, with its consequences
            return max(options, key=lambda o: o[0])
        return tuple(_mean([o[i] for o in options]) if isinstance(o0, float) else "" for i, o0 in enumerate(options[0]))

    def full(t, state, left):  # the turn is known: (value, plan from t)
        if t == steps:
            return 0.0, ""
        key = (*_key(t, state), left)
        if key not in known:
            options = []
            for a in range(3):
                nxt = env.transition(state, a, left)
                v, plan = full(t + 1, nxt, left)
                options.append((env.reward_of(nxt) + v, str(a) + plan))
            known[key] = best(options)
        return known[key]

    def hidden(t, state):  # same observation under both turns: (value, left value, right value, plans)
        if t == steps:
            return 0.0, 0.0, 0.0, "", ""
        key = _key(t, state)
        if key not in pooled:
            options = []
            for a in range(3):
                nl, nr = env.transition(state, a, True), env.transition(state, a, False)
                if np.array_equal(nl.astype(np.float32), nr.astype(np.float32)):
                    v, vl, vr, pl, pr = hidden(t + 1, nl)
                else:  # the turn shows in this observation: from here the agent knows it
                    (vl, pl), (vr, pr) = full(t + 1, nl, True), full(t + 1, nr, False)
                    v = p * vl + (1 - p) * vr
                rl, rr = env.reward_of(nl), env.reward_of(nr)
                options.append((p * rl + (1 - p) * rr + v, rl + vl, rr + vr, str(a) + pl, str(a) + pr))
            pooled[key] = best(options)
        return pooled[key]

    start = env.start_state()
    expected, left, right, plan_left, plan_right = hidden(0, start)
    out = {"expected": expected, "left": left, "right": right,
           "perfect_information": p * full(0, start, True)[0] + (1 - p) * full(0, start, False)[0]}
    if policy == "optimal":
        out.update(plan_left=plan_left, plan_right=plan_right)
    return out


def register_envs() -> None:
    """Register IcyRoad-v0 and Intersection-v0 with Gymnasium (idempotent).

    No ``max_episode_steps``: the envs truncate themselves (5 / 25 steps, or their
    ``episode_steps`` argument), so no TimeLimit wrapper is added.
    """
    for env_id, cls in ((ICYROAD_ID, "IcyRoadEnv"), (INTERSECTION_ID, "IntersectionEnv")):
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=f"mbrlax.envs.dam_envs:{cls}")
