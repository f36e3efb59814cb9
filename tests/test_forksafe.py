"""The fork hooks: every registered object is prepared and repaired, and a bad one breaks none."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reliability import run_python

TIMEOUT = 120  # a fork that deadlocks fails the test instead of hanging the suite


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_python(script, *args, timeout=TIMEOUT)


def test_a_failing_hook_neither_skips_the_others_nor_breaks_the_next_fork() -> None:
    result = run(
        """
        import logging, os
        from spillcache import forksafe

        logging.basicConfig(level=logging.ERROR)
        calls = []

        class Good:
            def __init__(self, name):
                self.name = name
                forksafe.register(self.before, self.parent, self.child)
            def before(self): calls.append(("before", self.name))
            def parent(self): calls.append(("parent", self.name))
            def child(self): calls.append(("child", self.name))

        class Bad(Good):
            def before(self): raise RuntimeError("broken hook")

        class ChildOnly:
            def __init__(self):
                forksafe.register(in_child=self.child)
            def child(self): calls.append(("child", "only"))

        objects = [Good("a"), Bad("bad"), Good("b"), ChildOnly()]
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                repaired = {("child", "a"), ("child", "b"), ("child", "only")}
                os._exit(0 if repaired <= set(calls) and ("child", "bad") not in calls else 3)
            assert os.waitpid(pid, 0)[1] == 0
        print(calls)
        """
    )
    assert result.returncode == 0, result.stderr
    fork = [("before", "a"), ("before", "b"), ("parent", "b"), ("parent", "a")]
    assert result.stdout.strip() == repr(fork + fork)
    assert result.stderr.count("fork hook Bad.before failed") == 2
    assert "RuntimeError: broken hook" in result.stderr


def test_a_cache_that_failed_to_open_does_not_break_forks(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not a store")
    result = run(
        """
        import multiprocessing, sys
        from spillcache import SpillCache, StoreError

        try:
            SpillCache(sys.argv[1])
        except StoreError as exc:
            kept = exc  # its traceback keeps the half-built cache alive
        good = SpillCache(sys.argv[2])
        good.put(0, {"x": 1})
        ctx = multiprocessing.get_context("fork")
        for _ in range(3):
            child = ctx.Process(target=good.get, args=(0,))
            child.start()
            child.join(60)
            assert child.exitcode == 0, child.exitcode
        good.close()
        print("ok")
        """,
        str(tmp_path / "taken"),
        str(tmp_path / "store"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
