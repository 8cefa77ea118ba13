"""The two Python halves of scripts/gpu_check.sh.

    python scripts/gpu_report.py pins             # the pinned requirements this interpreter does not satisfy
    python scripts/gpu_report.py wheels           # what `gpu_check.sh --fetch-wheels` downloads
    python scripts/gpu_report.py requirements     # the project's requirements, test extra included
    python scripts/gpu_report.py report --out DIR --collected FILE --junit FILE --figures FILE --setup FILE \
        --elapsed S --limit S [--stopped]

`report` writes DIR/gpu_report.json and DIR/gpu_report.md: the GPU, the versions next to the pins, each collected
`gpu` test's outcome (passed / failed / skipped / error / not run) with its message and figures, and the table of
peak training memory measured against `train/sft.py --estimate_memory`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import re
import sys
from pathlib import Path
from xml.etree import ElementTree

import tomllib
from packaging.requirements import Requirement


REPO_ROOT = Path(__file__).resolve().parents[1]
# how a test of the tier skips where it needs CUDA (tests/gpu/gpu_testing.py, which needs torch: not imported here)
NO_CUDA_REASON = "needs CUDA from here on"
# the stack the tier depends on, pinned in pyproject.toml
PINNED = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "snac", "bitsandbytes")
OPTIONAL = ("flash-attn", "deepspeed")
# what `gpu_check.sh --fetch-wheels` downloads for a machine without internet besides the pins (torch aside: its CUDA
# wheels are far over what can travel): the pins' requirements that the GPU image lacks, and soundfile's
CARRIED_REQUIREMENTS = ("soundfile>=0.12", "cffi", "pycparser", "dill<0.4.2", "multiprocess<0.70.20")


def project_requirements() -> list[str]:
    """The project's dependencies and its test extra, as pyproject.toml lists them."""
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["test"]]


def pinned_requirements() -> dict[str, Requirement]:
    requirements = {Requirement(line).name: Requirement(line) for line in project_requirements()}
    return {name: requirements[name] for name in PINNED}


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet_pins() -> list[str]:
    """The pinned requirements the installed versions do not satisfy (a local version label such as +cu130 aside)."""
    try:
        import torch

        cuda_build = torch.version.cuda is not None
    except ImportError:
        cuda_build = False
    # a CPU-only torch build satisfies the version but cannot run the tier
    unmet = [] if cuda_build else [str(pinned_requirements()["torch"])]
    for name, requirement in pinned_requirements().items():
        version = installed_version(name)
        if str(requirement) in unmet:
            continue
        if version is None or not requirement.specifier.contains(version.split("+")[0], prereleases=True):
            unmet.append(str(requirement))
    return unmet


def gpu_description() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"name": None, "cuda": torch.version.cuda, "note": "torch.cuda.is_available() is False"}
    properties = torch.cuda.get_device_properties(0)
    return {
        "name": properties.name,
        "memory_gb": round(properties.total_memory / 1e9, 1),
        "cuda": torch.version.cuda,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
    }


def junit_outcomes(path: Path) -> dict[str, dict]:
    """Outcome, seconds and message of each test case in pytest's JUnit XML, by node id."""
    if not path.exists():
        return {}
    outcomes = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        # classname is the module's dotted path (plus a class, which this tier does not use)
        node_id = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (element.get("message") or "").strip()
                break
        outcomes[node_id] = {"outcome": outcome, "seconds": round(float(case.get("time", 0)), 2), "message": message}
    return outcomes


def read_figures(path: Path) -> dict[str, dict]:
    figures: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            figures.setdefault(entry["test"], {})[entry["name"]] = {"value": entry["value"], "unit": entry["unit"]}
    return figures


def memory_table(tests: list[dict]) -> list[dict]:
    rows = []
    for test in tests:
        figures = test["figures"]
        if "memory_measured_gb" in figures:
            rows.append(
                {
                    "recipe": figures["memory_recipe"]["value"],
                    "estimated_gb": figures["memory_estimated_gb"]["value"],
                    "measured_gb": figures["memory_measured_gb"]["value"],
                    "measured_over_estimated": figures["memory_measured_over_estimated"]["value"],
                    "outcome": test["outcome"],
                }
            )
    return rows


def markdown(report: dict) -> str:
    gpu = report["gpu"]
    lines = [
        f"# GPU check, {report['date']}",
        "",
        f"GPU: {gpu.get('name') or 'none (' + gpu.get('note', '') + ')'}"
        + (f", {gpu['memory_gb']} GB, compute capability {gpu['capability']}" if gpu.get("name") else "")
        + f"; CUDA {gpu.get('cuda')}. Elapsed {report['elapsed_s']} s of a {report['time_limit_s']} s limit"
        + (" (stopped at the limit)." if report["stopped_at_time_limit"] else "."),
        "",
        "| package | installed | pinned |",
        "|---|---|---|",
    ]
    for name, version in report["versions"].items():
        lines.append(f"| {name} | {version or 'not installed'} | {report['pins'].get(name, '(optional)')} |")
    if report["setup"]:
        lines += ["", "Set-up:", *[f"- {note}" for note in report["setup"]]]
    counts = ", ".join(f"{count} {outcome}" for outcome, count in report["counts"].items() if count)
    lines += ["", f"## Tests ({counts})", ""]
    if not gpu.get("name"):
        reached = sum(test["message"].startswith(NO_CUDA_REASON) for test in report["tests"])
        total = len(report["tests"])
        lines += [
            f"No GPU: {reached} of {total} tests ran their CPU preparation and stopped where they need CUDA.",
            "",
        ]
    lines += ["| test | outcome | s | figures / message |", "|---|---|---|---|"]
    for test in report["tests"]:
        figures = "; ".join(
            f"{name} {value['value']}{(' ' + value['unit']) if value['unit'] else ''}"
            for name, value in test["figures"].items()
            if name != "memory_recipe"
        )
        detail = figures or test["message"].replace("|", "/")[:300]
        lines.append(f"| `{test['id'].split('::', 1)[-1]}` | {test['outcome']} | {test['seconds']} | {detail} |")
    lines += ["", "## Peak training memory: measured against `--estimate_memory`", ""]
    if report["memory"]:
        lines += [
            "| run | estimated GB | measured GB (max_memory_allocated) | measured / estimated | within 15% |",
            "|---|---|---|---|---|",
        ]
        for row in report["memory"]:
            within = "yes" if abs(row["measured_over_estimated"] - 1) <= 0.15 else "**no**"
            lines.append(
                f"| {row['recipe']} | {row['estimated_gb']} | {row['measured_gb']} | "
                f"{row['measured_over_estimated']} | {within} |"
            )
    else:
        lines.append("Not measured in this run (see the memory tests' outcomes above).")
    return "\n".join(lines) + "\n"


def write_report(args: argparse.Namespace) -> dict:
    collected = [line.strip() for line in Path(args.collected).read_text().splitlines() if "::" in line]
    outcomes = junit_outcomes(Path(args.junit))
    figures = read_figures(Path(args.figures))
    tests = []
    for node_id in collected:
        outcome = outcomes.get(
            node_id,
            {
                "outcome": "not run",
                "seconds": 0.0,
                "message": "not reached before the time limit"
                if args.stopped
                else "not reached (pytest stopped early)",
            },
        )
        tests.append({"id": node_id, **outcome, "figures": figures.get(node_id, {})})
    counts = {
        outcome: sum(test["outcome"] == outcome for test in tests)
        for outcome in ("passed", "failed", "error", "skipped", "not run")
    }
    pins = {name: str(requirement.specifier) for name, requirement in pinned_requirements().items()}
    setup = json.loads(Path(args.setup).read_text()) if Path(args.setup).exists() else []
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": gpu_description(),
        "python": sys.version.split()[0],
        "versions": {name: installed_version(name) for name in (*PINNED, *OPTIONAL)},
        "pins": pins,
        "setup": setup,
        "elapsed_s": args.elapsed,
        "time_limit_s": args.limit,
        "stopped_at_time_limit": args.stopped,
        "counts": counts,
        "tests": tests,
        "memory": memory_table(tests),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_report.md").write_text(markdown(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pins", help="print the pinned requirements not met here, one a line")
    commands.add_parser("wheels", help="print the requirements --fetch-wheels downloads, one a line")
    commands.add_parser("requirements", help="print the project's requirements (test extra included), one a line")
    report = commands.add_parser("report", help="write gpu_report.json and gpu_report.md")
    for name in ("out", "collected", "junit", "figures", "setup"):
        report.add_argument(f"--{name}", required=True)
    report.add_argument("--elapsed", type=int, required=True)
    report.add_argument("--limit", type=int, required=True)
    report.add_argument("--stopped", action="store_true")
    args = parser.parse_args()
    if args.command == "pins":
        for requirement in unmet_pins():
            print(requirement)
    elif args.command == "requirements":
        print("\n".join(project_requirements()))
    elif args.command == "wheels":
        pins = [str(requirement) for name, requirement in pinned_requirements().items() if name != "torch"]
        print("\n".join([*pins, *CARRIED_REQUIREMENTS]))
    else:
        report = write_report(args)
        print(re.sub(r"\n{3,}", "\n\n", markdown(report)))


if __name__ == "__main__":
    main()
