"""The thread policy, checked in fresh interpreters: the variables are in place before torch
initialises, torch and faiss report the chosen counts, user settings win over the default,
CONTRAHASH_THREADS and the argument override it, bad values give a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from contrahash.runtime import THREAD_ENV, _parse_threads, cpu_affinity_count

# Applies the policy (argument from argv[1], "-" = None) *before* importing torch, then reports
# what torch itself and faiss read, plus torch's own view of the environment at its start.
PROBE = textwrap.dedent("""
    import json, os, sys
    assert "torch" not in sys.modules
    from contrahash.runtime import apply_thread_policy, thread_settings
    arg = None if sys.argv[1] == "-" else sys.argv[1]
    policy = apply_thread_policy(int(arg) if arg and arg.isdigit() else arg)
    env_after_policy = {k: os.environ.get(k)
                        for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    import torch
    info = torch.__config__.parallel_info()
    omp_line = [l for l in info.splitlines() if "omp_get_max_threads" in l][0]
    import faiss
    print(json.dumps({
        "policy": {"threads": policy.threads, "source": policy.source,
                   "wait_policy": policy.wait_policy,
                   "effective": policy.wait_policy_effective},
        "env_after_policy": env_after_policy,
        "torch_threads": torch.get_num_threads(),
        "torch_omp_max_threads": int(omp_line.split(":")[1]),
        "faiss_threads": faiss.omp_get_max_threads(),
        "settings": thread_settings(),
    }))
""")


def probe(arg: str | None = None, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    clean.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE, arg or "-"], env=clean,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_sets_variables_before_torch_starts() -> None:
    r = probe()
    n = cpu_affinity_count()
    assert r["env_after_policy"] == {"OMP_NUM_THREADS": str(n), "OMP_WAIT_POLICY": None,
                                     "GOMP_SPINCOUNT": "10000"}
    assert r["policy"] == {"threads": n, "source": "default",
                           "wait_policy": "GOMP_SPINCOUNT=10000", "effective": True}
    # torch's own OpenMP runtime started with the count from the environment
    assert r["torch_threads"] == n and r["torch_omp_max_threads"] == n
    assert r["faiss_threads"] == n
    s = r["settings"]
    assert s["torch_intra_op"] == n and s["faiss_omp"] == n and s["cpu_affinity"] == n
    assert s["env"]["GOMP_SPINCOUNT"] == "10000" and s["policy"]["source"] == "default"


def test_contrahash_threads_and_argument_override_the_default() -> None:
    r = probe(CONTRAHASH_THREADS="1")
    assert r["policy"]["source"] == "CONTRAHASH_THREADS"
    assert r["torch_threads"] == 1 and r["torch_omp_max_threads"] == 1 and r["faiss_threads"] == 1
    r = probe("auto", CONTRAHASH_THREADS="1")  # "auto" means "not given"
    assert r["policy"]["source"] == "CONTRAHASH_THREADS" and r["torch_threads"] == 1


@pytest.mark.skipif(cpu_affinity_count() < 2, reason="torch caps its start-up count at the CPUs")
def test_argument_beats_contrahash_threads() -> None:
    r = probe("2", CONTRAHASH_THREADS="1")
    assert r["policy"]["source"] == "argument"
    assert r["torch_threads"] == 2 and r["faiss_threads"] == 2
    assert r["settings"]["env"]["OMP_NUM_THREADS"] == "2"


def test_user_set_variables_win_over_the_default() -> None:
    r = probe(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="active")
    assert r["policy"]["source"] == "OMP_NUM_THREADS" and r["policy"]["threads"] == 1
    assert r["env_after_policy"] == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "active",
                                     "GOMP_SPINCOUNT": None}
    assert r["torch_threads"] == 1 and r["faiss_threads"] == 1
    # a user-chosen spin count means the user chose the waiting: it is kept as it is
    r = probe(GOMP_SPINCOUNT="0")
    assert r["env_after_policy"]["OMP_WAIT_POLICY"] is None
    assert r["settings"]["env"]["GOMP_SPINCOUNT"] == "0"
    assert r["policy"]["wait_policy"] == "GOMP_SPINCOUNT=0"
    # the explicit contrahash count replaces OMP_NUM_THREADS (the more specific request)
    r = probe(OMP_NUM_THREADS="3", CONTRAHASH_THREADS="1")
    assert r["torch_threads"] == 1 and r["env_after_policy"]["OMP_NUM_THREADS"] == "1"


def run_code(code: str, **env: str) -> list:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    clean.update(env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=clean,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_call_before_torch_changes_the_count_and_a_bare_call_keeps_it() -> None:
    # main() applies the default, the --threads option applies its value, then the library's
    # run set-up calls again without a count (CONTRAHASH_THREADS=2 must not undo --threads 1)
    first, second, third, torch_n, env_n = run_code("""
        import json, os
        from contrahash.runtime import apply_thread_policy
        a = apply_thread_policy()
        b = apply_thread_policy(1)
        import torch
        c = apply_thread_policy()
        print(json.dumps([[a.threads, a.source], [b.threads, b.source], [c.threads, c.source],
                          torch.get_num_threads(), os.environ["OMP_NUM_THREADS"]]))
    """, CONTRAHASH_THREADS="2")
    assert first == [2, "CONTRAHASH_THREADS"]
    assert second == [1, "argument"] and third == [1, "argument"]
    assert torch_n == 1 and env_n == "1"


def test_late_calls_keep_the_callers_torch_count_or_set_the_runtime_counts() -> None:
    kept, late, counts, recorded = run_code("""
        import json, faiss, torch
        torch.set_num_threads(1)  # the caller's own choice, before contrahash is involved
        from contrahash.runtime import apply_thread_policy, thread_settings
        p = apply_thread_policy()
        kept = [p.threads, p.source, p.wait_policy_effective, torch.get_num_threads(),
                faiss.omp_get_max_threads()]
        q = apply_thread_policy(2)
        print(json.dumps([kept, [q.threads, sorted(q.runtime_set)],
                          [torch.get_num_threads(), faiss.omp_get_max_threads()],
                          thread_settings()["policy"]]))
    """)
    # torch was imported first: its OpenMP had read the environment, the wait policy is moot
    assert kept == [1, "torch", False, 1, 1]
    assert late[0] == 2 and "torch" in late[1]
    assert counts == [2, 2]
    assert recorded == {"threads": 2, "source": "argument",
                        "wait_policy": "GOMP_SPINCOUNT=10000", "wait_policy_effective": False}


def test_importing_the_cli_does_not_initialise_torch() -> None:
    # the CLI applies the policy in main(); that is only in time while importing it is light
    assert run_code("""
        import json, sys
        import contrahash.cli
        print(json.dumps(["torch" in sys.modules, "faiss" in sys.modules]))
    """) == [False, False]


@pytest.mark.parametrize("value", ["abc", "-2", "1.5", "two"])
def test_bad_contrahash_threads_is_a_clear_error(value: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    clean["CONTRAHASH_THREADS"] = value
    out = subprocess.run(
        [sys.executable, "-c", "from contrahash.runtime import apply_thread_policy; "
         "apply_thread_policy()"], env=clean, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last == (f"ValueError: CONTRAHASH_THREADS={value!r}: expected a positive integer "
                    "or 'auto'")


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), (4, 4), ("4", 4), (" 2 ", 2), ("auto", None), ("AUTO", None), (0, None),
    ("", None),
])
def test_parse_threads_accepts(value: object, expected: int | None) -> None:
    assert _parse_threads(value, "threads") == expected


@pytest.mark.parametrize("value", [-1, "-1", "x", 2.5, True])
def test_parse_threads_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^threads=.*expected a positive integer or 'auto'$"):
        _parse_threads(value, "threads")
