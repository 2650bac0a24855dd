"""Difficulty from recorded outcomes: a Beta posterior of each task's success rate.

With several attempts per task (episodes sharing a task, each with a success flag or a
reward in [0, 1]), a task's success rate ``p`` gets the posterior
``Beta(alpha + successes, beta + failures)`` (rewards in [0, 1] count fractionally).

- **MoPPS** (Qu et al. 2025, "Can Prompt Difficulty be Online Predicted for Accelerating RL
  Finetuning of Reasoning Models?", Model Predictive Prompt Selection) models each prompt's
  success rate as a latent Beta variable and prefers prompts that are informative for
  group-based RL: neither always solved nor never. ``informative_probability`` is the
  posterior predictive probability that a group of ``G`` new attempts is mixed,
  ``1 - E[p^G] - E[(1-p)^G]``, in closed form; ``thompson_scores`` is the paper's posterior
  sampling variant (sample ``p``, prefer samples near a target rate).
- **DRIVE** (Zhu et al. 2025, "DRIVE: Data Curation Best Practices for Reinforcement Learning
  with Verifiable Reward in Competitive Code Generation") trains its second stage on a
  hard-focus curriculum: the hardest problems are kept throughout.
  ``posterior_difficulty`` is the posterior mean failure rate used to rank them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TaskOutcomes:
    """Per-task evidence: ``successes`` and ``failures`` (fractional for rewards), attempts."""

    successes: Any
    failures: Any
    attempts: Any  # attempts with a known outcome

    def posterior(self, alpha: float = 1.0, beta: float = 1.0) -> tuple[Any, Any]:
        return alpha + self.successes, beta + self.failures


def outcome_value(success: Any, reward: Any) -> Any:
    """Per-record outcome in [0, 1]: success as 1/0, else a reward within [0, 1], else NaN."""
    import numpy as np

    success = np.asarray(success, np.float64)
    reward = np.asarray(reward, np.float64)
    value = success.copy()
    use_reward = np.isnan(value) & (reward >= 0.0) & (reward <= 1.0)
    value[use_reward] = reward[use_reward]
    return value


def task_outcomes(task: Any, value: Any, n_tasks: int | None = None) -> TaskOutcomes:
    """Sum outcomes per task code (``value`` NaN = unknown, not counted)."""
    import numpy as np

    task = np.asarray(task, np.int64)
    n_tasks = int(task.max()) + 1 if n_tasks is None and task.size else (n_tasks or 0)
    known = ~np.isnan(value)
    succ = np.bincount(task[known], weights=value[known], minlength=n_tasks)
    att = np.bincount(task[known], minlength=n_tasks).astype(np.float64)
    return TaskOutcomes(succ, att - succ, att)


def _rising_ratio(a: Any, total: Any, group: int) -> Any:
    """``E[p^G]`` under ``Beta(a, total - a)``: the product of ``(a + k) / (total + k)``."""
    import numpy as np

    out = np.ones_like(np.asarray(a, np.float64))
    for k in range(group):
        out *= (a + k) / (total + k)
    return out


def informative_probability(alpha: Any, beta: Any, group: int = 8) -> Any:
    """Posterior predictive probability that ``group`` new attempts are neither all
    successes nor all failures: ``1 - E[p^G] - E[(1-p)^G]`` with ``p ~ Beta(alpha, beta)``.

    For group-relative RL (GRPO) only such groups carry a learning signal; MoPPS prefers
    these prompts.
    """
    total = alpha + beta
    return 1.0 - _rising_ratio(alpha, total, group) - _rising_ratio(beta, total, group)


def posterior_mean(alpha: Any, beta: Any) -> Any:
    return alpha / (alpha + beta)


def posterior_difficulty(alpha: Any, beta: Any) -> Any:
    """Posterior mean failure rate ``E[1 - p]`` (DRIVE's hardness ranking)."""
    return beta / (alpha + beta)


def thompson_scores(alpha: Any, beta: Any, rng: Any, target: float = 0.5) -> Any:
    """MoPPS posterior sampling: draw ``p ~ Beta`` per task and score ``-|p - target|``."""
    import numpy as np

    return -np.abs(rng.beta(alpha, beta) - target)
