import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "benchmark", "reference")  # the paper's tables, the authors' task configs


def pytest_configure(config):
    """The fast suite compiles about a hundred small programs and runs each for a moment, so XLA's
    backend optimisation costs more than it saves there (one end-to-end run: 65 s with it, 46 s and
    half the CPU time without). The learning checks (`-m slow`) train for minutes and keep it.
    Runs in every xdist worker, before any test touches a JAX backend."""
    if config.getoption("markexpr") == "not slow" and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
