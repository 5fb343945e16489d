"""Learning-rate schedules and the lr override on resume."""
import pytest
import torch

from linreg.config import ScheduleConfig
from linreg.schedule import apply_lr_override, build_scheduler, lr_multiplier


def test_warmup_cosine_and_wsd():
    assert lr_multiplier(0, "cosine", 10, 100, 0.1, 0.2) == pytest.approx(0.1)  # (step + 1) / warmup
    assert lr_multiplier(9, "cosine", 10, 100, 0.1, 0.2) == pytest.approx(1.0)
    assert lr_multiplier(10, "cosine", 10, 100, 0.1, 0.2) == pytest.approx(1.0)
    assert lr_multiplier(55, "cosine", 10, 100, 0.1, 0.2) == pytest.approx(0.55)  # halfway: (1 + 0.1) / 2
    assert lr_multiplier(100, "cosine", 10, 100, 0.1, 0.2) == pytest.approx(0.1)
    assert lr_multiplier(79, "wsd", 10, 100, 0.1, 0.2) == 1.0  # stable until 80% of training
    assert lr_multiplier(90, "wsd", 10, 100, 0.1, 0.2) == pytest.approx(0.55)  # linear decay over the last 20%
    assert lr_multiplier(100, "wsd", 10, 100, 0.1, 0.2) == pytest.approx(0.1)
    assert lr_multiplier(50, "constant", 10, 100, 0.1, 0.2) == 1.0


def _sched(lr):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    return build_scheduler(opt, ScheduleConfig(kind="cosine", warmup_steps=2), max_steps=10)


def test_lr_override_after_resume():
    a = _sched(1e-3)
    for _ in range(5):
        a.optimizer.step()
        a.step()
    state = a.state_dict()
    b = _sched(1e-3)
    b.load_state_dict(state)
    assert not apply_lr_override(b, 1e-3) and b.get_last_lr() == a.get_last_lr()  # unchanged: untouched
    c = _sched(5e-4)
    c.load_state_dict(state)  # LambdaLR restores base_lrs = [1e-3]: the new lr would be ignored
    assert c.base_lrs == [1e-3]
    assert apply_lr_override(c, 5e-4)
    assert c.optimizer.param_groups[0]["lr"] == pytest.approx(a.optimizer.param_groups[0]["lr"] / 2)
    c.optimizer.step()
    c.step()
    a.optimizer.step()
    a.step()
    assert c.get_last_lr()[0] == pytest.approx(a.get_last_lr()[0] / 2)
