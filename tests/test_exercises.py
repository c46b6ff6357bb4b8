"""The exercise checkers: each accepts the right answer and names each typical mistake with its own hint.

The answers below are written here, independently of the checkers' own versions: the MAO update with an
explicit loop over tasks in numpy, each mistake as a participant would write it.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from mao_lab.exercises import (
    MISTAKES,
    Feedback,
    check_mao_update,
    explorer,
    landscape,
    multimnist,
    quickstart,
    regression,
    workshop,
)
from mao_lab.exercises._judges import imbalance_by_hand

# -- MAO's update, written as participants would ---------------------------------------------------------


def numpy_loop_answer(grads, exp_avg, exp_avg_sq, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """The right answer, one task at a time in numpy (nothing shared with the checker's code)."""
    b1, b2 = betas
    g, m, v = grads.numpy(), exp_avg.numpy().copy(), exp_avg_sq.numpy().copy()
    total = np.zeros(g.shape[1:])
    for k in range(g.shape[0]):
        m[k] = b1 * m[k] + (1 - b1) * g[k]
        v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
        total += (m[k] / (1 - b1**step)) / (np.sqrt(v[k] / (1 - b2**step)) + eps)
    return torch.from_numpy(lr * total), torch.from_numpy(m), torch.from_numpy(v)


def in_place_answer(grads, exp_avg, exp_avg_sq, step, *, lr, betas, eps):
    """Right too: torch.optim style, moments updated in place, float32 arithmetic."""
    b1, b2 = betas
    grads, exp_avg, exp_avg_sq = grads.float(), exp_avg.float(), exp_avg_sq.float()
    exp_avg.lerp_(grads, 1 - b1)
    exp_avg_sq.mul_(b2).addcmul_(grads, grads, value=1 - b2)
    denom = (exp_avg_sq / (1 - b2**step)).sqrt().add_(eps)
    return (lr / (1 - b1**step)) * (exp_avg / denom).sum(dim=0), exp_avg, exp_avg_sq


def no_bias_correction(grads, m, v, step, *, lr, betas, eps):
    m = betas[0] * m + (1 - betas[0]) * grads
    v = betas[1] * v + (1 - betas[1]) * grads.square()
    return lr * torch.sum(m / (torch.sqrt(v) + eps), dim=0), m, v


def only_first_moment_corrected(grads, m, v, step, *, lr, betas, eps):
    m = betas[0] * m + (1 - betas[0]) * grads
    v = betas[1] * v + (1 - betas[1]) * grads.square()
    return lr * torch.sum(m / (1 - betas[0] ** step) / (torch.sqrt(v) + eps), dim=0), m, v


def one_shared_second_moment(grads, m, v, step, *, lr, betas, eps):
    m = betas[0] * m + (1 - betas[0]) * grads
    shared = betas[1] * v[0] + (1 - betas[1]) * (grads**2).sum(dim=0)  # one v for all tasks
    v_hat = shared / (1 - betas[1] ** step)
    update = lr * sum(m[k] / (1 - betas[0] ** step) / (v_hat.sqrt() + eps) for k in range(len(grads)))
    return update, m, shared.unsqueeze(0).repeat(len(grads), *[1] * shared.dim())


def normalises_the_sum(grads, m, v, step, *, lr, betas, eps):
    g = grads.sum(0, keepdim=True)  # tasks added first: Adam on the summed loss
    m = betas[0] * m[:1] + (1 - betas[0]) * g
    v = betas[1] * v[:1] + (1 - betas[1]) * g**2
    update = lr * (m / (1 - betas[0] ** step)) / ((v / (1 - betas[1] ** step)).sqrt() + eps)
    return update[0], m.expand_as(grads), v.expand_as(grads)


def eps_inside_the_root(grads, m, v, step, *, lr, betas, eps):
    m = betas[0] * m + (1 - betas[0]) * grads
    v = betas[1] * v + (1 - betas[1]) * grads**2
    m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
    return lr * (m_hat / torch.sqrt(v_hat + eps)).sum(0), m, v


def betas_swapped(grads, m, v, step, *, lr, betas, eps):
    beta2, beta1 = betas  # the wrong way round
    m = beta1 * m + (1 - beta1) * grads
    v = beta2 * v + (1 - beta2) * grads**2
    m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
    return lr * (m_hat / (v_hat.sqrt() + eps)).sum(0), m, v


def forgot_the_sum(grads, m, v, step, *, lr, betas, eps):
    m = betas[0] * m + (1 - betas[0]) * grads
    v = betas[1] * v + (1 - betas[1]) * grads**2
    m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
    return lr * m_hat / (v_hat.sqrt() + eps), m, v


def averaged_tasks(grads, m, v, step, *, lr, betas, eps):
    m = betas[0] * m + (1 - betas[0]) * grads
    v = betas[1] * v + (1 - betas[1]) * grads**2
    m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
    return lr * (m_hat / (v_hat.sqrt() + eps)).mean(0), m, v


def flipped_sign(grads, m, v, step, *, lr, betas, eps):
    update, m, v = numpy_loop_answer(grads, m, v, step, lr=lr, betas=betas, eps=eps)
    return -update, m, v


MISTAKEN_ANSWERS = {
    "no_bias_correction": no_bias_correction,
    "half_bias_correction": only_first_moment_corrected,
    "shared_second_moment": one_shared_second_moment,
    "summed_gradient": normalises_the_sum,
    "eps_inside_sqrt": eps_inside_the_root,
    "swapped_betas": betas_swapped,
    "missing_sum": forgot_the_sum,
    "mean_over_tasks": averaged_tasks,
    "wrong_sign": flipped_sign,
}


@pytest.mark.parametrize("answer", [numpy_loop_answer, in_place_answer], ids=["numpy_loop", "in_place_float32"])
def test_the_mao_update_checker_accepts_right_answers(answer) -> None:
    feedback = check_mao_update(answer)
    assert feedback.correct, feedback.text()
    assert feedback.mistake is None


def test_the_shown_solution_passes_its_own_checker() -> None:
    code = re.search(r"```python\n(.*?)```", workshop.q1.answer, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    assert workshop.q1.check(namespace["mao_update"]).correct


@pytest.mark.parametrize("mistake", sorted(MISTAKEN_ANSWERS))
def test_each_typical_mistake_gets_its_own_hint(mistake: str) -> None:
    feedback = check_mao_update(MISTAKEN_ANSWERS[mistake])
    assert feedback.status == "incorrect"
    assert feedback.mistake == mistake, feedback.text()
    assert feedback.hint == MISTAKES[mistake].hint and feedback.hint


def test_the_hints_are_all_different() -> None:
    hints = [m.hint for m in MISTAKES.values()]
    assert len(set(hints)) == len(hints)


def test_an_unknown_mistake_is_reported_as_such_with_the_step() -> None:
    def halved(grads, m, v, step, *, lr, betas, eps):
        update, m, v = numpy_loop_answer(grads, m, v, step, lr=lr, betas=betas, eps=eps)
        return update * (0.5 if step == 3 else 1.0), m, v

    feedback = check_mao_update(halved)
    assert feedback.mistake == "unrecognised" and "step 3" in feedback.message


def test_unfinished_or_broken_answers_do_not_raise() -> None:
    def template(grads, exp_avg, exp_avg_sq, step, *, lr, betas, eps):
        raise NotImplementedError

    def returns_nothing(grads, exp_avg, exp_avg_sq, step, *, lr, betas, eps):
        pass

    def crashes(grads, exp_avg, exp_avg_sq, step, *, lr, betas, eps):
        return grads @ grads, exp_avg, exp_avg_sq  # 3-d matmul of mismatched shapes

    assert check_mao_update(template).status == "incomplete"
    assert check_mao_update(returns_nothing).status == "incomplete"
    assert workshop.q1.check(None).status == "incomplete"
    crashed = check_mao_update(crashes)
    assert crashed.mistake == "raised" and "RuntimeError" in crashed.message
    assert (
        check_mao_update(numpy_loop_answer(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1), 1)).mistake
        == "not_a_function"
    )


def test_feedback_renders_in_a_notebook() -> None:
    feedback = check_mao_update(no_bias_correction)
    assert "Hint" in feedback._repr_html_() and "mao-feedback-incorrect" in feedback._repr_html_()
    assert isinstance(feedback, Feedback)


# -- predict / change / explain: tables whose truth is known by construction -------------------------------


def ownership_table(shares: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    """``shares[run][layer][task]`` -> the notebooks' ownership layout, with the imbalance index computed here."""
    rows = []
    for run, layers in shares.items():
        for layer, by_task in layers.items():
            s = np.array(list(by_task.values()))
            imbalance = 1 + (s * np.log(s)).sum() / math.log(len(s))
            rows += [
                {"run": run, "layer": layer, "task": t, "share": v, "imbalance": imbalance} for t, v in by_task.items()
            ]
    return pd.DataFrame(rows)


OWNERSHIP = ownership_table(
    {
        "sum": {
            "trunk.0": {"task0": 0.1, "task1": 0.2, "task2": 0.7},
            "trunk.6": {"task0": 0.6, "task1": 0.3, "task2": 0.1},
        },
        "gradnorm": {
            "trunk.0": {"task0": 0.1, "task1": 0.1, "task2": 0.8},
            "trunk.6": {"task0": 0.34, "task1": 0.33, "task2": 0.33},
        },
    }
)


def test_layer_owner_reads_the_table() -> None:
    assert regression.q1.check("task2", OWNERSHIP).correct
    assert regression.q1.check(2, OWNERSHIP).correct  # a task index names the same task
    wrong = regression.q1.check("task0", OWNERSHIP)
    assert wrong.mistake == "wrong_choice" and wrong.hint
    assert regression.q1.check("task9", OWNERSHIP).mistake == "not_a_choice"
    assert regression.q1.check("task0", OWNERSHIP, "sum", "trunk.6").correct
    with pytest.raises(ValueError, match="no run 'io'"):
        regression.q1.check("task0", OWNERSHIP, "io")


def test_gradnorms_balanced_layer_and_the_change_of_sigma() -> None:
    assert regression.q3.check("trunk.6", OWNERSHIP).correct
    assert not regression.q3.check("trunk.0", OWNERSHIP).correct
    after = ownership_table({"sum": {"trunk.0": {"task0": 0.3, "task1": 0.33, "task2": 0.37}}})
    assert regression.q2.check("smaller", OWNERSHIP, after).correct
    assert regression.q2.check("larger", after, OWNERSHIP).correct
    assert regression.q2.check("larger", OWNERSHIP, after).mistake == "wrong_choice"


def test_least_served_task_averages_the_seeds() -> None:
    table = ownership_table(
        {
            "sum-seed0": {"trunk.0": {"left": 0.5, "right": 0.4, "reconstruct": 0.1}},
            "sum-seed1": {"trunk.0": {"left": 0.3, "right": 0.6, "reconstruct": 0.1}},
            "mao-seed0": {"trunk.0": {"left": 0.5, "right": 0.45, "reconstruct": 0.05}},
        }
    )
    assert multimnist.q1.check("reconstruct", table).correct
    assert multimnist.q1.check("left", table).mistake == "wrong_choice"
    assert multimnist.q2.check("few steps").correct  # a thought experiment: any answer reveals the reasoning


def test_worst_final_task_uses_the_last_step() -> None:
    curves = pd.DataFrame(
        {
            "method": ["Adam on the sum"] * 4 + ["MAO"] * 2,
            "step": [10, 10, 20, 20, 20, 20],
            "task": ["task0 (sigma=1)", "task1 (sigma=100)"] * 3,
            "normalised_test_mse": [0.1, 0.9, 0.8, 0.2, 0.1, 0.1],  # at step 10 task1 is worse, at 20 task0
        }
    )
    assert quickstart.q1.check("task0", curves).correct
    assert quickstart.q1.check("task1", curves).mistake == "wrong_choice"
    renamed = curves.rename(columns={"normalised_test_mse": "normalised_test_loss"})  # the notebook's newer name
    assert quickstart.q1.check("task0", renamed).correct
    with pytest.raises(ValueError, match="lacks the column"):
        quickstart.q1.check("task0", curves.drop(columns="normalised_test_mse"))


def test_steadiest_method_and_most_imbalanced() -> None:
    gaps = pd.DataFrame({"method": ["mao", "mean"], "max_gap": [1e-12, 0.4]})
    assert landscape.q1.check("mao", gaps).correct and not landscape.q1.check("mean", gaps).correct
    balance = pd.DataFrame(
        {
            "run": ["sum", "sum", "sum", "mao", "mao", "mao"],
            "layer": ["(all shared)", "trunk.0", "trunk.2", "(all shared)", "trunk.0", "trunk.2"],
            "imbalance": [0.6, 0.5, 0.7, 0.05, 0.04, 0.06],
        }
    )
    assert explorer.q2.check("sum", balance).correct and not explorer.q2.check("mao", balance).correct
    assert explorer.q3.check("trunk.2", balance, "sum").correct
    assert explorer.q3.check("trunk.0", balance, "sum").mistake == "wrong_choice"
    # 04 names runs by where they came from: a run's own name is enough when only one run has it.
    named = balance.assign(run="demo_runs/" + balance["run"])
    assert explorer.q2.check("sum", named).correct and explorer.q2.check("demo_runs/sum", named).correct
    assert explorer.q2.check("mao", named).mistake == "wrong_choice"
    assert explorer.q3.check("trunk.2", named, "sum").correct and not explorer.q3.check("trunk.0", named, "sum").correct
    two = pd.concat([named, balance.assign(run="other/" + balance["run"])], ignore_index=True)
    assert explorer.q2.check("sum", two).mistake == "not_a_choice"  # ambiguous: which folder's sum?


def test_imbalance_by_hand_recognises_the_usual_slips() -> None:
    s = np.array([0.7, 0.2, 0.1])
    entropy = -sum(p * math.log(p) for p in s)
    assert explorer.q1.check(round(1 - entropy / math.log(3), 3)).correct
    assert explorer.q1.check(entropy).mistake == "entropy_only"
    assert explorer.q1.check(-sum(p * math.log2(p) for p in s)).mistake == "entropy_base2"
    assert explorer.q1.check(entropy / math.log(3)).mistake == "missing_one_minus"
    assert explorer.q1.check(0.9).mistake == "wrong_number"
    assert explorer.q1.check("a lot").mistake == "not_a_number"
    assert imbalance_by_hand(0.0, shares=(0.5, 0.5)).correct


def test_rescaling_prediction_is_checked_by_training() -> None:
    assert quickstart.q2.check((False, True)).correct
    assert workshop.q2.check((False, True)).correct
    assert quickstart.q2.check((True, True)).mistake == "wrong_prediction"
    assert quickstart.q2.check(("no", "yes")).mistake == "bad_format"


def test_every_exercise_has_a_hint_and_a_solution() -> None:
    for module in (quickstart, landscape, regression, multimnist, explorer, workshop):
        for name in module.__all__:
            question = getattr(module, name)
            assert str(question.hint()).startswith("Hint: ") and len(question.hint().body) > 20
            assert len(question.answer) > 20
            assert question.check(None).status == "incomplete"


def test_a_solution_shows_only_after_an_answer_was_checked() -> None:
    """A predict-and-check question is not spoiled: an empty check does not count, any real attempt does."""
    from mao_lab.exercises import Exercise, Feedback

    q = Exercise(
        "Which task?",
        lambda a: Feedback("correct" if a == "task0" else "incorrect", "judged"),
        hint="Look at the scales.",
        solution="`task0`, because of its scale.",
    )
    assert "task0" not in q.solution().body and "check your own answer first" in q.solution().body
    q.check(None)
    assert "task0" not in q.solution().body  # not answered yet: still hidden
    assert not q.check("task1").correct
    assert q.solution().body == "`task0`, because of its scale."  # a wrong attempt is an attempt
    fresh = Exercise("Which task?", lambda a: Feedback("correct", "ok"), hint="h" * 21, solution="s" * 21)
    assert "check your own answer first" in fresh.solution().body  # each question keeps its own state


def test_the_answer_key_holds_every_question_and_its_solution(tmp_path) -> None:
    from mao_lab.exercises import answer_key

    text = answer_key.answer_key_markdown()
    count = 0
    for module in (quickstart, landscape, regression, multimnist, explorer, workshop):
        for name in module.__all__:
            question = getattr(module, name)
            assert question.answer in text and question.prompt in text, (module.__name__, name)
            count += 1
    assert text.count("### q") == count
    assert answer_key.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{answer_key.GENERATED_STEM}.md").read_text(encoding="utf-8").strip() == text.strip()
