from __future__ import annotations

from connector.cli import main

main(prog_name="mimeeq-connector")
