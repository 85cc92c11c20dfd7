# Two commands do all the set-up: `make run` and `make test`. Each builds .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.yaml

.PHONY: run test lint clean audit

run: $(VENV)/.installed-run
	$(BIN)/mimeeq-connector serve --config $(CONFIG)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# Known vulnerabilities in the installed packages (pip-audit, against PyPI's advisory data). A
# vulnerability fails; a database that cannot be reached (an offline machine) only warns.
audit: $(VENV)/.installed-dev
	@rm -f $(VENV)/audit.json
	@$(BIN)/pip-audit --skip-editable --progress-spinner off --format json \
		--output $(VENV)/audit.json 2> $(VENV)/audit.log; \
	$(BIN)/python -c "$$AUDIT_REPORT" $(VENV)/audit.json $$? $(VENV)/audit.log

define AUDIT_REPORT
import json, sys
report, status, log = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read()
unreachable = "WARNING: dependency audit skipped: the vulnerability database cannot be reached"
try:
    deps = json.load(open(report))["dependencies"]
except (OSError, ValueError, KeyError):
    if any(word in log for word in ("ConnectionError", "NameResolution", "Timeout", "SSLError")):
        sys.exit(print(unreachable, file=sys.stderr))
    sys.exit(log or f"pip-audit failed ({status})")
audited = [d for d in deps if "skip_reason" not in d]
found = [(d, v) for d in audited for v in d["vulns"]]
for dep, vuln in found:
    fixed = ", ".join(vuln["fix_versions"]) or "no fixed release yet"
    print(f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed})", file=sys.stderr)
if found:
    sys.exit(f"dependency audit: {len(found)} known vulnerabilities")
if not audited:  # every package "not found": the advisory API answered nothing useful
    sys.exit(print(unreachable + " (no package could be looked up)", file=sys.stderr))
print(f"dependency audit: {len(audited)} packages, no known vulnerabilities"
      f" ({len(deps) - len(audited)} not looked up)")
endef
export AUDIT_REPORT

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed-run: $(VENV)/.created pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.created pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache *.egg-info
