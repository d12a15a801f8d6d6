"""``progress=`` of the Python API, as in FiftyOne Brain: True draws a progress bar, False is silent, None follows
FiftyOne's ``show_progress_bars``, a callable receives ``(fraction, label)`` (what the operators pass)."""

import fiftyone as fo
import pytest
from fiftyone import ViewField as F

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


def test_an_operator_executed_immediately_streams_progress_then_shows_its_outputs(small):
    from conftest import run_op

    res = run_op("find_quality_issues", small, {"view_target": "DATASET", "run_key": "q_op"})
    assert res.error is None, res.error
    sent = [r["operator_uri"] for r in res.executor.to_json()["requests"]]
    first_output = sent.index("show_output")
    assert sent[:first_output] and set(sent[:first_output]) == {"set_progress"}  # progress while it runs
    assert sent[first_output + 1] == "reload_dataset"
    assert res.result["num_flagged"] == len(small.exists("q_op_issues").match(F("q_op_issues").length() > 0))


class _Ops:
    def set_progress(self, label=None, progress=None):
        return ("progress", progress, label)

    def notify(self, message, variant=None):
        return ("notify", variant, message)


def test_stream_progress_returns_the_result_merges_a_backlog_and_reraises_the_stage_error():
    import threading
    import types

    from operators.common import stream_progress

    ctx = types.SimpleNamespace(ops=_Ops())
    go = threading.Event()

    def work(progress):
        for i in range(50):  # reported before the generator reads any: one backlog
            progress(i / 50, f"step {i}")
        go.wait(5)
        progress(1.0, "last")
        return {"ok": 1}

    gen = stream_progress(ctx, work)
    first = next(gen)
    go.set()
    rest, out = [], None
    try:
        while True:
            rest.append(next(gen))
    except StopIteration as stop:
        out = stop.value
    assert out == {"ok": 1}
    sent = [first, *rest]
    assert len(sent) < 51 and sent[-1] == ("progress", 1.0, "last")
    assert [p for _, p, _ in sent] == sorted(p for _, p, _ in sent)

    def fail(progress):
        progress(0.5, "half")
        raise FloatingPointError("loss is NaN")

    with pytest.raises(FloatingPointError, match="loss is NaN"):
        list(stream_progress(ctx, fail))


def test_closing_the_stream_stops_the_stage_at_its_next_report():
    import threading
    import types

    from operators.common import StageCancelled, stream_progress

    ctx = types.SimpleNamespace(ops=_Ops())
    closed, raised = threading.Event(), []

    def work(progress):
        progress(0.1, "first")
        closed.wait(5)
        try:
            progress(0.2, "after the App went away")
        except StageCancelled as e:
            raised.append(e)
            raise
        return {"ok": 1}

    gen = stream_progress(ctx, work)
    assert next(gen) == ("progress", 0.1, "first")
    gen.close()  # what FiftyOne does when the App's stream is gone
    closed.set()
    for _ in range(50):
        if raised:
            break
        threading.Event().wait(0.1)
    assert raised and "closed the operation" in str(raised[0])
