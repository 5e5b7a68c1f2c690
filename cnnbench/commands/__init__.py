"""One module per `cnnbench` command, each exposing `run_cli(args: list[str]) -> None`."""
