"""``make demo``: the whole story on this machine in well under a minute.

Provision a project (CA, certificates, signed startup kits), start a server and two sites
on 127.0.0.1, submit ``examples/hello-numpy`` through the admin Session, follow it to
completion, download the result, and print the per-round metrics and where the result
went. Everything runs in a temporary workspace, removed at the end with its kits and
private keys (``--keep`` keeps it, result included; ``-w DIR`` uses and keeps DIR); the
processes are stopped at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from flare_local.simulate import report, run_simulation, simulation_sites, temporary_workspace
from flare_protocol.errors import FlareError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hello-numpy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-w", "--workspace", type=Path, help="default: a temporary folder, removed at the end"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--job", type=Path, default=EXAMPLE, help="job folder (hello-numpy)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds the job may run")
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)  # paths stay whole lines, for copy and paste
    steps = iter(range(1, 100))

    def step(text: str) -> None:
        console.print(f"[bold]{next(steps)}.[/bold] {escape(text)}")

    console.print(
        f"[bold]flare-admin demo[/bold]: the job {args.job.name} on a server and two "
        "sites of a fresh project, all on 127.0.0.1\n"
    )
    try:
        sites = simulation_sites(args.job, 2)
        with temporary_workspace(args.workspace, "flare-demo-", args.keep) as workspace:
            result = run_simulation(
                args.job, sites, workspace, console=console, timeout=args.timeout, on_step=step
            )
    except FlareError as exc:
        console.print(f"[red]demo failed:[/red] {escape(str(exc))}")
        return 1
    console.print()
    code = report(result, console, removed=args.workspace is None and not args.keep)
    console.print(
        "\nNext: [bold]flare poc[/bold] keeps a project running for you to use from the admin "
        "shell ([bold]flare admin KIT[/bold]) or from Python; [bold]flare simulate JOB -n N"
        "[/bold] runs your own job; see docs/quickstart.md and docs/shell.md."
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
