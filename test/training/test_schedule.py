"""Warm-up polynomial LR: values at known steps."""

import pytest
import torch

from training.schedule import warmup_poly_factor, warmup_poly_scheduler


def test_factor_rises_linearly_from_warmup_ratio_then_decays_polynomially_to_zero():
    # 100 steps, 10 warm-up steps, ratio 0.1, power 0.9
    f = lambda step: warmup_poly_factor(step, 100, 10, 0.1, 0.9)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.9)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 ** 0.9)
    assert f(91) == pytest.approx(0.1 ** 0.9)
    assert f(100) == 0.0


def test_no_warmup_is_pure_poly_decay():
    assert warmup_poly_factor(0, 50, 0, 0.1, 1.0) == 1.0
    assert warmup_poly_factor(25, 50, 0, 0.1, 1.0) == pytest.approx(0.5)


def test_scheduler_drives_optimizer_lr_and_resumes_from_state_dict():
    def make():
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
        return opt, warmup_poly_scheduler(opt, total_steps=20, warmup_steps=4, warmup_ratio=0.1, power=0.9)

    opt, sched = make()
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(7):
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[0] == pytest.approx(2e-4 * 0.1)
    assert seen[4] == pytest.approx(2e-4)
    assert seen[7] == pytest.approx(2e-4 * (1 - 3 / 16) ** 0.9)

    opt2, sched2 = make()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    opt.step(), sched.step()
    opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
