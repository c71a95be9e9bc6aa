"""Do the tests catch the defects an outside review found (issue 11)? Each defect is put back into a copy of HEAD,
one at a time, and the tests meant to catch it run there: they must pass on HEAD and fail on the mutant.

    .dev/venv/bin/python -m tests.mutations [--only WORD]

Prints one Markdown row per mutation and exits 1 if any mutant survives. Not part of the suite: each row runs
its tests twice on a fresh copy (about 10 minutes in all on 2 cores).
"""
import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

from tests.support.host import DEV, PYTHON
from tests.support.pack import REPO

DRAGON_NODES = "tests/host/test_dragon_nodes.py"

# (the defect, the file, the text of the fix, the defect's text, the tests that must catch it)
MUTATIONS = [
    ("NaN accepted (cfg NaN gave a black image)", "nodes/errors.py",
     "if not math.isfinite(value):", "if math.isinf(value):",
     [DRAGON_NODES, "-k", "non_finite_or_out_of_range or scale_out_of_its_range"]),
    ("declared maximum unchecked (validate_inputs skips ComfyUI's: Resize scale 11)", "nodes/errors.py",
     "if spec.max is not None and value > spec.max:", "if False:",
     [DRAGON_NODES, "-k", "non_finite_or_out_of_range or scale_out_of_its_range"]),
    ("Feature Extractor custom weights ignored by the Guided Sampler", "nodes/guided_sampler.py",
     "guidance = dataclasses.replace(guidance, layer_weights=features.weights)", "pass",
     [DRAGON_NODES, "-k", "custom_feature_weights"]),
    ("deeply nested points JSON: a RecursionError traceback", "kernels/points.py",
     "    except RecursionError:\n", "    except ZeroDivisionError:\n", ["tests/unit/test_points.py"]),
    ("9-channel inpainting model passes the topology check", "nodes/host.py",
     "    if channels != 4:\n", "    if False:\n", ["tests/host/test_families.py", "-k", "inpainting"]),
    ("deviation: energy scale 0 still guides and time-travels", "kernels/plan.py",
     "guided = guided and guidance", "guided = guided",
     ["tests/unit/test_plan.py", "tests/unit/test_guidance.py", DRAGON_NODES, "-k", "plan or energy_scale or zero or off"]),
    ("deviation: GoodDrag drags the timestep after a no-change stop", "kernels/aldd.py",
     "        if step.drag and self.done:", "        if False:", ["tests/unit/test_aldd.py", "-k", "no_change"]),
    ("deviation: bank attention ignores the plan's steps", "nodes/host.py",
     "active = run.step.bank_attention if self.steps is None", "active = True if self.steps is None",
     [DRAGON_NODES, "-k", "bank_attention_runs_on_exactly"]),
    ("survivor: reference features at t_prev instead of t", "kernels/guidance.py",
     "ref, src = self._references(step.t)", "ref, src = self._references(step.t_prev)", ["tests/unit/test_guidance.py"]),
    ("survivor: cond and uncond swapped in CFG", "nodes/host.py",
     '{"positive": positive, "negative": negative}', '{"positive": negative, "negative": positive}',
     [DRAGON_NODES, "-k", "cfg_combines"]),
    ("survivor: the bank's active steps shifted by one", "kernels/plan.py",
     "bank_attention=bank_first <= i <= bank_last,", "bank_attention=bank_first + 1 <= i <= bank_last + 1,",
     ["tests/unit/test_plan.py", DRAGON_NODES, "-k", "bank_attention"]),
    ("survivor: the raw-cosine floor removed", "kernels/energy.py",
     "s.clamp_min(RAW_COS_FLOOR) if raw else s", "s if raw else s", ["tests/unit/test_energy.py"]),
]


def _pytest(tree: pathlib.Path, args) -> tuple[bool, str]:
    """(passed, pytest's summary line) of `args` run in `tree`."""
    run = subprocess.run([str(PYTHON), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *args], cwd=tree,
                         capture_output=True, text=True, env=dict(os.environ, DRAGEDIT_DEV_DIR=str(DEV)))
    summary = [line for line in run.stdout.splitlines() if " passed" in line or " failed" in line or " error" in line]
    return run.returncode == 0, (summary[-1] if summary else run.stdout[-200:]).strip()


def check(what, path, fixed, broken, args) -> bool:
    """Run `args` on a copy of HEAD, then with `fixed` replaced by `broken` in `path`; True if the mutant is caught."""
    with tempfile.TemporaryDirectory(prefix="dragedit-mutant-") as tmp:
        tree = pathlib.Path(tmp)
        subprocess.run(f"git -C {REPO} archive HEAD | tar -x -C {tree}", shell=True, check=True)
        source = tree / path
        text = source.read_text()
        if text.count(fixed) != 1:
            sys.exit(f"{path}: the fix of '{what}' is not there once ({text.count(fixed)} times): update MUTATIONS")
        head_passed, head = _pytest(tree, args)
        source.write_text(text.replace(fixed, broken))
        mutant_passed, mutant = _pytest(tree, args)
    caught = head_passed and not mutant_passed
    print(f"| {what} | `{path}` | `{' '.join(args)}` | {head} | {mutant} | {'caught' if caught else 'SURVIVED'} |",
          flush=True)
    return caught


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run the mutations whose description contains this word")
    args = ap.parse_args()
    print("| defect put back | file | tests | on HEAD | on the mutant | |\n|---|---|---|---|---|---|")
    chosen = [m for m in MUTATIONS if not args.only or args.only in m[0]]
    survivors = [m[0] for m in chosen if not check(*m)]
    print(f"{len(chosen) - len(survivors)} of {len(chosen)} mutants caught")
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
