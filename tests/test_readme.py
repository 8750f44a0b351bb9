"""The README's commands work as written: the two contract commands stand verbatim, every `python <script>.py ...`
line in its code blocks parses into the script's Args and passes the script's own checks, and each one that sets
--total-timesteps trains exactly that many steps, so no "note: training N steps per seed ..., not M" correction
prints. The scripts train whole updates per evaluation: an update is --num-envs x --rollout-length steps, and the
total is rounded down to a whole number of updates per evaluation (--num-evaluations)."""
import importlib
import importlib.util
import os
import re
import shlex

import pytest
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("ippo", "mappo", "magpo_sable", "magpo_mat", "ctds")
SET_UP_AND_TRAIN = ("python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt "
                    "&& python magpo_sable.py --env-id rware-tiny-2ag")
TESTS = "python -m pytest"  # .ci/run runs exactly this
SHELL_OPERATORS = {"&&", "||", "|", ";", "&", ">", ">>", "2>&1"}


def code_blocks(text):
    """The contents of the fenced code blocks, line continuations joined."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    return [block.replace("\\\n", " ") for block in blocks]


def script_commands(text):
    """(script, argv, line) for every `python <script>.py ...` in a code block, one of the algorithm scripts."""
    found = []
    for block in code_blocks(text):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            for i, token in enumerate(tokens[:-1]):
                if token in ("python", "python3") and tokens[i + 1].endswith(".py"):
                    name = tokens[i + 1][:-3]
                    if name in SCRIPTS:
                        argv = []
                        for arg in tokens[i + 2:]:
                            if arg in SHELL_OPERATORS:
                                break
                            argv.append(arg)
                        found.append((name, argv, line.strip()))
    return found


def read_readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def importable(env_id):
    """An `--env-id package.module:factory` whose module is here (not a placeholder such as mypackage)."""
    try:
        return importlib.util.find_spec(env_id.partition(":")[0]) is not None
    except ModuleNotFoundError:
        return False


README = read_readme()
COMMANDS = script_commands(README)


def test_the_two_contract_commands_stand_verbatim_each_in_its_own_code_block():
    blocks = [block.strip() for block in code_blocks(README)]
    assert SET_UP_AND_TRAIN in blocks
    assert TESTS in blocks


def test_the_readme_has_script_commands_to_check():
    assert len(COMMANDS) >= 5 and {name for name, _, _ in COMMANDS} >= {"ippo", "magpo_sable"}


def test_every_python_file_a_code_block_runs_is_in_the_repository():
    for block in code_blocks(README):
        for path in re.findall(r"\bpython3? +([\w/.-]+\.py)\b", block):
            assert os.path.isfile(os.path.join(ROOT, path)), f"README runs {path}, which is not in the repository"


@pytest.mark.parametrize("name, argv, line", COMMANDS, ids=[line[:90] for _, _, line in COMMANDS])
def test_a_readme_command_parses_and_trains_whole_updates(name, argv, line):
    module = importlib.import_module(name)
    args = tyro.cli(module.Args, args=argv)  # an unknown flag or a bad value exits here
    # validate() checks every value as the script does before compiling; --distributed would join a cluster
    # there, and a placeholder factory (`mypackage.mymodule:make_env`) names no module to import
    if not args.distributed and (":" not in args.env_id or importable(args.env_id)):
        module.validate(args)
    if "--total-timesteps" not in argv or args.resume or args.evaluate:
        return  # the default budget (the paper's), or a run that takes its budget from a saved run
    steps_per_update = args.num_envs * args.rollout_length
    updates_per_evaluation = args.total_timesteps // steps_per_update // args.num_evaluations
    trained = updates_per_evaluation * steps_per_update * args.num_evaluations
    assert trained == args.total_timesteps, (
        f"{line!r} trains {trained} steps per seed, not {args.total_timesteps}, and says so in a note: use a "
        f"multiple of --num-envs x --rollout-length x --num-evaluations = "
        f"{steps_per_update * args.num_evaluations}"
    )


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_and_anchor_in_the_readme_resolves():
    outside_code = re.sub(r"^```.*?^```", "", README, flags=re.DOTALL | re.MULTILINE)
    for target in re.findall(r"\]\(([^)\s]+)\)", outside_code):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        file = os.path.join(ROOT, path) if path else os.path.join(ROOT, "README.md")
        assert os.path.exists(file), f"README links to {path}, which is not in the repository"
        if anchor and file.endswith(".md"):
            with open(file) as f:
                text = re.sub(r"^```.*?^```", "", f.read(), flags=re.DOTALL | re.MULTILINE)
            anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
            assert anchor in anchors, f"README links to {target}, but {path or 'README.md'} has no such heading"
