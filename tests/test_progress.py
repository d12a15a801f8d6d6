"""``progress=`` of the Python API, as in FiftyOne Brain: True draws a progress bar, False is silent, None follows
FiftyOne's ``show_progress_bars``, a callable receives ``(fraction, label)`` (what the operators pass)."""

import fiftyone as fo
import pytest

import fo_plugin


@pytest.fixture(scope="module")
def small(cifar_files):
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p, _, _ in cifar_files[:12]], progress=False)
    yield ds
    ds.delete()


def test_progress_true_draws_a_bar_that_ends_full_and_false_draws_nothing(small, capsys):
    fo_plugin.find_quality_issues(small, "q_bar", progress=True)
    err = capsys.readouterr().err
    assert "quality flags" in err and "100%" in err
    fo_plugin.find_quality_issues(small, "q_silent", progress=False)
    assert "quality flags" not in capsys.readouterr().err


def test_progress_none_follows_fiftyones_setting(small, capsys, monkeypatch):
    monkeypatch.setattr(fo.config, "show_progress_bars", False)
    fo_plugin.find_quality_issues(small, "q_none_off")
    assert "quality flags" not in capsys.readouterr().err
    monkeypatch.setattr(fo.config, "show_progress_bars", True)
    fo_plugin.find_quality_issues(small, "q_none_on")
    assert "quality flags" in capsys.readouterr().err


def test_progress_callback_receives_fractions_and_labels(small, capsys):
    seen = []
    fo_plugin.find_quality_issues(small, "q_callback", progress=lambda f, s: seen.append((f, s)))
    assert seen and all(0.0 <= f <= 1.0 and isinstance(s, str) and s for f, s in seen)
    assert "quality flags" not in capsys.readouterr().err  # the callback replaces the bar
