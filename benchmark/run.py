"""Run any script on any paper task with the paper's tuned hyperparameters, N seeds in one program.

    python benchmark/run.py magpo_sable coordsum-3x10 --num-seeds 3
    python benchmark/run.py magpo_sable coordsum-3x10 --plain --num-seeds 3   # plain Sable: --delta inf --alpha 0
    python benchmark/run.py magpo_mat coordsum-3x30 --plain                    # plain MAT
    python benchmark/run.py ippo rware-tiny-2ag --total-timesteps 2000000 --num-evaluations 20
    python benchmark/run.py ctds coordsum-3x10 --print-only                   # show the values, run nothing
    python benchmark/run.py magpo_sable coordsum-8x15 --authors-defaults      # the authors' config values

Values, lowest priority first:
  1. the script's defaults (the paper's Tables 2-3 and Mava's, benchmark/reference/README.md);
  2. the paper's tuned row for the task (benchmark/reference/paper_hyperparameters.csv), see `row_for`;
  3. with --authors-defaults, what the authors' code ran where it and the paper's tables disagree
     (see `authors_values`);
  4. every flag given after the script and the task: the script's own parser reads them, so each of
     its flags works here (`python <script>.py --help` lists them).
The run goes where the script puts it (runs/<env_id>__<script>__<seed>__<time>/ by default);
its args.json records every value used, and benchmark.json beside it which row they came from.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_HPARAMS = os.path.join(ROOT, "benchmark", "reference", "paper_hyperparameters.csv")
SCRIPTS = ("ippo", "mappo", "magpo_sable", "magpo_mat", "ctds")

# The paper's hyperparameter columns -> (our flag, the authors' hydra key, type). A script with one
# optimiser (`--lr`) takes its rate from the actor_lr or the critic_lr column, whichever the row fills.
PAPER_COLUMNS = {
    "num_minibatches": ("num_minibatches", "system.num_minibatches", int),
    "max_grad_norm": ("max_grad_norm", "system.max_grad_norm", float),
    "ppo_epochs": ("ppo_epochs", "system.ppo_epochs", int),
    "clip_eps": ("clip_eps", "system.clip_eps", float),
    "ent_coef": ("ent_coef", "system.ent_coef", float),
    "n_embd": ("embed_dim", "network.net_config.embed_dim", int),
    "n_head": ("n_head", "network.net_config.n_head", int),
    "n_block": ("n_block", "network.net_config.n_block", int),
    "decay_scaling_factor": ("decay_scaling_factor", "network.memory_config.decay_scaling_factor", float),
    "alpha": ("alpha", "system.alpha", float),
    "delta": ("delta", "system.clip_gpo", float),
    "actor_lr": ("actor_lr", "system.actor_lr", float),
    "critic_lr": ("critic_lr", "system.critic_lr", float),
}


def paper_task(env_id: str) -> str:
    """Our env id -> the task name of the paper's files ('coordsum-3x10' -> '3x10'; Connector keeps its id)."""
    return env_id if env_id.startswith("con-") or "-" not in env_id else env_id.split("-", 1)[1]


def read_row(system: str, task: str) -> dict | None:
    with open(PAPER_HPARAMS) as f:
        return next((r for r in csv.DictReader(f) if r["system_name"] == system and r["task"] == task), None)


def row_for(script: str, env_id: str, plain: bool = False) -> tuple[dict | None, str]:
    """The paper's row that holds `script`'s tuned values on `env_id`, and a word on where it came from.

    The paper tuned every algorithm on CoordSum; elsewhere it took the CTCE method's values from the
    Sable paper and tuned only delta and lambda for MAGPO on top (Appendix C.3). So a Sable-based run
    without its own row (plain Sable, the CTDS teacher) takes the MAGPO row without delta and lambda.
    MAT's values exist for CoordSum only; elsewhere a MAT-guided run keeps its defaults."""
    task = paper_task(env_id)
    if script in ("ippo", "mappo"):
        row = read_row(script, task)
        return row, f"{script} row" if row else "defaults (no row)"
    if script == "magpo_mat":
        row = read_row("mat", task)
        return row, "mat row" if row else "defaults (no mat row)"
    if script == "magpo_sable" and not plain:
        row = read_row("magpo", task)
        return row, "magpo row" if row else "defaults (no row)"
    row = read_row("sable", task)  # plain Sable, or ctds's teacher
    if row:
        return row, "sable row"
    row = read_row("magpo", task)
    if row:
        return {k: ("" if k in ("alpha", "delta") else v) for k, v in row.items()}, "magpo row without delta and alpha"
    return None, "defaults (no row)"


def paper_values(script: str, env_id: str, plain: bool = False) -> tuple[dict, str]:
    """Our flags from the paper's row (only flags the script has), and the row's source."""
    sys.path.insert(0, ROOT)
    flags = {f.name for f in dataclasses.fields(importlib.import_module(script).Args)}
    row, source = row_for(script, env_id, plain)
    values = {}
    for column, (flag, _, kind) in PAPER_COLUMNS.items():
        value = (row or {}).get(column, "").strip()
        if not value:
            continue
        if "lr" in flags and column in ("actor_lr", "critic_lr"):  # one optimiser rate
            values["lr"] = kind(float(value))
        elif flag in flags:
            values[flag] = kind(float(value))
    if plain:
        values.update(delta=float("inf"), alpha=0.0)
    return values, source


# The authors' configs (mava/configs/system/*/*.yaml) where they differ from the paper's Tables 2-3, which are
# the scripts' defaults: every system ran GAE lambda 0.95 and value coefficient 0.5, not 0.9 and 0.1.
AUTHORS_CONFIG = {"gae_lambda": 0.95, "vf_coef": 0.5}
# The single learning rate of the Sable- and MAT-based systems: they read only `actor_lr` (rec_magpo.py,
# rec_sable.py and mat.py build their optimisers from it), whose default is this.
AUTHORS_ACTOR_LR = {"magpo_sable": 2.5e-4, "ctds": 2.5e-4, "magpo_mat": 5e-4}


def authors_values(script: str, env_id: str, plain: bool = False) -> tuple[dict, str]:
    """What the authors' code would have run with the paper's row: `paper_values`, then the authors'
    config values for GAE lambda and the value coefficient, and, for the one-rate scripts, the row's
    actor_lr or the system's default (the paper's CoordSum rows for MAGPO, Sable and MAT fill only
    critic_lr, which those systems never read)."""
    values, source = paper_values(script, env_id, plain)
    values.update(AUTHORS_CONFIG)
    if script in AUTHORS_ACTOR_LR:
        row, _ = row_for(script, env_id, plain)
        actor_lr = ((row or {}).get("actor_lr") or "").strip()
        values["lr"] = float(actor_lr) if actor_lr else AUTHORS_ACTOR_LR[script]
    return values, f"{source}, the authors' config values"


def as_flags(values: dict) -> list[str]:
    return [token for name, value in values.items() for token in (f"--{name.replace('_', '-')}", str(value))]


def main(argv: list[str] | None = None) -> str | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="python benchmark/run.py SCRIPT ENV_ID [--plain] [--authors-defaults] [--print-only] "
                                           "[script flags ...]")
    parser.add_argument("script", choices=SCRIPTS)
    parser.add_argument("env_id")
    parser.add_argument("--plain", action="store_true",
                        help="magpo_sable / magpo_mat only: the guider alone, plain Sable / MAT (--delta inf --alpha 0)")
    parser.add_argument("--authors-defaults", action="store_true",
                        help="where the authors' code and the paper's tables disagree (GAE lambda, value coefficient, "
                             "which learning-rate column a one-rate system reads), use what the code ran")
    parser.add_argument("--print-only", action="store_true", help="print the resolved values and run nothing")
    opts, script_flags = parser.parse_known_args(argv)
    if opts.plain and opts.script not in ("magpo_sable", "magpo_mat"):
        parser.error(f"--plain is for magpo_sable and magpo_mat (plain Sable / plain MAT), not {opts.script}")

    sys.path.insert(0, ROOT)
    import tyro

    module = importlib.import_module(opts.script)
    values, source = (authors_values if opts.authors_defaults else paper_values)(opts.script, opts.env_id, opts.plain)
    flags = ["--env-id", opts.env_id, *as_flags(values), *script_flags]
    args = tyro.cli(module.Args, args=flags)  # later flags win: the user's over the paper's
    try:
        module.validate(args)  # bad values fail here, with the script's own message, before anything compiles
    except module.UsageError as error:
        sys.exit(f"error: {error}")
    print(f"{opts.script}{' (plain)' if opts.plain else ''} on {opts.env_id}, paper values from the {source}:\n"
          f"  python {opts.script}.py {' '.join(flags)}", flush=True)
    if opts.print_only:
        return None
    run_dir = module.main(args)
    with open(os.path.join(run_dir, "benchmark.json"), "w") as f:
        json.dump({"script": opts.script, "plain": opts.plain, "authors_defaults": opts.authors_defaults,
                   "env_id": opts.env_id, "paper_source": source,
                   "paper_values": {k: str(v) for k, v in values.items()}, "script_flags": script_flags}, f, indent=2)
    return run_dir


if __name__ == "__main__":
    main()
