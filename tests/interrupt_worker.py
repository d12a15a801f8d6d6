"""Run one stage of the library in its own process, so tests/test_interrupt.py can kill it with SIGKILL.

    python interrupt_worker.py <dataset name> <stage> <kwargs as JSON> <signal file> <pause>

stage: ``embeddings`` | ``influence`` | ``clcore`` (the fo_plugin function of that name), on the whole dataset, or
on its first ``_first`` samples by filepath when the kwargs hold ``"_first": n``.
pause: where the worker stops and waits to be killed, so the kill always lands at the same point inside the stage:
  ``progress:F``  -- the first time the stage reports a progress fraction >= F (after the work before it was
                     written: e.g. the first chunk of embeddings staged);
  ``epoch:E``     -- inside proxy training, at the second batch of epoch E (0-based): the state file holds the
                     epochs before E and one optimiser step of epoch E is only in memory;
  ``commit``      -- inside the commit, after the previous run's tags were removed (or listed to be) and before
                     the staged values are merged into the sample documents (the old values, without their
                     record: the run is recorded as committing).
Every progress report is appended to the signal file as ``progress <fraction> <label>``; the pause writes
``paused <what>`` and then sleeps until the test kills the process. If the stage ends it writes ``finished``.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's fo_plugin


def main() -> None:
    name, stage, kwargs, signal_file, pause = sys.argv[1:6]
    kwargs = json.loads(kwargs)
    kind, _, arg = pause.partition(":")

    def note(line: str) -> None:
        with open(signal_file, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def wait_for_kill(what: str) -> None:
        note(f"paused {what}")
        while True:
            time.sleep(60)

    def progress(fraction: float, label: str) -> None:
        note(f"progress {fraction:.6f} {label}")
        if kind == "progress" and fraction >= float(arg):
            wait_for_kill(f"progress {fraction:.6f} {label}")

    if kind == "commit":
        from fo_plugin import runs

        def merge_staged(self, coll, now):  # the commit has removed the previous run's tags
            wait_for_kill("commit before merging the new values")

        runs.Run._merge_staged = merge_staged

    if kind == "epoch":
        import fo_plugin.core.train as train

        real, epoch, seed, calls = train.augment, int(arg), int(kwargs.get("seed", 0)), [0]

        def augment(x, keys, cfg, aug_seed, view):  # train_proxy augments with seed + epoch, views 0 and 1
            if aug_seed == seed + epoch:
                calls[0] += 1
                if calls[0] == 3:  # view 0 of the second batch: one step of this epoch is done, in memory only
                    wait_for_kill(f"epoch {epoch} batch 1")
            return real(x, keys, cfg, aug_seed, view)

        train.augment = augment

    import fiftyone as fo

    import fo_plugin

    ds = fo.load_dataset(name)
    first = kwargs.pop("_first", None)
    target = ds.sort_by("filepath").limit(first) if first else ds
    fn = {"embeddings": fo_plugin.compute_ssl_embeddings, "influence": fo_plugin.compute_ssl_influence,
          "clcore": fo_plugin.compute_clcore}[stage]
    fn(target, progress=progress, **kwargs)
    note("finished")


if __name__ == "__main__":
    main()
